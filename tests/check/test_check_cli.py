"""`bninspect check`, `rules` and `explain` through the real CLI entry point (fast: synthetic files)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from bninspect.rules.catalogue import RULES
from check_model_files import run, trained_arrays, untrained_arrays, write_broken, write_model

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("in_empty_directory")


def test_healthy_model_passes(model_dir):
    result = run("check", model_dir / "healthy.h5")
    assert result.exit_code == 0, result.output
    assert "healthy.h5  ok" in result.output


def test_error_finding_fails_with_exit_1_and_is_shown(model_dir):
    result = run("check", model_dir / "untrained.h5")
    assert result.exit_code == 1, result.output
    assert re.search(r"BN001 error\s+bn: moving mean is exactly 0 and moving variance exactly 1 in all 4 channels",
                     result.output)


def test_warning_passes_unless_strict(model_dir):
    path = model_dir / "momentum.h5"
    assert run("check", path).exit_code == 0
    assert run("check", path, "--strict").exit_code == 1


def test_strict_from_config_and_no_strict_flag_wins(model_dir):
    (Path.cwd() / "pyproject.toml").write_text("[tool.bninspect]\nstrict = true\n")
    path = model_dir / "momentum.h5"
    assert run("check", path).exit_code == 1
    assert run("check", path, "--no-strict").exit_code == 0


def test_ignore_and_select_change_the_exit_code(model_dir):
    path = model_dir / "untrained.h5"
    assert run("check", path, "--ignore", "BN001").exit_code == 0
    assert run("check", path, "--select", "BN008,BN009").exit_code == 0
    assert run("check", path, "--select", "untrained-moving-stats").exit_code == 1


def test_unknown_rule_on_command_line_is_usage_error(model_dir):
    result = run("check", model_dir / "healthy.h5", "--select", "BN999")
    assert result.exit_code == 2
    assert "unknown rule 'BN999'" in result.output


def test_directory_with_good_and_broken_file_reports_both_and_exits_2(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    write_model(directory / "good.h5", trained_arrays())
    write_broken(directory / "broken.h5")
    (directory / "notes.txt").write_text("not a model")
    result = run("check", directory)
    assert result.exit_code == 2, result.output
    assert "good.h5  ok" in result.output
    assert re.search(r"broken\.h5  unreadable: \S", result.output)
    assert "notes.txt" not in result.output
    assert "Traceback" not in result.output


def test_unreadable_file_beats_findings_and_every_file_is_reported_as_json(tmp_path):
    write_model(tmp_path / "a_untrained.h5", untrained_arrays())
    write_broken(tmp_path / "b_broken.h5")
    result = run("check", tmp_path / "a_untrained.h5", tmp_path / "b_broken.h5", tmp_path / "c_missing.h5",
                 "--format", "json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    models = {Path(model["path"]).name: model for model in document["models"]}
    assert list(models) == ["a_untrained.h5", "b_broken.h5", "c_missing.h5"]
    assert models["a_untrained.h5"]["error"] is None
    assert [f["code"] for f in models["a_untrained.h5"]["findings"]] == ["BN001"]
    assert models["b_broken.h5"]["error"] and "\n" not in models["b_broken.h5"]["error"]
    assert "no such file" in models["c_missing.h5"]["error"]
    assert document["summary"] == {"models": 3, "errors": 1, "warnings": 0, "infos": 0, "unreadable": 2}


def test_empty_directory_is_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("check", empty)
    assert result.exit_code == 2
    assert "no model files" in result.output


def test_jobs_gives_the_same_reports_in_the_same_order(model_dir):
    write_broken(model_dir / "zz_broken.h5")
    serial = json.loads(run("check", model_dir, "-f", "json").stdout)
    parallel = json.loads(run("check", model_dir, "-f", "json", "--jobs", "2").stdout)
    assert [m["path"] for m in serial["models"]] == sorted(m["path"] for m in serial["models"])
    assert parallel == serial
    assert serial["summary"]["unreadable"] == 1


def test_negative_jobs_is_usage_error(model_dir):
    assert run("check", model_dir, "--jobs", "-1").exit_code == 2


def test_output_file(model_dir, tmp_path):
    target = tmp_path / "report.json"
    result = run("check", model_dir, "-f", "json", "-o", target)
    assert result.exit_code == 1
    assert json.loads(target.read_text())["summary"]["errors"] == 1


def test_sarif_document(model_dir):
    write_broken(model_dir / "zz_broken.h5")
    result = run("check", model_dir, "--format", "sarif")
    assert result.exit_code == 2
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0" and "sarif" in sarif["$schema"]
    run_ = sarif["runs"][0]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "bninspect" and driver["version"]
    assert [rule["id"] for rule in driver["rules"]] == [rule.code for rule in RULES]
    assert all(rule["fullDescription"]["text"] and rule["help"]["text"] for rule in driver["rules"])
    by_code = {result["ruleId"]: result for result in run_["results"]}
    assert set(by_code) == {"BN001", "BN008"}
    bn001 = by_code["BN001"]
    assert driver["rules"][bn001["ruleIndex"]]["id"] == "BN001"
    assert bn001["level"] == "error" and by_code["BN008"]["level"] == "warning"
    assert bn001["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("untrained.h5")
    assert bn001["locations"][0]["logicalLocations"] == [{"name": "bn", "fullyQualifiedName": "bn", "kind": "member"}]
    assert "4 channels" in bn001["message"]["text"]
    invocation = run_["invocations"][0]
    assert invocation["executionSuccessful"] is False
    (notification,) = invocation["toolExecutionNotifications"]
    assert "zz_broken.h5" in notification["message"]["text"]


def test_junit_document(model_dir):
    write_broken(model_dir / "zz_broken.h5")
    result = run("check", model_dir, "--format", "junit", "--strict")
    assert result.exit_code == 2
    root = ElementTree.fromstring(result.stdout)
    (suite,) = root.findall("testsuite")
    cases = {Path(case.get("name")).name: case for case in suite.findall("testcase")}
    assert set(cases) == {"healthy.h5", "momentum.h5", "untrained.h5", "zz_broken.h5"}
    assert suite.get("tests") == "4" and suite.get("failures") == "2" and suite.get("errors") == "1"
    assert cases["healthy.h5"].find("failure") is None and cases["healthy.h5"].find("error") is None
    assert "BN001" in cases["untrained.h5"].find("failure").text
    assert "BN008" in cases["momentum.h5"].find("failure").text  # --strict: warnings fail
    assert cases["zz_broken.h5"].find("error") is not None


def test_junit_without_strict_keeps_warnings_out_of_failures(model_dir):
    root = ElementTree.fromstring(run("check", model_dir, "--format", "junit").stdout)
    cases = {Path(case.get("name")).name: case for case in root.iter("testcase")}
    assert cases["momentum.h5"].find("failure") is None
    assert "BN008" in cases["momentum.h5"].find("system-out").text


GITHUB_LINE = re.compile(r"^::(error|warning|notice) file=([^,:]+),title=([^,:]+)::(.+)$")


def test_github_annotations(model_dir):
    write_broken(model_dir / "zz_broken.h5")
    result = run("check", model_dir, "--format", "github")
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    parsed = [GITHUB_LINE.match(line) for line in lines]
    assert all(parsed), lines
    by_title = {match.group(3): match for match in parsed}
    assert by_title["BN001 untrained-moving-stats"].group(1) == "error"
    assert by_title["BN001 untrained-moving-stats"].group(4).startswith("bn: moving mean")
    assert by_title["BN008 pytorch-momentum"].group(1) == "warning"
    assert by_title["unreadable model"].group(2).endswith("zz_broken.h5")


def test_rules_lists_every_rule_and_json(tmp_path):
    text = run("rules")
    assert text.exit_code == 0
    for rule in RULES:
        assert rule.code in text.stdout and rule.name in text.stdout
    listed = json.loads(run("rules", "--format", "json").stdout)["rules"]
    assert [(r["code"], r["name"], r["severity"]) for r in listed] == [
        (rule.code, rule.name, rule.severity.value) for rule in RULES]


@pytest.mark.parametrize("rule_id", ["BN009", "bn009", "axis-mismatch"])
def test_explain_by_code_or_name(rule_id):
    result = run("explain", rule_id)
    assert result.exit_code == 0
    for heading in ("What it does", "Why is this bad?", "Example", "How to fix"):
        assert heading in result.stdout
    assert "BatchNormalization(axis=1)" in result.stdout


def test_explain_unknown_rule_exits_2():
    result = run("explain", "BN999")
    assert result.exit_code == 2
    assert "unknown rule" in result.output


def test_static_check_never_imports_tensorflow_or_keras(model_dir):
    code = (
        "import sys\n"
        "from bninspect.cli import main\n"
        "try:\n"
        f"    main(['check', {str(model_dir)!r}, '--format', 'sarif', '--jobs', '1'])\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'))\n"
        "print('STATUS', status, 'HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "STATUS 1 HEAVY []" in result.stdout, result.stdout + result.stderr
