"""`[tool.bninspect.per-file-ignores]` and `check --show-suppressed` on real model files: globs on
the model path relative to the config file, what was suppressed and by which entry, and entries
that suppressed nothing in the run (unused) or whose glob matched no model of the run (out of
scope, not unused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from check_model_files import run

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"

CONFIG = """\
[tool.bninspect]
[tool.bninspect.per-file-ignores]
"models/legacy/*" = ["BN001", "BN003"]
"head.keras" = ["BN010"]
"elsewhere/*" = ["BN001"]
[tool.bninspect.per-layer-ignores]
"bn_out" = ["BN011"]
"""


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An untrained legacy model, a BN-last head and a healthy model under one pyproject.toml."""
    (tmp_path / "models" / "legacy").mkdir(parents=True)
    (tmp_path / "models" / "current").mkdir()
    shutil.copy(SAMPLES / "cnn_untrained.keras", tmp_path / "models" / "legacy" / "old.keras")
    shutil.copy(SAMPLES / "bn_last_layer.keras", tmp_path / "models" / "current" / "head.keras")
    shutil.copy(SAMPLES / "cnn_trained.keras", tmp_path / "models" / "current" / "good.keras")
    (tmp_path / "pyproject.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _suppressions(*args) -> tuple[int, dict]:
    result = run("check", *args, "--show-suppressed", "--format", "json")
    document = json.loads(result.stdout)
    return result.exit_code, document


def test_per_file_ignores_suppress_by_path_and_by_file_name(repo: Path):
    code, document = _suppressions("models")
    assert code == 0
    assert all(not model["findings"] for model in document["models"])
    suppressed = {(item["source"], item["layer"], item["code"], item["suppressed_by"])
                  for item in document["suppressions"]["suppressed"]}
    assert suppressed == {
        ("models/legacy/old.keras", "bn1", "BN001", "per-file-ignores 'models/legacy/*'"),
        ("models/legacy/old.keras", "bn2", "BN001", "per-file-ignores 'models/legacy/*'"),
        ("models/current/head.keras", "bn_out", "BN010", "per-file-ignores 'head.keras'"),
        ("models/current/head.keras", "bn_out", "BN011", "per-layer-ignores 'bn_out'")}
    # Without --show-suppressed the JSON document is as before.
    plain = json.loads(run("check", "models", "--format", "json").stdout)
    assert "suppressions" not in plain


def test_globs_are_relative_to_the_config_file(repo: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(repo / "models" / "legacy")
    assert run("check", ".").exit_code == 0  # models/legacy/* still matches from here
    other = repo / "other"
    other.mkdir()
    shutil.copy(SAMPLES / "cnn_untrained.keras", other / "old.keras")
    monkeypatch.chdir(repo)
    result = run("check", "other")
    assert result.exit_code == 1 and "BN001" in result.stdout


def test_unused_entries_are_reported_and_out_of_scope_ones_are_not(repo: Path):
    _, document = _suppressions("models")
    entries = {(entry["kind"], entry["pattern"], entry["code"]): entry for entry in document["suppressions"]["entries"]}
    assert entries[("per-file-ignores", "models/legacy/*", "BN003")]["unused"] is True
    assert entries[("per-file-ignores", "models/legacy/*", "BN001")]["suppressed"] == 2
    assert entries[("per-file-ignores", "elsewhere/*", "BN001")]["in_scope"] is False
    assert entries[("per-file-ignores", "elsewhere/*", "BN001")]["unused"] is False
    text = run("check", "models", "--show-suppressed").stdout
    assert "suppressed: 4 findings" in text
    assert "models/legacy/old.keras  bn1  BN001 untrained-moving-stats  by per-file-ignores 'models/legacy/*'" in text
    assert "unused per-file-ignores 'models/legacy/*' = BN003: suppressed nothing in this run" in text
    assert "elsewhere" not in text
    # A run over one model: the legacy entries are out of scope there, not unused.
    _, single = _suppressions("models/current/head.keras")
    assert [entry["pattern"] for entry in single["suppressions"]["entries"] if entry["unused"]] == []


def test_a_bad_per_file_ignores_table_is_one_line_and_exit_2(repo: Path):
    (repo / "pyproject.toml").write_text('[tool.bninspect.per-file-ignores]\n"x/*" = ["BN999"]\n')
    result = run("check", "models")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "per-file-ignores 'x/*'" in result.stderr and "BN999" in result.stderr
