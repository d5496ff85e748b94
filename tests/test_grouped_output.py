"""Human outputs group repeated findings; machine outputs keep one finding per layer.

The real case of the issue: a fine-tuning model around a frozen DenseNet121 (121 BN layers, all
BN013 frozen-bn), 60 of them with two gamma ~ 0 channels (BN006) and 11 with an amplified
collapsed channel (BN005): 192 findings.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app
from bninspect.findings import Finding, Severity
from bninspect.reporters.grouping import group_findings

BN_LAYERS, ZERO_GAMMA_LAYERS, COLLAPSED_LAYERS = 121, 60, 11


def _finding(layer: str, message: str, code: str = "BN006", severity: Severity = Severity.INFO) -> Finding:
    return Finding(code=code, name="zero-gamma", severity=severity, source="m.h5", layer=layer,
                   message=message, hint="prune them")


def test_numbers_that_differ_become_ranges_and_the_worst_layer_is_named():
    findings = [_finding(f"net/conv{i}_block1_bn", f"{i} of {16 * i} channels have |gamma| <= 1e-05: "
                                                   f"channels {', '.join(map(str, range(i)))}") for i in (1, 3, 2)]
    (group,) = group_findings(findings)
    assert group.count == 3 and group.layers_text() == "net/conv1_block1_bn, net/conv3_block1_bn, net/conv2_block1_bn"
    assert group.message() == "1…3 of 16…48 channels have |gamma| <= 1e-05: channels … (worst: net/conv3_block1_bn)"
    # A channel total ("of 64") is no measure of how bad a layer is: the worst has the largest scale.
    scales = group_findings([_finding(name, f"1 of {total} channels have scale {scale}")
                             for name, total, scale in (("a", 64, 400.5), ("b", 512, 20.0))])
    assert scales[0].message() == "1 of 64…512 channels have scale 20.0…400.5 (worst: a)"


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
