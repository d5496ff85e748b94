"""`check --baseline` / `--update-baseline` on real model files: the ratchet a team adopts the gate
with (accepted findings known, new ones fail, fixed ones reported), the baseline file, and the
outputs that carry the state (JSON, SARIF, text, GitHub), and `--format gitlab`."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import h5py
import numpy as np
import pytest

from check_model_files import run, trained_arrays, write_model

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model repository with accepted findings: an untrained CNN (BN001 errors), a model ending in
    BN (BN010 warning, BN011 info) and a healthy one. The tests run from its root."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("cnn_untrained.keras", "bn_last_layer.keras", "cnn_trained.keras"):
        shutil.copy(SAMPLES / name, models / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _json(*args) -> tuple[int, dict]:
    result = run("check", *args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


def _states(document: dict) -> dict[tuple[str, str, str], str]:
    return {(model["path"], finding["layer"], finding["code"]): finding["baseline_state"]
            for model in document["models"] for finding in model["findings"]}


def _baseline(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["findings"]


def test_accepted_findings_pass_with_the_baseline(repo: Path):
    assert run("check", "models").exit_code == 1
    written = run("check", "--update-baseline", "baseline.json", "models")
    assert written.exit_code == 0, written.output
    entries = _baseline(repo / "baseline.json")
    assert [(entry["model"], entry["layer"], entry["code"]) for entry in entries] == [
        ("models/bn_last_layer.keras", "bn_out", "BN010"), ("models/bn_last_layer.keras", "bn_out", "BN011"),
        ("models/cnn_untrained.keras", "bn1", "BN001"), ("models/cnn_untrained.keras", "bn2", "BN001")]
    assert all(entry["reason"] == "" and len(entry["fingerprint"]) == 32 for entry in entries)

    code, document = _json("--baseline", "baseline.json", "models")
    assert code == 0
    assert set(_states(document).values()) == {"unchanged"}
    assert document["baseline"]["known"] == 4 and document["baseline"]["new"] == 0
    assert document["baseline"]["fixed"] == []
    # --strict: the BN010 warning is known too.
    assert run("check", "--baseline", "baseline.json", "--strict", "models").exit_code == 0


def test_a_new_bad_model_fails_and_is_the_only_new_one(repo: Path):
    run("check", "--update-baseline", "baseline.json", "models")
    shutil.copy(SAMPLES / "cnn_untrained.h5", repo / "models" / "added.h5")
    code, document = _json("--baseline", "baseline.json", "models")
    assert code == 1
    new = {key for key, state in _states(document).items() if state == "new"}
    assert new == {("models/added.h5", "bn1", "BN001"), ("models/added.h5", "bn2", "BN001")}
    assert document["baseline"]["known"] == 4 and document["baseline"]["new"] == 2

    text = run("check", "--baseline", "baseline.json", "models")
    assert text.exit_code == 1
    assert "baseline baseline.json: 4 known, 2 new, 0 fixed" in text.stdout
    assert "models/added.h5  2 errors (0 known, 2 new)" in text.stdout
    github = run("check", "--baseline", "baseline.json", "models", "--format", "github").stdout.splitlines()
    errors = [line for line in github if line.startswith("::error ")]
    assert len(errors) == 2 and all("file=models/added.h5," in line for line in errors)
    known = "::notice file=models/cnn_untrained.keras,title=known BN001 untrained-moving-stats::bn1: "
    assert any(line.startswith(known) for line in github)
    assert github[-1] == "::notice title=bninspect baseline::4 known, 2 new, 0 fixed (baseline.json)"


def test_junit_known_findings_do_not_fail(repo: Path):
    run("check", "--update-baseline", "baseline.json", "models")
    shutil.copy(SAMPLES / "cnn_untrained.h5", repo / "models" / "added.h5")
    result = run("check", "--baseline", "baseline.json", "models", "--format", "junit")
    assert result.exit_code == 1
    suite = ElementTree.fromstring(result.stdout).find("testsuite")
    failed = {case.get("name") for case in suite.iter("testcase") if case.find("failure") is not None}
    assert failed == {"models/added.h5"}
    outputs = {case.get("name"): case.findtext("system-out") or "" for case in suite.iter("testcase")}
    assert "BN001 untrained-moving-stats [error, known] bn1" in outputs["models/cnn_untrained.keras"]


def test_a_repaired_model_is_reported_fixed_and_dropped_on_update(repo: Path):
    run("check", "--update-baseline", "baseline.json", "models")
    entries = _baseline(repo / "baseline.json")
    entries[0]["reason"] = "BN last by design: the head standardises embeddings"
    (repo / "baseline.json").write_text(json.dumps({"bninspect_baseline": 1, "findings": entries}))
    shutil.copy(SAMPLES / "cnn_trained.keras", repo / "models" / "cnn_untrained.keras")  # retrained

    code, document = _json("--baseline", "baseline.json", "models")
    assert code == 0
    assert [(entry["path"], entry["layer"], entry["code"], entry["baseline_state"])
            for entry in document["baseline"]["fixed"]] == [
        ("models/cnn_untrained.keras", "bn1", "BN001", "absent"),
        ("models/cnn_untrained.keras", "bn2", "BN001", "absent")]
    text = run("check", "--baseline", "baseline.json", "models").stdout
    assert "2 known, 0 new, 2 fixed" in text and "fixed models/cnn_untrained.keras  bn1  BN001" in text
    # Without --update-baseline the baseline never changes; with it, it only loses the fixed entries.
    assert len(_baseline(repo / "baseline.json")) == 4
    updated = run("check", "--update-baseline", "baseline.json", "models")
    assert updated.exit_code == 0 and "2 fixed" in updated.stdout
    kept = _baseline(repo / "baseline.json")
    assert [(entry["code"], entry["reason"]) for entry in kept] == [
        ("BN010", "BN last by design: the head standardises embeddings"), ("BN011", "")]


def test_a_partial_run_neither_reports_nor_drops_other_models(repo: Path):
    run("check", "--update-baseline", "baseline.json", "models")
    code, document = _json("--baseline", "baseline.json", "models/cnn_trained.keras")
    assert code == 0 and document["baseline"]["fixed"] == []
    run("check", "--update-baseline", "baseline.json", "models/bn_last_layer.keras")
    assert len(_baseline(repo / "baseline.json")) == 4
    # A deleted model's entries are fixed.
    (repo / "models" / "cnn_untrained.keras").unlink()
    code, document = _json("--baseline", "baseline.json", "models")
    assert code == 0 and {entry["layer"] for entry in document["baseline"]["fixed"]} == {"bn1", "bn2"}


def _perturb_affine(path: Path, seed: int) -> None:
    """The same architecture saved again with other gamma/beta (the untrained moving statistics,
    which BN001 is about, stay)."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as handle:
        for layer in ("bn1", "bn2"):
            group = handle[f"model_weights/{layer}/cnn/{layer}"]
            for name in ("gamma", "beta"):
                group[name][...] = rng.normal(1.0 if name == "gamma" else 0.0, 0.1, group[name].shape)


