"""`bninspect report`: the self-contained HTML page, the PNG overview, and the page in a real browser.

Pages are parsed with `html.parser.HTMLParser`. Tests that run a model on data import TensorFlow
and are marked slow. The browser test needs Debian's `chromium`: it skips when chromium is missing,
except under CI (the `CI` environment variable set), where a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from bninspect.findings import Finding, Severity
from bninspect.model import BNLayer, Layer, ModelDescription
from bninspect.report import ModelReport

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
UNTRAINED = SAMPLES / "cnn_untrained.h5"
TRAINED = SAMPLES / "cnn_trained.keras"
DATA = SAMPLES / "cnn_data.npy"


@dataclass
class Page:
    """What the parser saw: every start tag with its attributes, the text, the CSS, ids."""

    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    css: list[str] = field(default_factory=list)
    # For each <details class="bn-detail"> (a layer drawn in detail): its id and the classes of the
    # <figure>s inside it.
    layers: list[tuple[str, list[str]]] = field(default_factory=list)
    # For each <tr class="bn-layer"> of a layer table: its id, its cells' text, its flagged channels.
    rows: list["Row"] = field(default_factory=list)

    def row(self, path: str) -> "Row":
        (found,) = [row for row in self.rows if row.path == path]
        return found

    @property
    def all_text(self) -> str:
        return " ".join(self.text)

    def ids(self) -> list[str]:
        return [attrs["id"] for _, attrs in self.tags if attrs.get("id")]

    def count(self, tag: str, cls: str | None = None) -> int:
        return sum(1 for name, attrs in self.tags
                   if name == tag and (cls is None or cls in (attrs.get("class") or "").split()))


@dataclass
class Row:
    id: str
    classes: list[str]
    channels_attr: str
    cells: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The layer path: the text of the second cell, before its "plots" link."""
        return self.cells[1].removesuffix(" plots").strip()

    @property
    def flagged_channels(self) -> list[int]:
        return [int(c) for c in self.channels_attr.split(",") if c]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[str] = []
        self.in_style = False
        self.layer_depth: int | None = None
        self.row_depth: int | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.page.tags.append((tag, attributes))
        classes = (attributes.get("class") or "").split()
        if tag == "style":
            self.in_style = True
        if tag == "tr" and "bn-layer" in classes:
            self.page.rows.append(Row(attributes.get("id") or "", classes, attributes.get("data-channels") or ""))
            self.row_depth = len(self.stack)
        if tag == "td" and "flagged-channels" in classes and self.row_depth is not None:
            self.page.rows[-1].channels_attr = attributes.get("data-channels") or ""
        if tag == "td" and self.row_depth is not None:
            self.page.rows[-1].cells.append("")
        if tag == "details" and "bn-detail" in classes:
            self.page.layers.append((attributes.get("id") or "", []))
            self.layer_depth = len(self.stack)
        if tag == "figure" and self.layer_depth is not None:
            self.page.layers[-1][1].extend(classes)
        if tag not in ("meta", "br", "path", "use", "rect", "circle", "line", "polyline", "polygon", "input", "img",
                       "link"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.page.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass
        if tag == "details" and self.layer_depth is not None and len(self.stack) <= self.layer_depth:
            self.layer_depth = None
        if tag == "tr" and self.row_depth is not None and len(self.stack) <= self.row_depth:
            self.row_depth = None

    def handle_data(self, data):
        if self.in_style:
            self.page.css.append(data)
        elif data.strip():
            self.page.text.append(data.strip())
            if self.row_depth is not None and self.page.rows[-1].cells:
                cells = self.page.rows[-1].cells
                cells[-1] = (cells[-1] + " " + data.strip()).strip()


def parse(text: str) -> Page:
    parser = _Parser()
    parser.feed(text)
    parser.close()
    return parser.page


def assert_self_contained(page: Page) -> None:
    """Nothing the page could fetch: no script, no stylesheet link, no external src/href, no
    @import or url() in the CSS. (SVG attributes may say `url(#id)`: references inside the page.)"""
    assert page.count("script") == 0
    assert page.count("iframe") == 0 and page.count("img") == 0 and page.count("object") == 0
    for tag, attrs in page.tags:
        assert not (tag == "link" and "stylesheet" in (attrs.get("rel") or "")), attrs
        for name in ("src", "href", "xlink:href", "action", "data", "poster"):
            value = attrs.get(name)
            if value is None:
                continue
            if tag == "image" and name == "xlink:href" and value.startswith("data:image/png;base64,"):
                continue  # a raster inside an SVG figure (the heatmaps), inline
            assert value.startswith("#"), f"<{tag} {name}={value!r}>: only in-page references allowed"
        for name, value in attrs.items():
            if value and "url(" in value:
                assert all(part.startswith("#") for part in value.split("url(")[1:]), (tag, name, value)
    css = "\n".join(page.css)
    assert "@import" not in css and "url(" not in css


def run_report(args: list[str], tmp_path: Path, name: str = "report.html"):
    """The CLI for real, in process: (exit code, stderr, the written file's path)."""
    from typer.testing import CliRunner

    from bninspect.cli import app

    output = tmp_path / name
    result = CliRunner().invoke(app, ["report", *args, "-o", str(output)])
    stderr = result.stderr if hasattr(result, "stderr") else ""
    return result.exit_code, stderr, output, result


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pyproject.toml above the working directory changes the settings."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


# --- synthetic models (no TensorFlow) -------------------------------------------------------------

def _bn(path: str, channels: int, rng: np.random.Generator, **arrays) -> BNLayer:
    values = {"gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.normal(0, 0.1, channels),
              "moving_mean": rng.normal(0, 1, channels), "moving_variance": rng.uniform(0.01, 4, channels)}
    values.update(arrays)
    return BNLayer(path=path, class_name="BatchNormalization", axis=(-1,), epsilon=1e-3, momentum=0.99,
                   center=values["beta"] is not None, scale=values["gamma"] is not None, trainable=True, **values)


def _report(layers: list[BNLayer], findings: tuple[Finding, ...] = (), source: str = "m.h5") -> ModelReport:
    graph = tuple(Layer(path=bn.path, name=bn.name, class_name="BatchNormalization") for bn in layers)
    description = ModelDescription(source=source, format="h5-legacy", bn_layers=tuple(layers), keras_version="3.0.0",
                                   layers=graph)
    return ModelReport(source=source, description=description, findings=findings)


def _finding(layer: str | None, code: str, message: str) -> Finding:
    return Finding(code, "name", Severity.WARNING, "m.h5", layer, message, "a hint")


# --- the sample models through the CLI -------------------------------------------------------------

def test_untrained_sample_reports_bn001_with_its_documentation(tmp_path: Path) -> None:
    code, stderr, output, result = run_report([str(UNTRAINED)], tmp_path)
    assert code == 0, result.output
    page = parse(output.read_text(encoding="utf-8"))
    # Every BN layer has its row in the layer table; both have findings, so both are drawn in detail.
    assert [row.path for row in page.rows] == ["bn1", "bn2"]
    assert all("flagged" in row.classes for row in page.rows)
    assert [layer_id.split("-", 3)[-1] for layer_id, _ in page.layers] == ["bn1-plots", "bn2-plots"]
    text = page.all_text
    assert "BN001" in text and "cnn_untrained.h5" in text and "h5-legacy" in text
    # The rule documentation of BN001, and only of the codes that occur.
    assert "rule-BN001" in page.ids()
    assert [i for i in page.ids() if i.startswith("rule-")] == ["rule-BN001"]
    assert any(attrs.get("href") == "#rule-BN001" for tag, attrs in page.tags if tag == "a")
    from bninspect.rules.catalogue import RULES_BY_CODE

    fix = " ".join(RULES_BY_CODE["BN001"].fix.split())
    assert fix.split("`")[0].strip() in text  # the "How to fix" text, up to its first inline code
    # Every in-page link to a layer goes to its table row or its detailed section.
    layer_ids = {row.id for row in page.rows} | {layer_id for layer_id, _ in page.layers}
    links = [attrs["href"][1:] for tag, attrs in page.tags if tag == "a" and attrs.get("href", "").startswith("#m")]
    assert links and set(links) <= layer_ids
    assert {row.id for row in page.rows} <= set(links)  # the findings table links each row
    # One overview, one heatmap figure, and per detailed layer its per-channel plots.
    assert page.count("figure", "overview") == 1 and page.count("figure", "heatmap") == 1
    assert all("channels" in classes for _, classes in page.layers)
    assert_self_contained(page)
    ids = page.ids()
    assert len(ids) == len(set(ids)), "element ids must be unique across the inline SVGs"


def test_trained_sample_has_no_findings_and_all_layers(tmp_path: Path) -> None:
    code, _, output, result = run_report([str(TRAINED)], tmp_path)
    assert code == 0, result.output
    page = parse(output.read_text(encoding="utf-8"))
    assert [row.path for row in page.rows] == ["bn1", "bn2"]
    assert "No findings." in page.all_text and "keras-v3" in page.all_text
    assert not [i for i in page.ids() if i.startswith("rule-")]
    # A small model: every layer drawn in detail, findings or not (the overview, the heatmaps, 2 layers).
    assert len(page.layers) == 2 and page.count("svg") == 4
    assert_self_contained(page)


def test_several_models_in_one_page(tmp_path: Path) -> None:
    code, _, output, result = run_report([str(UNTRAINED), str(TRAINED)], tmp_path)
    assert code == 0, result.output
    page = parse(output.read_text(encoding="utf-8"))
    assert page.count("section", "model") == 2 and len(page.rows) == 4 and len(page.layers) == 4
    ids = page.ids()
    assert len(ids) == len(set(ids))


def test_default_output_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bninspect.cli import app

    result = CliRunner().invoke(app, ["report", str(UNTRAINED)])
    assert result.exit_code == 0, result.output
    assert Path("bninspect-report.html").is_file()


def test_png_overview_has_the_figure_size(tmp_path: Path) -> None:
    from bninspect.reporters.plots import OVERVIEW_SIZE, PNG_DPI

    code, _, output, result = run_report([str(TRAINED), "--format", "png"], tmp_path, name="overview.png")
    assert code == 0, result.output
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (round(OVERVIEW_SIZE[0] * PNG_DPI), round(OVERVIEW_SIZE[1] * PNG_DPI)) == (1000, 640)


def test_unreadable_model_is_one_line_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5 at all")
    result = subprocess.run([sys.executable, "-m", "bninspect", "report", str(broken), "-o", str(tmp_path / "r.html")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bninspect: error: {broken}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r.html").exists()


def test_options_without_data_are_usage_errors(tmp_path: Path) -> None:
    code, _, output, result = run_report([str(TRAINED), "--limit", "3"], tmp_path)
    assert code == 2 and "only apply with --data" in result.output
    assert not output.exists()


def test_help_and_version() -> None:
    from typer.testing import CliRunner

    from bninspect import __version__
    from bninspect.cli import COMMANDS, app

    assert "report" in COMMANDS
    assert CliRunner().invoke(app, ["report", "--version"]).output == f"bninspect {__version__}\n"
    result = CliRunner().invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "--data" in result.output and "--format" in result.output


def test_static_commands_import_neither_matplotlib_nor_tensorflow(tmp_path: Path) -> None:
    script = ("import sys\nfrom bninspect.cli import main\n"
              "for args in (['check', sys.argv[1]], [sys.argv[1]]):\n"
              "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
              "print(','.join(sorted(n for n in ('matplotlib', 'tensorflow', 'keras', 'tf_keras') if n in sys.modules))"
              " or 'none')\n")
    result = subprocess.run([sys.executable, "-c", script, str(UNTRAINED)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "none", result.stdout + result.stderr


# --- the renderer on plain data ---------------------------------------------------------------------

def test_render_html_escapes_text_and_highlights_named_channels() -> None:
    from bninspect.reporters.html_report import render_html

    rng = np.random.default_rng(0)
    evil = "<script>alert(1)</script>"
    layers = [_bn(evil, 8, rng), _bn("plain", 8, rng, gamma=None)]
    findings = (_finding(evil, "BN006", "2 of 8 channels have |gamma| <= 1e-3 (...): channels 2, 5"),
                _finding("plain", "BN005", "1 of 8 channels have moving variance below epsilon <b>x</b>"))
    text = render_html([_report(layers, findings, source="<m>.h5")])
    page = parse(text)
    assert page.count("script") == 0 and evil in page.all_text and "<m>.h5" in page.all_text
    assert "Highlighted channels: 2, 5" in page.all_text
    assert "The findings name no channel indices: no channel is highlighted." in page.all_text
    assert_self_contained(page)


def test_finding_channels_reads_the_channel_lists_of_the_rules() -> None:
    from bninspect.reporters.html_report import finding_channels

    def channels(message: str) -> set[int]:
        return finding_channels(_finding("l", "BN006", message))

    assert channels("3 of 64 channels have |gamma| <= 1e-05 (they output the constant beta): channels 1, 7, 9") == {1, 7, 9}
    assert channels("1 of 4 channels still hold the initial statistics (mean 0, variance 1): channel 3") == {3}
    assert channels("9 of 64 channels ...: channels 0, 1, 2, 3, 4, 5 and 3 more") == {0, 1, 2, 3, 4, 5}
    assert channels("2 of 8 channels have a constant input on the data: channels 3 (= 0), 6 (= 1.5)") == {3, 6}
    assert channels("moving mean is exactly 0 and moving variance exactly 1 in all 8 channels: never") == set()


def test_awkward_arrays_render(tmp_path: Path) -> None:
    """NaN/Inf, negative and zero variances, scale=False and center=False, wide layers, no layers."""
    from bninspect.reporters.html_report import render_html
    from bninspect.reporters.plots import overview_png

    rng = np.random.default_rng(1)
    layers = [_bn("nan", 4, rng, moving_variance=np.array([np.nan, 1.0, np.inf, -0.5]),
                  beta=np.array([0.0, -np.inf, 1.0, 2.0])),
              _bn("all_nan", 3, rng, gamma=np.full(3, np.nan), moving_mean=np.full(3, np.nan),
                  moving_variance=np.full(3, np.nan), beta=None),
              _bn("wide", 2048, rng), _bn("zero", 5, rng, moving_variance=np.zeros(5)),
              _bn("bare", 6, rng, gamma=None, beta=None)]
    page = parse(render_html([_report(layers), _report([], source="empty.h5")], layers="*"))
    assert len(page.layers) == 5 and len(page.rows) == 5 and "No BatchNormalization layers." in page.all_text
    assert "column (channels binned by up to 8)" in page.all_text  # 2048 channels in 256 columns
    assert page.row("nan").cells[6] == "-0.5 … 1 (2 NaN/Inf)"  # the moving variance range
    assert "min and max over bins of 16 consecutive channels" in page.all_text
    assert overview_png(_report(layers))[:8] == b"\x89PNG\r\n\x1a\n"
    assert overview_png(_report([]))[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreadable_report_entry_renders_its_error() -> None:
    from bninspect.reporters.html_report import render_html

    page = parse(render_html([ModelReport(source="bad.h5", description=None, error="not an HDF5 file")]))
    assert "could not read the model: not an HDF5 file" in page.all_text


def test_training_steps_shown_when_known() -> None:
    from dataclasses import replace

    from bninspect.reporters.html_report import render_html

    rng = np.random.default_rng(2)
    report = _report([_bn("bn", 4, rng)])
    assert report.description.training_steps is None
    assert "training steps" not in parse(render_html([report])).all_text
    page = parse(render_html([replace(report, description=replace(report.description, training_steps=640))]))
    assert "training steps 640" in page.all_text


def test_api_to_html_is_the_page_the_command_writes(tmp_path: Path) -> None:
    import bninspect

    code, _, output, result = run_report([str(UNTRAINED)], tmp_path)
    assert code == 0, result.output
    report = bninspect.inspect(str(UNTRAINED))
    assert report.to_html() == output.read_text(encoding="utf-8")
    overview = report.overview()
    assert overview._repr_svg_().lstrip().startswith("<svg") and "</svg>" in overview.svg


PANELS = ("gamma", "beta", "moving-mean", "moving-variance", "effective-scale")


class _SvgParser(HTMLParser):
    """Per heatmap panel group (`<g id="...bn-rings-PANEL">`): the `<use>` markers inside it; and
    the `<image>`s of each `<figure class="heatmap">`."""

    def __init__(self) -> None:
        super().__init__()
        self.open_groups: list[str | None] = []
        self.rings: dict[str, int] = {}
        self.in_heatmap = 0
        self.heatmap_images: list[int] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "figure" and "heatmap" in (attributes.get("class") or ""):
            self.heatmap_images.append(0)
            self.in_heatmap = 1
        if tag == "g":
            group = attributes.get("id") if "bn-rings-" in (attributes.get("id") or "") else None
            self.open_groups.append(group)
            if group:
                self.rings[group] = 0
        self.handle_startendtag(tag, attrs, opened=True)

    def handle_startendtag(self, tag, attrs, opened: bool = False):
        if tag == "use":
            for group in self.open_groups:
                if group:
                    self.rings[group] += 1
        if tag == "image" and self.in_heatmap:
            self.heatmap_images[-1] += 1

    def handle_endtag(self, tag):
        if tag == "g" and self.open_groups:
            self.open_groups.pop()
        if tag == "figure":
            self.in_heatmap = 0


def svg_marks(text: str) -> _SvgParser:
    parser = _SvgParser()
    parser.feed(text)
    parser.close()
    return parser


def _rings(marks: _SvgParser, panel: str, model: str = "m1") -> int:
    """The red rings the heatmap of model `model` draws in one panel (its gid is bn-rings-PANEL)."""
    return marks.rings.get(f"{model}-hm-bn-rings-{panel}", 0)


def test_200_bn_layers_one_heatmap_a_row_each_and_under_1_mb() -> None:
    """The scale of the issue: 200 BN layers with realistic (random) values. Every layer has its
    table row, every channel is a cell of the heatmaps, the flagged channels are ringed and listed,
    and only the layers with findings are drawn in detail."""
    from bninspect.checking import run_static_rules
    from bninspect.reporters.html_report import render_html

    rng = np.random.default_rng(3)
    layers = [_bn(f"block_{i}/bn", 64 if i % 2 else 256, rng) for i in range(200)]
    layers[7] = _bn("block_7/bn", 64, rng, gamma=np.where(np.arange(64) % 20 == 5, 0.0, 1.0))  # 5, 25, 45
    report = _report(layers)
    report = ModelReport(source=report.source, description=report.description,
                         findings=tuple(run_static_rules(report.description)))
    assert {(f.code, f.layer) for f in report.findings} == {("BN006", "block_7/bn")}
    text = render_html([report])
    page = parse(text)
    assert [row.path for row in page.rows] == [layer.path for layer in layers]
    assert [row.cells[0] for row in page.rows[:3]] == ["#0", "#1", "#2"]
    assert page.row("block_7/bn").flagged_channels == [5, 25, 45] and "flagged" in page.row("block_7/bn").classes
    assert not [row for row in page.rows if row.flagged_channels and row.path != "block_7/bn"]
    assert [layer_id for layer_id, _ in page.layers] == [page.row("block_7/bn").id + "-plots"]
    marks = svg_marks(text)
    assert marks.heatmap_images == [1 + 5 + 5]  # the findings strip, a panel per statistic and its colour bar
    for panel in PANELS:
        assert _rings(marks, panel) == 3, panel
    size = len(text.encode())
    assert size < 1_000_000, size
    ids = page.ids()
    assert len(ids) == len(set(ids))


def test_heatmap_grid_keeps_the_outlier_of_each_bin_and_blanks_the_rest() -> None:
    from bninspect.reporters.heatmap import grid

    wide = np.ones(10)
    wide[7] = 50.0  # bins of 4 (10 channels in 3 columns): 0-3, 4-7, 8-9
    narrow = np.array([2.0, np.nan])
    cells = grid([wide, narrow, None], log=False, columns=3)
    assert cells.values.shape == (3, 3) and list(cells.width) == [4, 1, 1]
    assert list(cells.values[0]) == [1.0, 50.0, 1.0]
    assert cells.values[1, 0] == 2.0 and np.isnan(cells.values[1, 1:]).all() and np.isnan(cells.values[2]).all()
    logged = grid([np.array([100.0, 0.0, -1.0, np.inf])], log=True)
    assert logged.values[0, 0] == 2.0 and np.isnan(logged.values[0, 1:]).all()


def test_detail_layers_one_per_finding_group_first_then_the_pattern_decides() -> None:
    from bninspect.reporters.detail import detail_layers

    paths = [f"block_{i}/bn" for i in range(20)]
    findings = ([_finding(path, "BN013", "frozen") for path in paths]
                + [Finding("BN001", "untrained", Severity.ERROR, "m.h5", "block_17/bn", "m", "h")])
    assert detail_layers(paths, findings, limit=3) == ["block_0/bn", "block_1/bn", "block_17/bn"]
    assert detail_layers(paths, (), limit=3) == []
    assert detail_layers(paths[:3], (), limit=3) == paths[:3]  # a small model: every layer
    assert detail_layers(paths, findings, pattern="block_1?/bn") == paths[10:]
    assert detail_layers(paths, findings, pattern="bn") == paths  # the last path component


def test_layers_option_draws_the_matching_layers(tmp_path: Path) -> None:
    code, _, output, result = run_report([str(UNTRAINED), "--layers", "bn2"], tmp_path)
    assert code == 0, result.output
    page = parse(output.read_text(encoding="utf-8"))
    assert [layer_id.split("-", 3)[-1] for layer_id, _ in page.layers] == ["bn2-plots"]
    assert [row.path for row in page.rows] == ["bn1", "bn2"]
    assert "matching --layers bn2" in page.all_text


# --- with data (TensorFlow) --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data_report")
    output = directory / "data.html"
    result = subprocess.run([sys.executable, "-m", "bninspect", "report", str(TRAINED), "--data", str(DATA),
                             "-o", str(output)], capture_output=True, text=True, cwd=directory,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return output


@pytest.mark.slow
def test_data_report_has_stored_vs_observed_per_layer_and_the_drift_plot(data_report: Path) -> None:
    page = parse(data_report.read_text(encoding="utf-8"))
    assert len(page.layers) == 2
    for layer_id, figures in page.layers:
        assert "observed" in figures, layer_id
    assert page.count("figure", "drift") == 1
    assert "Stored vs observed statistics" in page.all_text and "64 samples" in page.all_text
    assert "y = x" in page.all_text
    assert_self_contained(page)


@pytest.mark.slow
def test_api_to_html_with_data_plots_stored_vs_observed() -> None:
    import bninspect

    page = parse(bninspect.inspect(str(TRAINED), data=str(DATA)).to_html())
    assert len(page.layers) == 2
    for layer_id, figures in page.layers:
        assert "observed" in figures, layer_id
    assert page.count("figure", "drift") == 1
    assert_self_contained(page)


@pytest.mark.slow
def test_data_report_names_the_first_drifting_layer(tmp_path: Path) -> None:
    """Inputs 255x too wide: every layer drifts, the first BN layer is named first."""
    wide = tmp_path / "wide.npy"
    np.save(wide, np.load(DATA) * 255.0)
    code, _, output, result = run_report([str(TRAINED), "--data", str(wide)], tmp_path)
    assert code == 0, result.output
    page = parse(output.read_text(encoding="utf-8"))
    assert "BN101" in page.all_text and "First drifting layer: bn1" in page.all_text
    assert "rule-BN101" in page.ids()


# --- in a real browser ---------------------------------------------------------------------------------

def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI is set: the browser test must run in CI "
                        "(.ci/run installs it)")
        pytest.skip("chromium is not installed (outside CI the browser test skips; `apt-get install chromium`)")
    return found


def _chromium_flags(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}"]


def _with_zero_gamma(target: Path, channels: list[int]) -> Path:
    """A copy of the trained sample whose first BN layer has gamma 0 in `channels` (BN006 names them)."""
    import zipfile

    import h5py

    work = target.with_suffix(".weights.h5")
    with zipfile.ZipFile(TRAINED) as source:
        members = {info.filename: source.read(info.filename) for info in source.infolist()}
    work.write_bytes(members["model.weights.h5"])
    with h5py.File(work, "r+") as weights:
        gamma = weights["layers/batch_normalization/vars/0"]
        values = gamma[...]
        values[channels] = 0.0
        gamma[...] = values
    members["model.weights.h5"] = work.read_bytes()
    with zipfile.ZipFile(target, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)
    return target


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    """The page as a browser shows it: a screenshot that is a PNG of the window size, no console
    errors in chromium's log, nothing fetched, and in the DOM chromium built: a table row for every
    BN layer of every model (its id, its path as text), the flagged channels listed in the row,
    ringed in the heatmaps and named in the layer's detailed section. What the console check
    covers: chromium's stderr log (`--enable-logging=stderr`) has no "Uncaught" and no
    CONSOLE(...) error lines; the page has no script, so there is little that could log."""
    import bninspect

    browser = _chromium()
    zeroed = _with_zero_gamma(tmp_path / "zero_gamma.keras", [2, 5])
    models = [UNTRAINED, TRAINED, zeroed]
    code, _, output, result = run_report([str(model) for model in models], tmp_path)
    assert code == 0, result.output
    url = output.resolve().as_uri()
    screenshot = tmp_path / "shot.png"
    shot = subprocess.run([browser, *_chromium_flags(tmp_path), "--enable-logging=stderr", "--v=0",
                           f"--screenshot={screenshot}", "--window-size=1280,2000", url],
                          capture_output=True, text=True, timeout=120)
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1280, 2000)
    log = shot.stderr
    console_errors = [line for line in log.splitlines() if "Uncaught" in line or
                      ("CONSOLE" in line and ("ERROR" in line or "error" in line))]
    assert not console_errors, console_errors
    assert "net::ERR" not in log, "the page tried to fetch something"

    dom = subprocess.run([browser, *_chromium_flags(tmp_path), "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    expected = [layer.path for model in models for layer in bninspect.inspect(str(model)).bn_layers]
    assert [row.path for row in page.rows] == expected == ["bn1", "bn2"] * 3
    ids = page.ids()
    assert all(row.id in ids for row in page.rows) and len(ids) == len(set(ids))
    assert "BN001" in page.all_text and "BN006" in page.all_text
    # The flagged channels: in the table row, ringed in every panel of that model's heatmap, named
    # in its detailed section; no other layer has any.
    zero_row = page.rows[4]
    assert zero_row.id.startswith("m3-") and zero_row.flagged_channels == [2, 5] and zero_row.cells[-1] == "2, 5"
    assert [row.flagged_channels for row in page.rows if row is not zero_row] == [[]] * 5
    marks = svg_marks(dom.stdout)
    assert [_rings(marks, panel, "m3") for panel in PANELS] == [2] * 5
    assert not [group for group in marks.rings if not group.startswith("m3-")]
    assert "Highlighted channels: 2, 5" in page.all_text
    # Per model: the overview, the heatmap figure and one per-channel figure per (small model's) layer.
    assert page.count("figure", "heatmap") == 3 and marks.heatmap_images == [11] * 3
    assert page.count("svg") == 3 * (1 + 1 + 2)
    assert_self_contained(page)
