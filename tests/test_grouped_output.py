"""Human outputs group repeated findings; machine outputs keep one finding per layer.

The real case of the issue: a fine-tuning model around a frozen DenseNet121 (121 BN layers, all
BN013 frozen-bn), 60 of them with two gamma ~ 0 channels (BN006) and 11 with an amplified
collapsed channel (BN005): 192 findings.
"""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app
from bninspect.findings import LOWER, Finding, Quantity, Severity
from bninspect.reporters.grouping import group_findings

BN_LAYERS, ZERO_GAMMA_LAYERS, COLLAPSED_LAYERS = 121, 60, 11


def _finding(layer: str, message: str, code: str = "BN006", severity: Severity = Severity.INFO,
             quantities: tuple[Quantity, ...] = ()) -> Finding:
    return Finding(code=code, name="zero-gamma", severity=severity, source="m.h5", layer=layer,
                   message=message, hint="prune them", quantities=quantities)


def test_the_worst_layer_is_named_with_its_own_numbers_and_each_quantity_gets_its_range():
    findings = [_finding(f"net/conv{i}_block1_bn", f"{i} of {16 * i} channels have |gamma| <= 1e-05: "
                                                   f"channels {', '.join(map(str, range(i)))}",
                         quantities=(Quantity("{} channels with gamma ~ 0", i, str(i)),)) for i in (1, 3, 2)]
    (group,) = group_findings(findings)
    assert group.count == 3 and group.layers_text() == "net/conv1_block1_bn, net/conv3_block1_bn, net/conv2_block1_bn"
    assert group.message() == ("worst: net/conv3_block1_bn, 3 of 48 channels have |gamma| <= 1e-05: channels 0, 1, 2; "
                               "per layer: 1…3 channels with gamma ~ 0")
    # The first quantity with a direction ranks the layers; the lower momentum is the worse.
    momenta = group_findings([_finding(name, f"momentum {value} is low", quantities=(
        Quantity("{} channels", channels, str(channels), worse=None), Quantity("momentum {}", value, str(value), LOWER)))
        for name, channels, value in (("a", 64, 0.3), ("b", 512, 0.1))])
    assert momenta[0].message() == "worst: b, momentum 0.1 is low; per layer: 64…512 channels, momentum 0.1…0.3"
    # Layers equally bad: none is the worst, the first is an example.
    ties = group_findings([_finding(name, f"2 of {channels} channels", quantities=(
        Quantity("{} channels with gamma ~ 0", 2, "2"),)) for name, channels in (("a", 64), ("b", 512))])
    assert ties[0].message() == "e.g. a: 2 of 64 channels"


def test_messages_of_other_shapes_are_shown_by_an_example_and_groups_sort_by_severity():
    findings = [_finding("a", "one thing"), _finding("b", "another thing"),
                _finding("c", "bad", code="BN005", severity=Severity.WARNING)]
    groups = group_findings(findings)
    assert [(g.code, g.count) for g in groups] == [("BN005", 1), ("BN006", 2)]
    assert groups[1].message() == "e.g. a: one thing"
    many = group_findings([_finding(f"l{i}", "same") for i in range(5)])
    assert many[0].layers_text() == "l0, l1 and 3 more"


def test_findings_with_different_hints_are_different_groups():
    """One code, two fixes (BN017 on a Lambda and on a custom class): each group's hint is true of
    every layer in it."""
    stored = [Finding("BN017", "code-in-model", Severity.INFO, "m.h5", "rescale", "a Lambda layer", "use --unsafe")]
    named = [Finding("BN017", "code-in-model", Severity.INFO, "m.h5", layer, f"custom class {layer}",
                     "supply the class") for layer in ("Scale", "Plain")]
    groups = group_findings([named[0], *stored, named[1]])
    assert [(group.code, group.count, group.hint) for group in groups] == [
        ("BN017", 2, "supply the class"), ("BN017", 1, "use --unsafe")]


