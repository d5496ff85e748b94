"""A BN layer built with `scale=False` has no gamma, one with `center=False` no beta: every output
says so (JSON null, "-" in the tables, "—" on the HTML page) instead of an empty statistic.

The case of the issue is a Keras 2.1 model with `scale=False`; tf-keras writes the same `.h5`
layout (the layer's weight names simply lack `gamma:0`), and is installed, so it writes the files.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app

pytestmark = pytest.mark.slow

NO_SCALE, NO_CENTER = "bn_no_scale", "bn_no_center"


def _model(tf_keras):
    layers = tf_keras.layers
    return tf_keras.Sequential([
        tf_keras.Input((8, 8, 3)),
        layers.Conv2D(8, 3, use_bias=False, name="conv1"),
        layers.BatchNormalization(scale=False, name=NO_SCALE),
        layers.ReLU(),
        layers.Conv2D(6, 3, use_bias=False, name="conv2"),
        layers.BatchNormalization(center=False, name=NO_CENTER),
        layers.GlobalAveragePooling2D(),
        layers.Dense(1, activation="sigmoid", name="out"),
    ])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same model after 8 and after 16 training steps, as tf-keras `.h5` files."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 1.0).astype("float32")
    model = _model(tf_keras)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    directory = tmp_path_factory.mktemp("absent_affine")
    paths = {}
    for name in ("a", "b"):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        paths[name] = str(directory / f"{name}.h5")
        model.save(paths[name])
    return paths


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def test_json_has_null_for_the_parameters_a_layer_does_not_have(files):
    (entry,) = json.loads(_run("check", files["a"], "--format", "json"))["models"]
    layers = {layer["path"]: layer for layer in entry["bn_layers"]}
    assert layers[NO_SCALE]["scale"] is False and layers[NO_SCALE]["gamma"] is None
    assert layers[NO_SCALE]["beta"]["min"] is not None
    assert layers[NO_CENTER]["center"] is False and layers[NO_CENTER]["beta"] is None
    assert layers[NO_CENTER]["gamma"]["min"] is not None
    for layer in layers.values():
        assert set(layer["moving_variance"]) >= {"min", "max", "mean", "std"}


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.split("│")]


def _table_cells(output: str, layer: str) -> dict[str, str]:
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("layer "))
    row = next(line for line in lines if line.startswith(layer + " "))
    return dict(zip((cell.strip() for cell in header.split("┃")), _cells(row)))


def test_the_table_and_the_channel_view_show_a_dash(files):
    output = _run("inspect", files["a"])
    assert _table_cells(output, NO_SCALE)["gamma"] == "-"
    assert _table_cells(output, NO_SCALE)["beta"] != "-"
    assert _table_cells(output, NO_CENTER)["beta"] == "-"
    detail = _run("inspect", files["a"], "--layer", NO_SCALE)
    rows = [_cells(line) for line in detail.splitlines() if re.match(r"\s*\d+ ", line)]
    assert len(rows) == 8
    assert all(row[1] == "-" and row[2] != "-" for row in rows)  # channel, gamma, beta, ...


class _LayerTable(HTMLParser):
    """The cells of the page's BN layer table, per row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._inside = False

    def handle_starttag(self, tag, attrs):
        if tag == "tr" and "bn-layer" in (dict(attrs).get("class") or "").split():
            self.rows.append([])
            self._inside = True
        elif tag == "td" and self._inside:
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "tr":
            self._inside = False

    def handle_data(self, data):
        if self._inside and self.rows[-1]:
            self.rows[-1][-1] += data


def test_the_html_report_shows_no_statistic_for_an_absent_parameter(files, tmp_path):
    page = tmp_path / "report.html"
    _run("report", files["a"], "-o", str(page))
    parser = _LayerTable()
    parser.feed(page.read_text(encoding="utf-8"))
    rows = {row[1].split()[0]: row for row in parser.rows}  # the path, then a "plots" link
    # number, path, channels, gamma, beta, moving mean, moving variance, effective scale, ...
    assert rows[NO_SCALE][3] == "—" and rows[NO_SCALE][4] != "—"
    assert rows[NO_CENTER][4] == "—" and rows[NO_CENTER][3] != "—"


def test_diff_says_the_parameter_is_absent(files):
    document = json.loads(_run("diff", files["a"], files["b"], "--format", "json"))
    layers = {layer["path"]: layer for layer in document["layers"]}
    assert layers[NO_SCALE]["status"] == "changed"
    assert layers[NO_SCALE]["gamma"] is None and layers[NO_SCALE]["beta"]["max_abs_change"] > 0
    assert layers[NO_CENTER]["beta"] is None
    text = _run("diff", files["a"], files["b"])
    row = next(_cells(line) for line in text.splitlines() if line.strip().startswith(NO_SCALE + " "))
    assert row[2] == "-" and row[3] != "-"  # layer, status, gamma, beta, ...


def test_the_ci_formats_read_the_file(files):
    sarif = json.loads(_run("check", files["a"], "--format", "sarif"))
    assert sarif["version"] == "2.1.0"
    ElementTree.fromstring(_run("check", files["a"], "--format", "junit"))
    _run("check", files["a"], "--format", "github")
