"""The notebook API: `bninspect.inspect(path_or_model, data=None)` and `bninspect.check(...)`.

The fast tests use small legacy .h5 files written with h5py alone; the slow ones use real Keras 3
and tf-keras models, in memory and saved, and a CNN really trained on synthetic data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import bninspect
from bn_model_zoo import color_data

REPO = Path(__file__).resolve().parents[1]


def _model_files():
    """tests/check/check_model_files.py (h5py-only model writer), whatever pytest put on sys.path."""
    spec = importlib.util.spec_from_file_location("_api_check_model_files", REPO / "tests" / "check" / "check_model_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


files = _model_files()


@pytest.fixture(autouse=True)
def _no_project_config(tmp_path, monkeypatch):
    # Run from an empty directory, so no pyproject.toml above the test changes the settings.
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


@pytest.fixture
def synthetic(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "models"
    folder.mkdir()
    return {"healthy": files.write_model(folder / "healthy.h5", files.trained_arrays(1)),
            "untrained": files.write_model(folder / "untrained.h5", files.untrained_arrays()),
            "momentum": files.write_model(folder / "momentum.h5", files.trained_arrays(2), bn_config={"momentum": 0.1}),
            "folder": folder}


def _keys(findings) -> list[tuple[str, str | None, str]]:
    return sorted((finding.code, finding.layer, finding.severity.value) for finding in findings)


def _cli_json(*args) -> dict:
    from bninspect.cli import app

    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


# --- fast: paths, read statically ------------------------------------------------------------------

def test_inspect_path_returns_a_model_report(synthetic):
    report = bninspect.inspect(synthetic["untrained"])
    assert isinstance(report, bninspect.ModelReport)
    assert [layer.path for layer in report.bn_layers] == ["bn"]
    assert _keys(report.findings) == [("BN001", "bn", "error")]
    (finding,) = report.findings
    assert finding.source == str(synthetic["untrained"]) and "moving mean is exactly 0" in finding.message
    assert finding.severity == bninspect.Severity.ERROR == "error"


def test_inspect_accepts_str_and_pathlike(synthetic):
    assert bninspect.inspect(str(synthetic["momentum"])).findings == bninspect.inspect(synthetic["momentum"]).findings


@pytest.mark.parametrize("kind", ["untrained", "momentum", "healthy"])
def test_to_dict_is_the_json_document_model_entry(synthetic, kind):
    report = bninspect.inspect(synthetic[kind])
    document = _cli_json("check", synthetic[kind], "--format", "json")
    assert json.loads(json.dumps(report.to_dict())) == document["models"][0]


def test_report_renders_in_jupyter_and_rich(synthetic):
    from rich.console import Console

    report = bninspect.inspect(synthetic["untrained"])
    html = report._repr_html_()
    assert "BN001" in html and "bn" in html
    console = Console(record=True, width=160, color_system=None)
    console.print(report)
    assert "BN001" in console.export_text()


def test_check_flattens_findings_over_files_and_directories(synthetic):
    findings = bninspect.check(synthetic["folder"])
    assert isinstance(findings, tuple)
    assert sorted((Path(f.source).name, f.code) for f in findings) == [("momentum.h5", "BN008"),
                                                                      ("untrained.h5", "BN001")]
    assert bninspect.check(synthetic["healthy"]) == ()
    listed = bninspect.check([synthetic["untrained"], str(synthetic["momentum"])])
    assert [f.code for f in listed] == ["BN001", "BN008"]


def test_select_and_ignore(synthetic):
    assert bninspect.check(synthetic["folder"], select=["BN001"]) == bninspect.check(synthetic["untrained"])
    assert [f.code for f in bninspect.check(synthetic["folder"], ignore="BN001")] == ["BN008"]
    assert bninspect.inspect(synthetic["untrained"], ignore=["untrained-moving-stats"]).findings == ()


def test_nearest_pyproject_settings_apply_like_the_cli(synthetic, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.bninspect]\nignore = ["BN008"]\n\n'
                                            '[tool.bninspect.severity]\nBN001 = "warning"\n')
    monkeypatch.chdir(project / "sub")
    assert _keys(bninspect.check(synthetic["folder"])) == [("BN001", "bn", "warning")]
    # An explicit Settings object replaces the config; select/ignore go on top of either.
    assert _keys(bninspect.check(synthetic["folder"], settings=bninspect.Settings())) == [
        ("BN001", "bn", "error"), ("BN008", "bn", "warning")]
    assert bninspect.check(synthetic["folder"], ignore="BN001") == ()


def test_explicit_config_file(synthetic, tmp_path):
    config = tmp_path / "bninspect.toml"
    config.write_text('select = ["BN008"]\n')
    assert [f.code for f in bninspect.check(synthetic["folder"], config=config)] == ["BN008"]


def test_bad_settings_raise_value_error(synthetic):
    with pytest.raises(ValueError, match="unknown rule"):
        bninspect.inspect(synthetic["healthy"], select=["BN999"])


def test_unreadable_single_path_raises_model_read_error(tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    for call in (bninspect.inspect, bninspect.check):
        with pytest.raises(bninspect.ModelReadError) as raised:
            call(broken)
        assert raised.value.source == str(broken)
    with pytest.raises(bninspect.ModelReadError, match="no such file"):
        bninspect.inspect(tmp_path / "missing.keras")


def test_unreadable_in_a_list_raises_by_default_or_is_skipped_with_a_warning(synthetic, tmp_path):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04")
    with pytest.raises(bninspect.ModelReadError, match="broken.keras"):
        bninspect.check([synthetic["untrained"], broken, synthetic["momentum"]])
    with pytest.warns(UserWarning, match="broken.keras"):
        findings = bninspect.check([synthetic["untrained"], broken, synthetic["momentum"]], unreadable="skip")
    assert [f.code for f in findings] == ["BN001", "BN008"]
    with pytest.raises(ValueError):
        bninspect.check(synthetic["healthy"], unreadable="ignore")


def test_directory_without_models_never_passes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(bninspect.ModelReadError, match="no model files"):
        bninspect.check(empty)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bninspect.check(empty, unreadable="skip") == ()


def test_not_a_model_is_a_type_error():
    with pytest.raises(TypeError, match="Keras model"):
        bninspect.inspect(42)
    with pytest.raises(TypeError):
        bninspect.check([object()])


def test_lazy_exports():
    from bninspect.config import Settings
    from bninspect.findings import Finding, Severity
    from bninspect.model import ModelReadError
    from bninspect.report import ModelReport

    assert (bninspect.ModelReport, bninspect.Finding, bninspect.Severity, bninspect.Settings,
            bninspect.ModelReadError) == (ModelReport, Finding, Severity, Settings, ModelReadError)
    with pytest.raises(AttributeError):
        bninspect.no_such_name  # noqa: B018
    assert bninspect.inspect.__doc__ and bninspect.check.__doc__


def test_import_and_inspect_a_path_do_not_import_tensorflow(synthetic):
    code = ("import sys\n"
            "heavy = ('tensorflow', 'keras', 'tf_keras', 'h5py', 'numpy', 'typer', 'rich')\n"
            "import bninspect\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "report = bninspect.inspect(sys.argv[1])\n"
            "findings = bninspect.check(sys.argv[2])\n"
            "print([f.code for f in report.findings], len(findings))\n"
            "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code, str(synthetic["untrained"]), str(synthetic["folder"])],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    after_import, found, after_inspect = result.stdout.strip().splitlines()
    assert after_import == "[]"
    assert found == "['BN001'] 2"
    assert after_inspect == "[]"


# --- slow: in-memory models, and the dynamic analysis ------------------------------------------------

def _static_keys(report) -> list[tuple[str, str | None, str, str]]:
    return sorted((f.code, f.layer, f.severity.value, f.message) for f in report.findings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["keras", "legacy_h5"])
def test_keras3_in_memory_model_finds_what_its_saved_files_do(keras3_bn_model, keras3_bn_files, kind):
    live = bninspect.inspect(keras3_bn_model)
    saved = bninspect.inspect(keras3_bn_files[kind])
    assert live.source == "<in-memory model 'zoo'>"
    assert live.findings, "the zoo model has BN findings (untrained-looking output BN, axis mismatch, ...)"
    assert _keys(live.findings) == _keys(saved.findings)
    assert _static_keys(live) == _static_keys(saved)
    assert all(finding.source == live.source for finding in live.findings)
    assert [layer.path for layer in live.bn_layers] == [layer.path for layer in saved.bn_layers]


@pytest.mark.slow
def test_keras3_in_memory_to_dict_matches_the_saved_files_json_entry(keras3_bn_model, keras3_bn_files):
    live = json.loads(json.dumps(bninspect.inspect(keras3_bn_model).to_dict()))
    entry = _cli_json("check", keras3_bn_files["keras"], "--format", "json")["models"][0]
    assert set(live) == set(entry)
    assert live["format"] == "in-memory" and live["error"] is None
    assert live["keras_version"] == entry["keras_version"]
    assert live["bn_layers"] == entry["bn_layers"]
    strip = [{key: value for key, value in finding.items() if key != "source"} for finding in live["findings"]]
    assert strip == [{key: value for key, value in finding.items() if key != "source"} for finding in entry["findings"]]


@pytest.mark.slow
def test_tf_keras_in_memory_model_finds_what_its_h5_file_does(tf_keras_bn_model, tf_keras_bn_files):
    import tf_keras

    live = bninspect.inspect(tf_keras_bn_model)
    saved = bninspect.inspect(tf_keras_bn_files["h5"])
    assert live.to_dict()["keras_version"] == tf_keras.__version__
    assert live.findings
    assert _keys(live.findings) == _keys(saved.findings)
    assert bninspect.check(tf_keras_bn_model, select="BN010") == tuple(
        f for f in live.findings if f.code == "BN010")


@pytest.mark.slow
def test_unbuilt_in_memory_model_is_a_model_read_error():
    import keras

    model = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()], name="lazy")
    with pytest.raises(bninspect.ModelReadError, match="lazy"):
        bninspect.inspect(model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN trained long enough (momentum 0.9) for its moving statistics to fit [0, 1] data."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(3)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((16, 16, 3), name="image"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1"),
        layers.BatchNormalization(momentum=0.9, name="bn1"),
        layers.ReLU(name="relu1"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(3, activation="softmax", name="head"),
    ], name="trained_cnn")
    x, y = color_data(512, seed=1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    folder = tmp_path_factory.mktemp("api_trained")
    model.save(folder / "trained.keras")
    held, _ = color_data(256, seed=2)
    np.save(folder / "held.npy", held)
    return {"model": model, "path": folder / "trained.keras", "held": held, "held_npy": folder / "held.npy"}


@pytest.mark.slow
def test_inspect_with_data_in_the_right_scale_reports_no_drift(trained):
    report = bninspect.inspect(trained["model"], data=trained["held"])
    assert "BN101" not in {f.code for f in report.findings}, report.findings
    probe = report.to_dict()["probe"]
    assert probe["samples"] == 256 and [layer["path"] for layer in probe["layers"]] == ["bn1"]


@pytest.mark.slow
def test_inspect_in_memory_model_with_pixels_0_255_reports_bn101(trained):
    report = bninspect.inspect(trained["model"], data=trained["held"] * 255)
    drift = [f for f in report.findings if f.code == "BN101"]
    assert [(f.layer, f.severity.value) for f in drift] == [("bn1", "warning")]
    assert drift[0].source == report.source == "<in-memory model 'trained_cnn'>"
    entry = json.loads(json.dumps(report.to_dict()))  # JSON-serialisable, with the probe's numbers
    assert entry["probe"]["layers"][0]["findings"] == sorted({f.code for f in report.findings if f.layer == "bn1"})
    assert entry["findings"] == [f.to_dict() for f in report.findings]
    # rescale undoes it
    fixed = bninspect.inspect(trained["model"], data=trained["held"] * 255, rescale="1/255")
    assert "BN101" not in {f.code for f in fixed.findings}


@pytest.mark.slow
def test_inspect_path_with_npy_data_merges_static_and_dynamic_findings(trained, tmp_path):
    scaled = tmp_path / "held_255.npy"
    np.save(scaled, np.load(trained["held_npy"]) * 255)
    report = bninspect.inspect(trained["path"], data=scaled, batch_size=64, limit=128)
    assert report.source == str(trained["path"]) and report.to_dict()["format"] == "keras-v3"
    assert "BN101" in {f.code for f in report.findings}
    assert all(f.source == str(trained["path"]) for f in report.findings)
    probe = report.to_dict()["probe"]
    assert probe["samples"] == 128 and probe["batch_size"] == 64
    # check() over a path and an in-memory model, with the same data for both
    findings = bninspect.check([trained["path"], trained["model"]], data=trained["held"] * 255, select="BN101")
    assert sorted(f.source for f in findings) == sorted([str(trained["path"]), "<in-memory model 'trained_cnn'>"])
    # the settings' selection applies to the dynamic findings too
    assert bninspect.check(trained["path"], data=scaled, ignore="BN1") == ()


@pytest.mark.slow
def test_data_that_does_not_fit_raises_a_one_line_error(trained):
    from bninspect.commands.common import UsageProblem

    with pytest.raises(UsageProblem, match="shape|input"):
        bninspect.inspect(trained["model"], data=np.zeros((4, 8, 8, 3), np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bninspect.check([trained["path"]], data=np.zeros((4, 8, 8, 3), np.float32), unreadable="skip") == ()
    assert any("trained.keras" in str(warning.message) for warning in caught)
