"""Settings from [tool.bninspect]: discovery, validation, and how command-line flags layer on top."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bninspect.cli import app
from bninspect.config import Settings, SettingsError, Thresholds, find_pyproject, load_settings, resolve_selector
from bninspect.findings import Finding, Severity

FULL_CONFIG = """
[project]
name = "demo"

[tool.bninspect]
select = ["BN0"]
ignore = ["zero-gamma", "BN013"]
strict = true

[tool.bninspect.severity]
BN013 = "warning"
redundant-bias = "error"

[tool.bninspect.per-layer-ignores]
"head/*" = ["BN010", "BN001"]

[tool.bninspect.thresholds]
extreme-scale = 500
min_momentum = 0.8
drift-mean-shift = 0.25
"""


def _write(directory: Path, text: str, name: str = "pyproject.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_defaults_without_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings == Settings()
    assert settings.fail_severity is Severity.ERROR
    assert settings.thresholds.extreme_scale == 1e3 and settings.thresholds.min_momentum == 0.5


def test_full_config_from_nearest_pyproject_above_cwd(tmp_path, monkeypatch):
    config = _write(tmp_path, FULL_CONFIG)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    settings = load_settings()
    assert settings.config_file == str(config)
    assert settings.select == frozenset(f"BN0{n:02d}" for n in range(1, 20))
    assert settings.ignore == {"BN006", "BN013"}
    assert settings.strict is True and settings.fail_severity is Severity.WARNING
    assert dict(settings.severity_overrides) == {"BN011": Severity.ERROR, "BN013": Severity.WARNING}
    assert settings.per_layer_ignores == (("head/*", frozenset({"BN010", "BN001"})),)
    assert settings.thresholds == Thresholds(extreme_scale=500.0, min_momentum=0.8, drift_mean_shift=0.25)
    assert not settings.enabled("BN101") and not settings.enabled("BN006") and settings.enabled("BN001")


def test_nearest_pyproject_without_table_is_skipped(tmp_path, monkeypatch):
    _write(tmp_path, "[tool.bninspect]\nignore = ['BN013']\n")
    inner = tmp_path / "pkg"
    inner.mkdir()
    _write(inner, "[project]\nname = 'x'\n")
    monkeypatch.chdir(inner)
    assert find_pyproject() == tmp_path / "pyproject.toml"
    assert load_settings().ignore == {"BN013"}


def test_explicit_config_file_bninspect_toml(tmp_path):
    path = _write(tmp_path, "ignore = ['BN001']\n[thresholds]\nzero-gamma = 0.01\n", "bninspect.toml")
    settings = load_settings(path)
    assert settings.ignore == {"BN001"} and settings.thresholds.zero_gamma == 0.01


@pytest.mark.parametrize(("text", "message"), [
    ("[tool.bninspect]\nignore = ['BN999']\n", "unknown rule 'BN999'"),
    ("[tool.bninspect]\nselect = 'BN00x'\n", "unknown rule 'BN00x'"),
    ("[tool.bninspect]\nstrict = 'yes'\n", "strict: expected true or false"),
    ("[tool.bninspect]\nseverity = { BN001 = 'fatal' }\n", "severity must be error, warning or info"),
    ("[tool.bninspect]\nthresholds = { extreme-scale = -1 }\n", "expected a finite number >= 0"),
    ("[tool.bninspect]\nthresholds = { extreme = 1 }\n", "unknown threshold 'extreme'"),
    ("[tool.bninspect]\nthresholds = { min-momentum = 2 }\n", "between 0 and 1"),
    ("[tool.bninspect]\nselcet = ['BN001']\n", "unknown key 'selcet'"),
    ("[tool.bninspect]\nper-layer-ignores = { 'head/*' = 'BN1O1' }\n", "unknown rule 'BN1O1'"),
    ("[tool.bninspect\n", "not valid TOML"),
])
def test_bad_config_is_one_clear_error(tmp_path, monkeypatch, text, message):
    _write(tmp_path, text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("*", r"\*")) as error:
        load_settings()
    assert "pyproject.toml" in str(error.value) and "\n" not in str(error.value)


def test_bad_config_exits_2_with_one_line(tmp_path, monkeypatch):
    _write(tmp_path, "[tool.bninspect]\nignore = ['BN999']\n")
    monkeypatch.chdir(tmp_path)
    for command in (["check", "x.h5"], ["inspect", "x.h5"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert result.output.count("\n") == 1 and "unknown rule 'BN999'" in result.output


def test_missing_explicit_config_file_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["check", "x.h5", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "no such config file" in result.output


def test_command_line_select_replaces_config_and_ignore_adds():
    configured = Settings(select=frozenset({"BN001", "BN002"}), ignore=frozenset({"BN002"}))
    assert configured.with_overrides(ignore=["BN001"]).enabled("BN001") is False
    assert configured.with_overrides(ignore=["BN001"]).select == {"BN001", "BN002"}
    selected = configured.with_overrides(select=["BN002,BN003"])
    assert selected.enabled("BN002") and selected.enabled("BN003") and not selected.enabled("BN001")
    assert configured.with_overrides(strict=True).strict is True
    assert Settings(strict=True).with_overrides(strict=None).strict is True
    with pytest.raises(SettingsError, match="--ignore: unknown rule 'nope'"):
        configured.with_overrides(ignore=["nope"])


def test_selectors_codes_names_prefixes():
    assert resolve_selector("bn001") == {"BN001"}
    assert resolve_selector("axis-mismatch") == {"BN009"}
    assert resolve_selector("BN10") == {"BN101", "BN102", "BN103", "BN104"}
    assert len(resolve_selector("ALL")) == 23
    with pytest.raises(SettingsError):
        resolve_selector("BN2")


def test_apply_filters_and_overrides_findings_for_probes_too():
    settings = Settings(ignore=frozenset({"BN104"}), severity_overrides=(("BN101", Severity.ERROR),),
                        per_layer_ignores=(("stem/*", frozenset({"BN102"})),))
    findings = [Finding("BN101", "stats-drift", Severity.WARNING, "m.h5", "bn", "drift", "hint"),
                Finding("BN104", "dead-channel", Severity.INFO, "m.h5", "bn", "dead", "hint"),
                Finding("BN102", "train-inference-gap", Severity.WARNING, "m.h5", "stem/bn", "gap", "hint"),
                Finding("BN102", "train-inference-gap", Severity.WARNING, "m.h5", None, "gap", "hint")]
    kept = settings.apply(findings)
    assert [(f.code, f.severity, f.layer) for f in kept] == [("BN101", Severity.ERROR, "bn"),
                                                             ("BN102", Severity.WARNING, None)]


def test_settings_are_picklable_for_worker_processes(tmp_path):
    settings = load_settings(_write(tmp_path, FULL_CONFIG))
    assert pickle.loads(pickle.dumps(settings)) == settings


def test_inspect_passes_settings_through(tmp_path, monkeypatch):
    from bninspect.checking import inspect_path
    from rule_case_specs import BN_DEFAULT_CONFIG

    import h5py
    import numpy as np

    path = tmp_path / "m.h5"
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 2], "name": "in"}},
        {"class_name": "BatchNormalization", "config": {"name": "bn", **BN_DEFAULT_CONFIG}}]}}
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        group = handle.create_group("model_weights").create_group("bn")
        for key, value in (("moving_mean", np.zeros(2)), ("moving_variance", np.ones(2))):
            group.create_dataset(f"bn/{key}:0", data=value)
        group.attrs["weight_names"] = [b"bn/moving_mean:0", b"bn/moving_variance:0"]
    assert {f.code for f in inspect_path(path).findings} == {"BN001", "BN010"}
    assert {f.code for f in inspect_path(path, Settings(ignore=frozenset({"BN010"}))).findings} == {"BN001"}
    _write(tmp_path, "[tool.bninspect]\nignore = ['bn-output-layer']\n[tool.bninspect.severity]\nBN001 = 'info'\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)["models"][0]["findings"]
    assert [(f["code"], f["severity"]) for f in findings] == [("BN001", "info")]