def test_fingerprints_survive_saving_again_with_other_statistics(repo: Path):
    model = repo / "models" / "saved.h5"
    shutil.copy(SAMPLES / "cnn_untrained.h5", model)
    momentum = repo / "models" / "momentum.h5"
    write_model(momentum, trained_arrays(1), bn_config={"momentum": 0.1})
    run("check", "--update-baseline", "baseline.json", "models")
    before = run("check", "--baseline", "baseline.json", "models", "--format", "sarif").stdout

    _perturb_affine(model, seed=3)
    write_model(momentum, trained_arrays(2), bn_config={"momentum": 0.05})  # "retrained", other numbers
    code, document = _json("--baseline", "baseline.json", "models")
    assert code == 0 and set(_states(document).values()) == {"unchanged"}
    after = run("check", "--baseline", "baseline.json", "models", "--format", "sarif").stdout

    def prints(sarif: str) -> dict:
        results = json.loads(sarif)["runs"][0]["results"]
        return {(result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], result["ruleId"],
                 result["locations"][0].get("logicalLocations", [{}])[0].get("name")):
                (result["partialFingerprints"]["bninspectBaseline/v1"], result["message"]["text"])
                for result in results}

    old, new = prints(before), prints(after)
    assert old.keys() == new.keys()
    assert all(old[key][0] == new[key][0] for key in old)
    momentum_key = ("models/momentum.h5", "BN008", "bn")
    assert old[momentum_key][1] != new[momentum_key][1]  # the message's numbers changed, the fingerprint did not


