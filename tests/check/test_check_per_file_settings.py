"""`[tool.bninspect.per-file-severity]` and `[tool.bninspect.per-file-strict]` on real model files:
the same globs as per-file-ignores (relative to the config file), the last matching entry wins,
the command line's --strict/--no-strict wins over both, and invalid entries are one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from check_model_files import run

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same untrained model (BN001 errors) and BN-last head (BN010 warning) under legacy/ and
    under current/."""
    for folder in ("legacy", "current"):
        (tmp_path / folder).mkdir()
        shutil.copy(SAMPLES / "cnn_untrained.keras", tmp_path / folder / "untrained.keras")
        shutil.copy(SAMPLES / "bn_last_layer.keras", tmp_path / folder / "head.keras")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _configure(repo: Path, text: str) -> None:
    (repo / "pyproject.toml").write_text("[tool.bninspect]\n" + text)


def _check(*args: str) -> tuple[int, dict[tuple[str, str], set[str]]]:
    """The exit code and, per (model, code), the severities reported in the JSON document."""
    result = run("check", *args, "--format", "json")
    severities: dict[tuple[str, str], set[str]] = {}
    for model in json.loads(result.stdout)["models"]:
        for finding in model["findings"]:
            severities.setdefault((model["path"], finding["code"]), set()).add(finding["severity"])
    return result.exit_code, severities


def test_per_file_severity_relaxes_only_the_matching_models(repo: Path):
    _configure(repo, '[tool.bninspect.per-file-severity]\n"legacy/**" = { BN001 = "warning" }\n')
    code, severities = _check("legacy")
    assert code == 0
    assert severities[("legacy/untrained.keras", "BN001")] == {"warning"}
    code, severities = _check("legacy", "current")
    assert code == 1  # the identical model elsewhere still fails
    assert severities[("current/untrained.keras", "BN001")] == {"error"}


def test_per_file_severity_globs_are_relative_to_the_config_file(repo: Path, monkeypatch: pytest.MonkeyPatch):
    _configure(repo, '[tool.bninspect.per-file-severity]\n"legacy/*" = { BN001 = "warning" }\n')
    monkeypatch.chdir(repo / "legacy")
    assert run("check", "untrained.keras").exit_code == 0
    monkeypatch.chdir(repo / "current")
    assert run("check", "untrained.keras").exit_code == 1


def test_the_last_matching_per_file_severity_entry_wins(repo: Path):
    _configure(repo, '[tool.bninspect.severity]\nBN010 = "error"\n'
                     '[tool.bninspect.per-file-severity]\n'
                     '"*.keras" = { BN010 = "info" }\n"legacy/*" = { BN010 = "warning" }\n')
    code, severities = _check("legacy", "current")
    assert severities[("legacy/head.keras", "BN010")] == {"warning"}
    assert severities[("current/head.keras", "BN010")] == {"info"}
    assert code == 1  # BN001 is still an error in both


def test_per_file_strict_false_lets_warnings_pass_for_matching_models_only(repo: Path):
    _configure(repo, 'strict = true\n[tool.bninspect.per-file-strict]\n"legacy/*" = false\n')
    assert _check("legacy/head.keras")[0] == 0
    assert _check("current/head.keras")[0] == 1
    assert _check("legacy/head.keras", "current/head.keras")[0] == 1
    # --strict on the command line decides for every model, as it does over the global `strict`.
    assert _check("legacy/head.keras", "--strict")[0] == 1
    assert _check("current/head.keras", "--no-strict")[0] == 0


def test_per_file_strict_true_fails_warnings_in_matching_models(repo: Path):
    _configure(repo, '[tool.bninspect.per-file-strict]\n"current/*" = true\n')
    assert _check("legacy/head.keras")[0] == 0
    assert _check("current/head.keras")[0] == 1


@pytest.mark.parametrize("entry, message", [
    ('[tool.bninspect.per-file-severity]\n"legacy/*" = { BN999 = "warning" }\n', "unknown rule 'BN999'"),
    ('[tool.bninspect.per-file-severity]\n"legacy/*" = { BN001 = "fatal" }\n', "severity must be"),
    ('[tool.bninspect.per-file-severity]\n"legacy/*" = "warning"\n', "must be a table"),
    ('[tool.bninspect.per-file-strict]\n"legacy/*" = "no"\n', "expected true or false"),
])
def test_invalid_per_file_entries_exit_2_with_one_line(repo: Path, entry: str, message: str):
    _configure(repo, entry)
    result = run("check", "legacy")
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_text_and_junit_fail_what_the_exit_status_fails(repo: Path):
    _configure(repo, '[tool.bninspect.per-file-strict]\n"current/*" = true\n')
    text = run("check", "legacy/head.keras", "current/head.keras")
    assert text.exit_code == 1
    assert "(errors fail, per-file-strict elsewhere) FAILED" in text.stdout
    junit = run("check", "legacy/head.keras", "current/head.keras", "--format", "junit").stdout
    assert junit.count("<failure") == 1 and 'name="current/head.keras"' in junit
