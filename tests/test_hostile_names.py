"""Names from a model file are untrusted: layer names and file names holding terminal escapes,
newlines that would start a GitHub workflow command, rich markup, characters XML forbids,
bidirectional overrides and matplotlib mathtext reach every output of the real CLI as inert,
visible text (`\\x1b`), on the lines they belong to, and never crash it.

The hostile files are copies of the small sample models with one BN layer renamed (in
`config.json` and in the `name` attribute of its weights group) and hostile file names.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from hostile_files import renamed_copy

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"

# One layer name with every kind of hostile text: a colour escape (CSI), a window-title escape
# ended by BEL (OSC), a newline starting a workflow command, rich markup that does not balance,
# characters XML 1.0 forbids, a right-to-left override, a GitHub escape, and mathtext that
# matplotlib cannot parse.
LAYER = "bn\x1b[31m\x1b]0;title\x07\n::error file=x::pwned[/][bold]\x0b\x1f\u202e%0A$\\bad{$"
# How the text outputs show it: every control character as an escape, the rest as it is.
LAYER_SHOWN = "bn\\x1b[31m\\x1b]0;title\\x07\\x0a::error file=x::pwned[/][bold]\\x0b\\x1f\\u202e%0A$\\bad{$"
# A file name cannot hold "/".
FILE_STEM = "model\x1b[31m\n::error file=y::evil[bold]\x0b\u202e%0A"
FILE_STEM_SHOWN = "model\\x1b[31m\\x0a::error file=y::evil[bold]\\x0b\\u202e%0A"

# What must never reach an output raw: control characters but the newline that ends our own lines,
# and the bidirectional overrides and isolates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
# Every character RFC 3986 allows in a URI.
URI = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
# One GitHub workflow command: ':' and ',' inside the properties are escaped, so they split cleanly.
WORKFLOW_COMMAND = re.compile(r"::(error|warning|notice) file=([^,:]*),title=([^,:]*)::(.*)")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, timeout=300)
    # Strict UTF-8: a name that is not UTF-8 must not reach the output as raw bytes either.
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode("utf-8"),
                                       result.stderr.decode("utf-8"))


def assert_inert(result: subprocess.CompletedProcess, *exit_codes: int) -> None:
    """The command ended with one of `exit_codes`, without a traceback, and wrote no raw control
    character on stdout or stderr."""
    assert result.returncode in exit_codes, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    for stream in (result.stdout, result.stderr):
        found = RAW_CONTROL.search(stream)
        assert found is None, f"raw {found.group(0)!r} in {stream[max(found.start() - 80, 0):found.end() + 80]!r}"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """{"untrained", "trained": .keras files with the hostile layer and file names; "broken": a
    file that is not a model, with the hostile file name}."""
    directory = tmp_path_factory.mktemp("hostile")
    broken = directory / f"{FILE_STEM}.h5"
    broken.write_bytes(b"not a model")
    return {"untrained": renamed_copy(SAMPLES / "cnn_untrained.keras", directory / f"{FILE_STEM}_untrained.keras",
                                      "bn1", LAYER),
            "trained": renamed_copy(SAMPLES / "cnn_trained.keras", directory / f"{FILE_STEM}_trained.keras", "bn1", LAYER),
            "broken": broken}


def shown_path(path: Path) -> str:
    return str(path).replace(FILE_STEM, FILE_STEM_SHOWN)


# --- the escaping functions ------------------------------------------------------------------------

def test_printable_shows_every_hostile_character_as_an_escape_on_one_line():
    from bninspect.untrusted import printable

    assert printable(LAYER) == LAYER_SHOWN
    # Not UTF-8 (a file name's raw byte, a lone surrogate from JSON), not XML (U+FFFE).
    assert printable("a\udcff\ud800\ufffe") == "a\\udcff\\ud800\\ufffe"
    ordinary = "conv2_block1_0_bn"
    assert printable(ordinary) is ordinary  # the fast path: nothing copied


def test_github_html_and_plot_escaping():
    from bninspect.untrusted import github_data, github_property, html_text, plot_text

    assert "\n" not in github_data(LAYER) and "%250A" in github_data(LAYER)
    assert github_property("a:b,c") == "a%3Ab%2Cc"
    assert html_text('<b a="1">\x1b') == "&lt;b a=&quot;1&quot;&gt;\\x1b"
    assert plot_text("a$x$b\x07") == "a\\$x\\$b\\x07"


# --- the CLI on hostile files ----------------------------------------------------------------------

def test_inspect_table_shows_the_names_escaped(hostile):
    result = run_cli("inspect", str(hostile["untrained"]))
    assert_inert(result, 0)
    assert shown_path(hostile["untrained"]) in result.stdout
    assert LAYER_SHOWN in result.stdout  # in the table, and in the findings below it


def test_inspect_layer_detail_does_not_read_the_name_as_markup(hostile):
    result = run_cli("inspect", str(hostile["untrained"]), "--layer", "*pwned*")
    assert_inert(result, 0)
    # The title may wrap; the markup must be there as text, not applied (or raising MarkupError).
    assert "\\x1b[31m" in result.stdout and "[/][bold]" in result.stdout
    assert "effective scale" in result.stdout


def test_inspect_json_keeps_the_exact_names(hostile):
    result = run_cli("inspect", str(hostile["untrained"]), "--format", "json")
    assert_inert(result, 0)
    (model,) = json.loads(result.stdout)["models"]
    # json.dumps escapes the control characters itself: the names are not escaped a second time.
    assert model["path"] == str(hostile["untrained"])
    assert LAYER in [layer["path"] for layer in model["bn_layers"]]


def test_check_text_exit_code_and_escaped_names(hostile):
    result = run_cli("check", str(hostile["untrained"]))
    assert_inert(result, 1)  # BN001 on the untrained layers
    assert shown_path(hostile["untrained"]) in result.stdout
    assert LAYER_SHOWN in result.stdout
    assert "1 model checked" in result.stdout


@pytest.fixture(scope="module")
def check_outputs(hostile):
    """`check` of a hostile model and a hostile unreadable file, in every format: {format: result}."""
    paths = (str(hostile["untrained"]), str(hostile["broken"]))
    return {output_format: run_cli("check", *paths, "--format", output_format)
            for output_format in ("json", "sarif", "junit", "github")}


@pytest.mark.parametrize("output_format", ["json", "sarif", "junit", "github"])
def test_check_formats_exit_2_for_the_unreadable_file_with_one_stderr_line_each(check_outputs, hostile, output_format):
    result = check_outputs[output_format]
    assert_inert(result, 2)
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bninspect: error: {shown_path(hostile['broken'])}: ")


def test_check_json_parses_with_the_exact_names(check_outputs, hostile):
    document = json.loads(check_outputs["json"].stdout)
    read, unreadable = document["models"]
    assert read["path"] == str(hostile["untrained"]) and unreadable["path"] == str(hostile["broken"])
    assert LAYER in {finding["layer"] for finding in read["findings"]}
    assert unreadable["error"] and document["summary"]["unreadable"] == 1


def test_check_sarif_parses_and_its_uris_are_valid(check_outputs):
    run = json.loads(check_outputs["sarif"].stdout)["runs"][0]
    uris = [artifact["location"]["uri"] for artifact in run["artifacts"]]
    uris += [location["physicalLocation"]["artifactLocation"]["uri"]
             for item in run["results"] + run["invocations"][0]["toolExecutionNotifications"]
             for location in item["locations"]]
    assert len(uris) > 2
    for uri in uris:
        assert URI.fullmatch(uri), uri
        assert "%1B%5B31m%0A" in uri  # the file name's escape and newline, percent-encoded
    names = {location["name"] for result in run["results"] for location in result["locations"][0]["logicalLocations"]}
    assert LAYER in names
    assert run["invocations"][0]["executionSuccessful"] is False


def test_check_junit_is_valid_xml_with_the_names_escaped(check_outputs, hostile):
    root = ElementTree.fromstring(check_outputs["junit"].stdout)
    read, unreadable = root.iter("testcase")
    assert read.get("name") == read.get("file") == shown_path(hostile["untrained"])
    assert LAYER_SHOWN in read.find("failure").text
    assert unreadable.get("name") == shown_path(hostile["broken"])
    assert unreadable.find("error") is not None
    assert root.get("failures") == "1" and root.get("errors") == "1"


def test_check_github_writes_only_its_own_workflow_commands(check_outputs, hostile):
    findings = json.loads(check_outputs["json"].stdout)["models"][0]["findings"]
    infos = {finding["code"] for finding in findings if finding["severity"] == "info"}
    # One line per error or warning, one notice per info code, one line for the unreadable file.
    expected = sum(1 for finding in findings if finding["severity"] != "info") + len(infos) + 1
    lines = check_outputs["github"].stdout.splitlines()
    assert len(lines) == expected
    assert sum(line.startswith("::") for line in lines) == expected
    for line in lines:
        match = WORKFLOW_COMMAND.fullmatch(line)
        assert match, line
        assert "\\x1b[31m" in match.group(2)  # the file= property, escaped
    assert any("\\x1b[31m\\x1b]0;title\\x07\\x0a::error file=x::pwned" in line for line in lines)


def test_one_line_error_for_an_unreadable_file_with_a_hostile_name(hostile):
    result = run_cli("inspect", str(hostile["broken"]))
    assert_inert(result, 2)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"bninspect: error: {shown_path(hostile['broken'])}")


def test_diff_does_not_read_names_as_markup(hostile):
    result = run_cli("diff", str(hostile["untrained"]), str(hostile["trained"]))
    assert_inert(result, 0)
    assert LAYER_SHOWN in result.stdout and "changed" in result.stdout
    assert shown_path(hostile["trained"]) in result.stdout
    unchanged = run_cli("diff", str(hostile["untrained"]), str(hostile["untrained"]))
    assert_inert(unchanged, 0)
    assert f"did not move at all: {LAYER_SHOWN}" in unchanged.stdout
    data = run_cli("diff", str(hostile["untrained"]), str(hostile["trained"]), "--format", "json")
    assert_inert(data, 0)
    assert LAYER in [layer["path"] for layer in json.loads(data.stdout)["layers"]]


def test_html_report_escapes_names_and_draws_mathtext_names(hostile, tmp_path):
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    result = run_cli("report", str(hostile["untrained"]), "--layers", "*", "-o", str(page))
    assert_inert(result, 0)
    html = page.read_text(encoding="utf-8")
    found = RAW_CONTROL.search(html)
    assert found is None, html[max(found.start() - 80, 0):found.end() + 80]
    assert "bn\\x1b[31m\\x1b]0;title\\x07\\x0a::error file=x::pwned[/][bold]" in html
    assert FILE_STEM_SHOWN in html
    # The figures name the layer (tick labels): `$` drawn literally, not parsed as mathtext.
    assert re.search(r"<text[^>]*>[^<]*pwned\[/\]\[bold\][^<]*\$\\bad\{\$</text>", html)


def test_png_overview_draws_mathtext_names(hostile, tmp_path):
    pytest.importorskip("matplotlib")
    image = tmp_path / "overview.png"
    result = run_cli("report", str(hostile["untrained"]), "--format", "png", "-o", str(image))
    assert_inert(result, 0)
    assert image.read_bytes().startswith(b"\x89PNG")


def test_file_name_that_is_not_utf8(tmp_path):
    """Linux file names are bytes: one that is not UTF-8 reaches Python as lone surrogates."""
    directory = tmp_path / "models"
    directory.mkdir()
    try:
        shutil.copy(SAMPLES / "cnn_untrained.keras", bytes(directory) + b"/bad\xff\x1b[31m.keras")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    # SARIF percent-encodes the file's own bytes into its URI; the other outputs show escapes.
    shown = {"text": "bad\\udcff\\x1b[31m.keras", "junit": "bad\\udcff\\x1b[31m.keras",
             "github": "bad\\udcff\\x1b[31m.keras", "sarif": "bad%FF%1B%5B31m.keras"}
    for output_format, name in shown.items():
        result = run_cli("check", str(directory), "--format", output_format)
        assert_inert(result, 1)
        assert name in result.stdout, output_format


# --- reporters that need a model run on data (hand-made results) ----------------------------------

def _probe_report(source: str):
    from bninspect.findings import Finding, Severity
    from bninspect.probes.moments import ChannelMoments
    from bninspect.probes.results import LayerProbe, ProbeReport
    from bninspect.probes.thresholds import ProbeThresholds

    moments = ChannelMoments(np.full(4, 100.0), np.full(4, 50.0), np.full(4, 400.0), np.zeros(4))
    layer = LayerProbe(path=LAYER, order=0, axis=(3,), epsilon=1e-3, moving_mean=np.zeros(4),
                       moving_variance=np.ones(4), input=moments, output=moments, calls=1)
    finding = Finding("BN101", "stats-drift", Severity.WARNING, source, LAYER, f"{LAYER} drifts", f"look at {LAYER}")
    return ProbeReport(source=source, keras="keras 3", samples=100, batch_size=10, batches=10, seconds=1.0,
                       layers=(layer,), findings=(finding,), thresholds=ProbeThresholds())


def test_probe_text_shows_names_escaped_and_not_as_markup():
    from bninspect.reporters import probe_table

    text = probe_table.render(_probe_report(FILE_STEM + ".keras"))
    assert RAW_CONTROL.search(text) is None
    assert LAYER_SHOWN in text and FILE_STEM_SHOWN in text


def test_drift_figure_draws_a_mathtext_name():
    pytest.importorskip("matplotlib")
    from bninspect.reporters.plots import drift_svg

    svg = drift_svg(_probe_report("m.keras"), drifting_paths=[LAYER])
    assert RAW_CONTROL.search(svg) is None
    assert "first drifting: bn\\x1b[31m" in svg


def test_recalibrate_text_shows_names_escaped_and_not_as_markup():
    from bninspect.findings import Finding, Severity
    from bninspect.recalibration import RecalibratedLayer, RecalibrationSummary
    from bninspect.report import ModelReport
    from bninspect.reporters import recalibrate_report

    source, output = FILE_STEM + ".keras", FILE_STEM + "_out.keras"
    finding = Finding("BN001", "untrained-moving-stats", Severity.ERROR, output, LAYER, "never updated", "fit it")
    layer = RecalibratedLayer(LAYER, 100, np.zeros(4), np.ones(4), np.full(4, 0.5), np.full(4, 2.0))
    summary = RecalibrationSummary(source=source, output=output, keras="keras 3", samples=100, batches=10,
                                   batch_size=10, layers=(layer,), kept=((LAYER, f"{LAYER} not reached"),),
                                   check=ModelReport(source=output, description=None, findings=(finding,)),
                                   notes=(f"note about {LAYER}",))
    for color in (False, True):
        text = recalibrate_report.render_text(summary, color=color)
        # With colour, only our own colour escapes (ESC '[' digits 'm'), none from the names.
        assert RAW_CONTROL.search(re.sub("\x1b\\[[0-9;]*m", "", text)) is None
        assert text.count("[/][bold]") == 5  # table, kept (path and reason), note, check finding
        assert FILE_STEM_SHOWN in text


def test_coloured_outputs_hold_only_our_own_colour_escapes(hostile):
    """What a terminal gets (colours on): the names escaped, no escape but the styles' own."""
    from bninspect import inspect, loaders
    from bninspect.diff import diff_models
    from bninspect.reporters import check_text, diff_report, table

    report = inspect(hostile["untrained"])
    model_diff = diff_models(loaders.load(hostile["untrained"]), loaders.load(hostile["trained"]))
    outputs = {"inspect": table.render([report], color=True),
               "inspect --layer": table.render([report], color=True, layer_pattern="*pwned*"),
               "check": check_text.render([report], color=True),
               "diff": diff_report.render_text(model_diff, color=True),
               "notebook html": table.render_html([report])}
    for name, text in outputs.items():
        styles_removed = re.sub("\x1b\\[[0-9;]*m", "", text)
        assert RAW_CONTROL.search(styles_removed) is None, name
        assert "\\x1b[31m" in text and "[/][bold]" in text, name
