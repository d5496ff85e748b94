"""The fast paths of the reports give exactly what the plain ones give.

`bninspect MODEL`, `--format json` and `bninspect check` on a model with thousands of BN layers
must take well under 2 s, so the table is laid out directly instead of by rich's Table, lines that
fit are not run through rich's wrapping, and array statistics are computed on stacks of arrays.
Each shortcut is compared here with the general path it replaces, on awkward inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from rich.text import Text

from bninspect.findings import Finding, Severity
from bninspect.model import BNLayer, Layer, ModelDescription
from bninspect.report import ModelReport, bn_layer_dict, bn_layer_dicts, finding_dict
from bninspect.reporters import check_text, json_report, table
from bninspect.checking import run_static_rules
from bninspect.summary import array_stats, array_stats_many, fmt_number, fmt_range

RNG = np.random.default_rng(7)


def _bn(path: str, channels: int = 6, **arrays) -> BNLayer:
    values = {"gamma": RNG.uniform(0.5, 1.5, channels), "beta": RNG.normal(0, 0.1, channels),
              "moving_mean": RNG.normal(0, 1, channels), "moving_variance": RNG.uniform(0.01, 4, channels)}
    values.update(arrays)
    return BNLayer(path=path, class_name="BatchNormalization", axis=(-1,), epsilon=1e-3, momentum=0.99,
                   center=values["beta"] is not None, scale=values["gamma"] is not None, trainable=True, **values)


def _report(bn_layers: list[BNLayer], findings: list[Finding] | None = None, source: str = "m.h5") -> ModelReport:
    layers = tuple(Layer(path=bn.path, name=bn.name, class_name="BatchNormalization") for bn in bn_layers)
    description = ModelDescription(source=source, format="h5-legacy", bn_layers=tuple(bn_layers),
                                   keras_version="3.0.0", layers=layers)
    if findings is None:
        findings = list(run_static_rules(description))
    return ModelReport(source=source, description=description, findings=tuple(findings))


def _finding(layer: str | None, code: str = "BN005", severity: Severity = Severity.WARNING,
             message: str = "something about this layer") -> Finding:
    return Finding(code=code, name="collapsed-variance", severity=severity, source="m.h5", layer=layer,
                   message=message, hint="do something")


def _awkward_reports() -> list[ModelReport]:
    nan_layer = _bn("nan_layer", moving_variance=np.array([np.nan, 1.0, np.inf, 0.5]),
                    moving_mean=np.zeros(4), gamma=np.ones(4), beta=np.array([0.0, -np.inf, 1.0, 2.0]))
    untrained = _bn("untrained", moving_mean=np.zeros(6), moving_variance=np.ones(6))
    bare = _bn("no_affine", gamma=None, beta=None)
    names = [_bn(name) for name in ("[bold]markup[/bold]", "emoji :smile: name", "層/正規化", "e\u0301t\u00e9",
                                    "a" * 40)]
    many_findings = [_finding("untrained", code, severity) for code, severity in
                     (("BN001", Severity.ERROR), ("BN006", Severity.INFO), ("BN005", Severity.WARNING))]
    long_message = [_finding("[bold]markup[/bold]", message="a long message " * 30)]
    return [
        _report([nan_layer, untrained, bare] + names),
        _report([untrained, bare], many_findings + [_finding(None, "BN015", Severity.INFO)]),
        _report(names, long_message),
        _report([_bn(f"block_{index}/bn") for index in range(50)]),
        _report([], []),
        ModelReport(source="broken.h5", description=None, error="truncated HDF5 file"),
        _report([_bn("tab\tin\tname")], [_finding("tab\tin\tname", message="tab\there")]),
    ]


def _styles(ansi: str) -> tuple[str, list[tuple[int, str]]]:
    """The characters of coloured output and the style of each visible one."""
    text = Text.from_ansi(ansi)
    console = Console()
    return text.plain, [(index, str(text.get_style_at_offset(console, index)))
                        for index, char in enumerate(text.plain) if not char.isspace()]


@pytest.mark.parametrize("width", [200, 120, 60])
def test_direct_table_layout_equals_rich_table(monkeypatch, width):
    reports = _awkward_reports()
    fast_plain = [table.render([report], width=width) for report in reports]
    fast_color = [table.render([report], color=True, width=width) for report in reports]
    monkeypatch.setattr(table, "_plain_table", lambda rows, max_width: None)
    for report, plain, color in zip(reports, fast_plain, fast_color):
        assert plain == table.render([report], width=width)
        assert _styles(color) == _styles(table.render([report], color=True, width=width))


def test_direct_table_layout_is_used_for_a_table_that_fits():
    rows = table._layer_rows(_awkward_reports()[3])
    assert table._plain_table(rows, 200) is not None
    assert table._plain_table(rows, 20) is None  # too wide: rich folds the cells


@pytest.mark.parametrize("width", [200, 100, 40])
@pytest.mark.parametrize("color", [False, True])
def test_unwrapped_lines_are_byte_identical_to_rich_wrapping(monkeypatch, width, color):
    reports = _awkward_reports()
    fast_table = table.render(reports, color=color, width=width)
    fast_check = check_text.render(reports, fail_severity=Severity.WARNING, exit_code=1, color=color, width=width)
    monkeypatch.setattr(table, "_fitting_segments", lambda *args: None)
    assert fast_table == table.render(reports, color=color, width=width)
    assert fast_check == check_text.render(reports, fail_severity=Severity.WARNING, exit_code=1, color=color,
                                           width=width)


@pytest.mark.parametrize("color", [False, True])
def test_check_text_equals_printing_each_model_as_rich_text(color):
    reports = _awkward_reports()
    expected = Console(file=__import__("io").StringIO(), force_terminal=color, no_color=not color,
                       color_system="standard" if color else None, width=200, highlight=False, soft_wrap=True)
    for report in reports:
        expected.print(check_text._model_lines(report, Severity.ERROR), end="")
    expected.print()
    expected.print(check_text.summary_line(reports, Severity.ERROR, 1))
    assert check_text.render(reports, exit_code=1, color=color) == expected.file.getvalue()


def test_html_export_keeps_the_styles():
    html = table.render_html([_awkward_reports()[1]])
    assert "BN001" in html and "color" in html


def _old_array_stats(values):
    """array_stats before the fast path: statistics of the finite values, always via the mask."""
    if values is None:
        return None
    finite = values[np.isfinite(values)]
    stats = {"min": None, "max": None, "mean": None, "std": None}
    if finite.size:
        stats = {"min": float(finite.min()), "max": float(finite.max()),
                 "mean": float(finite.mean()), "std": float(finite.std())}
    non_finite = int(values.size - finite.size)
    if non_finite:
        stats["non_finite"] = non_finite
    return stats


def _old_fmt_range(values):
    if values is None:
        return "-"
    stats = _old_array_stats(values)
    text = ("-" if stats["min"] is None else
            fmt_number(stats["min"]) if stats["min"] == stats["max"] else
            f"{fmt_number(stats['min'])} … {fmt_number(stats['max'])}")
    if stats.get("non_finite"):
        text += f" ({stats['non_finite']} NaN/Inf)"
    return text


def _arrays() -> list:
    arrays = [None, np.array([]), np.array([np.nan]), np.array([np.inf, -np.inf]), np.array([1.0, np.nan, 3.0]),
              np.array([2.5] * 7), np.array([1e300, 1e300]), np.array([-0.0, 0.0]),
              RNG.normal(size=64).astype(np.float32), RNG.normal(size=(3, 4))]
    for size in (1, 2, 7, 8, 9, 64, 127, 128, 129, 1000, 4097):
        for scale in (1e-4, 1.0, 1e4):
            arrays.extend(RNG.normal(3 * scale, scale, size) for _ in range(3))
    with_nan = RNG.normal(size=64)
    with_nan[5] = np.nan
    arrays.append(with_nan)
    return arrays


def test_array_statistics_are_bit_identical_to_the_per_array_computation():
    arrays = _arrays()
    expected = [_old_array_stats(values) for values in arrays]
    assert [array_stats(values) for values in arrays] == expected
    assert array_stats_many(arrays) == expected
    assert [fmt_range(values) for values in arrays[:-1] if values is None or values.ndim == 1] == \
        [_old_fmt_range(values) for values in arrays[:-1] if values is None or values.ndim == 1]


def test_layer_dicts_and_finding_dicts_equal_their_one_by_one_versions():
    report = _awkward_reports()[0]
    assert bn_layer_dicts(report.bn_layers) == [bn_layer_dict(layer) for layer in report.bn_layers]
    for finding in report.findings + (_finding(None),):
        assert finding_dict(finding) == finding.to_dict()
        assert list(finding_dict(finding)) == list(finding.to_dict())


def test_json_spells_out_non_finite_numbers_and_stays_strict_json():
    odd = BNLayer(path="odd", class_name="BatchNormalization", moving_mean=np.zeros(2), moving_variance=np.ones(2),
                  epsilon=float("nan"), momentum=float("inf"))
    text = json_report.render([_report([odd], [])])
    (layer,) = json.loads(text)["models"][0]["bn_layers"]
    assert layer["epsilon"] == "nan" and layer["momentum"] == "inf"
    plain = json_report.render([_report([_bn("fine")], [])])
    assert json.loads(plain)["models"][0]["bn_layers"][0]["epsilon"] == 1e-3