@pytest.fixture(scope="module")
def densenet_file(tmp_path_factory) -> Path:
    import keras

    base = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    bn_layers = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn_layers) == BN_LAYERS
    for index, layer in enumerate(bn_layers):
        gamma, beta, mean, variance = (rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in layer.get_weights())
        if index % 2 == 0 and index < 2 * ZERO_GAMMA_LAYERS:
            gamma[:2] = 0.0
        if index % 11 == 1:
            variance[3] = 1e-8
        layer.set_weights([gamma, beta, mean, variance])
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(inputs, training=False)))
    path = tmp_path_factory.mktemp("densenet") / "finetune.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


@pytest.mark.slow
def test_json_keeps_one_finding_per_layer(densenet_file):
    code, out = _run("check", str(densenet_file), "--format", "json")
    (model,) = json.loads(out)["models"]
    counts = {c: sum(f["code"] == c for f in model["findings"]) for c in ("BN013", "BN006", "BN005")}
    assert counts == {"BN013": BN_LAYERS, "BN006": ZERO_GAMMA_LAYERS, "BN005": COLLAPSED_LAYERS}
    assert len(model["findings"]) == BN_LAYERS + ZERO_GAMMA_LAYERS + COLLAPSED_LAYERS


@pytest.mark.slow
def test_check_text_fits_a_screen_grouped_by_severity(densenet_file):
    code, out = _run("check", "--strict", str(densenet_file))
    lines = out.rstrip("\n").split("\n")
    assert code == 1 and len(lines) <= 40, out
    assert lines[-1].startswith("1 model checked: 0 errors, 11 warnings, 181 infos") and "FAILED" in lines[-1]
    heads = [line.split()[0] for line in lines if re.match(r"  BN\d{3} ", line)]
    assert heads == ["BN005", "BN006", "BN013"]  # the warning first, then the infos
    assert f"{BN_LAYERS} layers: densenet121/conv1_bn, densenet121/conv2_block1_0_bn and {BN_LAYERS - 2} more" in out

    code, verbose = _run("check", "--strict", "--verbose", str(densenet_file))
    finding_lines = [line for line in verbose.split("\n") if re.match(r"  BN\d{3} ", line)]
    assert len(finding_lines) == BN_LAYERS + ZERO_GAMMA_LAYERS + COLLAPSED_LAYERS


@pytest.mark.slow
def test_statistics_counts_per_code(densenet_file):
    code, out = _run("check", str(densenet_file), "--statistics")
    rows = [line.split() for line in out.split("\n") if re.match(r"\s*\d+  BN\d{3}", line)]
    assert [(row[0], row[1]) for row in rows] == [("121", "BN013"), ("60", "BN006"), ("11", "BN005")]
    assert not re.search(r"^  BN\d{3} ", out, re.MULTILINE)
    code, _ = _run("check", str(densenet_file), "--statistics", "--format", "json")
    assert code == 2


@pytest.mark.slow
def test_table_view_lists_findings_grouped(densenet_file):
    code, out = _run("inspect", str(densenet_file))
    heads = re.findall(r"^(BN\d{3}) (?:error|warning|info)", out, re.MULTILINE)
    assert heads == ["BN005", "BN006", "BN013"]
    code, verbose = _run("inspect", str(densenet_file), "--verbose")
    assert len(re.findall(r"^BN013 info", verbose, re.MULTILINE)) == BN_LAYERS


@pytest.mark.slow
def test_github_puts_warnings_first_and_one_notice_per_info_code(densenet_file):
    code, out = _run("check", str(densenet_file), "--format", "github")
    lines = out.strip().split("\n")
    commands = [line.split(" ", 1)[0] for line in lines]
    assert commands == ["::warning"] * COLLAPSED_LAYERS + ["::notice"] * 2
    assert "title=BN006 zero-gamma::60 layers (" in lines[-2]
    assert "title=BN013 frozen-bn::121 layers (" in lines[-1]
    code, every = _run("check", str(densenet_file), "--format", "github", "--verbose")
    assert every.count("::notice") == BN_LAYERS + ZERO_GAMMA_LAYERS