def test_sarif_baseline_state_and_fingerprints(repo: Path):
    run("check", "--update-baseline", "baseline.json", "models")
    shutil.copy(SAMPLES / "cnn_trained.keras", repo / "models" / "cnn_untrained.keras")
    shutil.copy(SAMPLES / "channels_first_wrong_axis.keras", repo / "models" / "new.keras")
    result = run("check", "--baseline", "baseline.json", "models", "--format", "sarif")
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0"
    run_ = sarif["runs"][0]
    states = [(item["ruleId"], item["baselineState"]) for item in run_["results"]]
    assert sorted(states) == [("BN001", "absent"), ("BN001", "absent"), ("BN009", "new"), ("BN010", "unchanged"),
                              ("BN011", "unchanged")]
    rule_ids = [rule["id"] for rule in run_["tool"]["driver"]["rules"]]
    for item in run_["results"]:
        # What the SARIF 2.1.0 schema asks of these properties.
        assert item["baselineState"] in {"new", "unchanged", "updated", "absent"}
        assert all(isinstance(value, str) for value in item["partialFingerprints"].values())
        assert rule_ids[item["ruleIndex"]] == item["ruleId"]
        assert item["level"] in {"none", "note", "warning", "error"}
    fixed = [item for item in run_["results"] if item["baselineState"] == "absent"]
    assert {item["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for item in fixed} == {
        "models/cnn_untrained.keras"}


def test_baseline_from_the_config_is_relative_to_the_config(repo: Path, monkeypatch: pytest.MonkeyPatch):
    (repo / "pyproject.toml").write_text('[tool.bninspect]\nbaseline = "ci/baseline.json"\n')
    (repo / "ci").mkdir()
    assert run("check", "--update-baseline", "ci/baseline.json", "models").exit_code == 0
    assert _baseline(repo / "ci" / "baseline.json")[0]["model"] == "../models/bn_last_layer.keras"
    assert run("check", "models").exit_code == 0
    monkeypatch.chdir(repo / "models")
    result = run("check", ".")
    assert result.exit_code == 0 and "4 known, 0 new" in result.stdout


@pytest.mark.parametrize("content, reason", [
    ("not json", "invalid JSON"),
    ('{"findings": []}', "not a bninspect baseline"),
    ('{"bninspect_baseline": 1, "findings": [{"model": "m.h5"}]}', 'findings[0]: "code" must be a non-empty string'),
    ('{"bninspect_baseline": 1, "findings": [{"model": "m.h5", "code": "BN001", "reason": 3}]}', '"reason" must be'),
])
def test_a_malformed_baseline_is_one_line_and_exit_2(repo: Path, content: str, reason: str):
    (repo / "baseline.json").write_text(content)
    result = run("check", "--baseline", "baseline.json", "models")
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("bninspect: error: baseline.json: ") and reason in line


def test_a_missing_baseline_says_how_to_write_one(repo: Path):
    result = run("check", "--baseline", "nothing.json", "models")
    assert result.exit_code == 2 and "--update-baseline nothing.json" in result.stderr


def test_update_baseline_refuses_to_overwrite_a_model(repo: Path):
    result = run("check", "--update-baseline", "models/cnn_trained.keras", "models")
    assert result.exit_code == 2 and "nothing was written" in result.stderr


def test_gitlab_code_quality(repo: Path):
    write_model(repo / "models" / "twice.h5", trained_arrays(1), bn_config={"momentum": 0.1})
    (repo / "models" / "broken.h5").write_bytes(b"not a model")
    result = run("check", "models", "--format", "gitlab")
    assert result.exit_code == 2
    issues = json.loads(result.stdout)
    assert isinstance(issues, list) and issues
    for issue in issues:
        # GitLab's documented fields (docs.gitlab.com/ci/testing/code_quality, "Code Quality report format").
        assert set(issue) == {"description", "check_name", "fingerprint", "severity", "location"}
        assert issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert isinstance(issue["location"]["path"], str) and issue["location"]["lines"]["begin"] == 1
        assert not issue["location"]["path"].startswith("/")
    assert len({issue["fingerprint"] for issue in issues}) == len(issues)
    by_check = {(issue["location"]["path"], issue["check_name"]): issue["severity"] for issue in issues}
    assert by_check[("models/cnn_untrained.keras", "bninspect/BN001")] == "critical"
    assert by_check[("models/twice.h5", "bninspect/BN008")] == "minor"
    assert by_check[("models/bn_last_layer.keras", "bninspect/BN011")] == "info"
    assert by_check[("models/broken.h5", "bninspect/unreadable-model")] == "blocker"


def test_names_from_files_are_escaped_in_the_baseline_outputs(repo: Path):
    hostile = repo / "models" / "evil\x1b[31m\nname.h5"
    write_model(hostile, trained_arrays(1), bn_config={"momentum": 0.1}, name="bn\x07\r")
    run("check", "--update-baseline", "baseline.json", "models")
    assert json.loads((repo / "baseline.json").read_text(encoding="ascii"))  # \u escapes, valid JSON
    hostile.unlink()  # its entry is now fixed: named from the baseline file in every output
    for output_format in ("text", "github"):
        result = run("check", "--baseline", "baseline.json", "models", "--format", output_format)
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\r" not in result.stdout
        fixed = [line for line in result.stdout.splitlines() if "evil" in line]
        assert fixed and all("BN008" in line for line in fixed)  # one line each: the newline is escaped
    issues = json.loads(run("check", "models", "--format", "gitlab").stdout)
    assert len({issue["fingerprint"] for issue in issues}) == len(issues)