WIDTHS = {"block1_bn": (64, 2, 2.0), "block2_bn": (16, 5, 0.5), "block3_bn": (264, 45, 1.0)}  # channels, collapsed, gamma


@pytest.fixture(scope="module")
def widths_file(tmp_path_factory) -> Path:
    """The issue's case: BN005 on layers of 64, 16 and 264 channels with 2, 5 and 45 collapsed
    channels, and a gamma that makes the least collapsed layer the most amplified."""
    import keras

    inputs = keras.Input((4, 4, 3))
    x = inputs
    for name, (channels, collapsed, gamma) in WIDTHS.items():
        x = keras.layers.Conv2D(channels, 1, use_bias=False, name=name.replace("bn", "conv"))(x)
        x = keras.layers.BatchNormalization(name=name)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x)))
    for name, (channels, collapsed, gamma) in WIDTHS.items():
        variance = np.ones(channels, np.float32)
        variance[np.linspace(0, channels - 1, collapsed).round().astype(int)] = 1e-8
        model.get_layer(name).set_weights([np.full(channels, gamma, np.float32), np.full(channels, 0.1, np.float32),
                                           np.full(channels, 0.2, np.float32), variance])
    path = tmp_path_factory.mktemp("widths") / "widths.keras"
    model.save(path)
    return path


WIDTHS_MESSAGE = ("worst: block3_bn, 45 of 264 channels have moving variance below epsilon 0.001 (min 1e-08) and "
                  "effective scale |gamma|/sqrt(var+eps) up to 31.62, above 10: channels 0, 6, 12, 18, 24, 30 and 39 "
                  "more; per layer: 2…45 amplified collapsed channels, effective scale up to 15.81…63.25")


@pytest.mark.slow
def test_a_group_of_layers_of_different_widths_names_the_worst_with_its_own_numbers(widths_file, tmp_path):
    code, out = _run("check", str(widths_file))
    lines = out.splitlines()
    head = lines.index("  BN005 warning 3 layers: block1_bn, block2_bn, block3_bn")
    assert lines[head + 1] == f"        {WIDTHS_MESSAGE}"
    code, table_view = _run("inspect", str(widths_file))
    assert WIDTHS_MESSAGE in " ".join(table_view.split())  # the table view wraps at the console width
    page = tmp_path / "report.html"
    _run("report", str(widths_file), "-o", str(page))
    assert WIDTHS_MESSAGE in html.unescape(page.read_text(encoding="utf-8"))
    # One finding per layer, each with its own numbers, where there is no grouping.
    code, out = _run("check", str(widths_file), "--format", "json")
    messages = {f["layer"]: f["message"] for f in json.loads(out)["models"][0]["findings"] if f["code"] == "BN005"}
    assert messages["block2_bn"].startswith("5 of 16 channels have moving variance below epsilon 0.001")


class _GroupRows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.groups: list[int] = []
        self.layer_rows = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "tr" and "finding-group" in classes:
            self.groups.append(int(attributes["data-count"]))
        if tag == "tr" and "finding-layer" in classes:
            self.layer_rows += 1


@pytest.mark.slow
def test_html_report_groups_findings_and_folds_the_layers(densenet_file, tmp_path):
    page = tmp_path / "report.html"
    code, _ = _run("report", str(densenet_file), "-o", str(page))
    assert code == 0
    parser = _GroupRows()
    parser.feed(page.read_text())
    assert parser.groups == [COLLAPSED_LAYERS, ZERO_GAMMA_LAYERS, BN_LAYERS]
    assert parser.layer_rows == BN_LAYERS + ZERO_GAMMA_LAYERS + COLLAPSED_LAYERS
