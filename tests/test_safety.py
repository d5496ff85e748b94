"""Hostile input: code in model files is never run, input files are never written, every bad file
gets a one-line reason, exit code 2 and no traceback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bninspect import loaders
from bninspect.model import ModelReadError

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bninspect", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    # `check` reports an unreadable file inside its report (stdout); other commands on stderr.
    for text in expected:
        assert text in result.stderr + result.stdout, (result.stdout, result.stderr)


def digest(path: Path) -> str:
    hasher = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        hasher.update(file.read_bytes())
    return hasher.hexdigest()


# --- hostile files, read statically ----------------------------------------------------------------

def _keras_archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name, content in members.items():
            out.writestr(name, content)
    return path


def _sample_members(name: str = "cnn_trained.keras") -> dict[str, bytes]:
    with zipfile.ZipFile(SAMPLES / name) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def test_huge_config_json_is_refused_before_it_is_read(tmp_path):
    members = _sample_members()
    members["config.json"] = b" " * (65 * 1024 * 1024) + members["config.json"]
    path = _keras_archive(tmp_path / "huge.keras", members)
    with pytest.raises(ModelReadError, match="config.json is .* bytes, more than"):
        loaders.load(path)


def test_deeply_nested_config_json(tmp_path):
    members = _sample_members()
    members["config.json"] = b"[" * 200_000 + b"]" * 200_000
    path = _keras_archive(tmp_path / "nested.keras", members)
    with pytest.raises(ModelReadError, match="nested too deeply"):
        loaders.load(path)


def test_keras_archive_without_config(tmp_path):
    members = _sample_members()
    del members["config.json"]
    result = run_cli("check", str(_keras_archive(tmp_path / "noconfig.keras", members)))
    assert_one_line_failure(result, "noconfig.keras", "no config.json")


def test_config_that_is_not_a_model(tmp_path):
    members = _sample_members()
    members["config.json"] = json.dumps({"class_name": "Functional", "config": {"layers": "nope"}}).encode()
    with pytest.raises(ModelReadError, match="no layer list"):
        loaders.load(_keras_archive(tmp_path / "odd.keras", members))


def _first_bn_group(handle: h5py.File) -> tuple[h5py.Group, list[str]]:
    root = handle["model_weights"]
    for name in root.attrs["layer_names"]:
        group = root[name]
        weights = [w.decode() if isinstance(w, bytes) else w for w in group.attrs["weight_names"]]
        if any(w.endswith(("moving_variance:0", "moving_variance")) for w in weights):
            return group, weights
    raise AssertionError("sample has no BN layer")


@pytest.mark.parametrize("damage, reason", [
    ("string_dtype", "expected floating point"),
    ("two_dimensional", "expected one value per channel"),
    ("shorter_gamma", "different lengths"),
    ("missing_dataset", "listed but missing"),
])
def test_hdf5_with_right_names_but_wrong_arrays(tmp_path, damage, reason):
    path = tmp_path / "damaged.h5"
    shutil.copy(SAMPLES / "cnn_trained.h5", path)
    with h5py.File(path, "r+") as handle:
        group, weights = _first_bn_group(handle)
        gamma = next(w for w in weights if w.rsplit("/", 1)[-1].startswith("gamma"))
        size = group[gamma].shape[0]
        del group[gamma]
        if damage == "string_dtype":
            group[gamma] = np.array([b"x"] * size)
        elif damage == "two_dimensional":
            group[gamma] = np.ones((size, 2), dtype="float32")
        elif damage == "shorter_gamma":
            group[gamma] = np.ones(size - 1, dtype="float32")
    with pytest.raises(ModelReadError, match=reason):
        loaders.load(path)
    assert_one_line_failure(run_cli("inspect", str(path)), str(path), reason)


def test_file_that_cannot_be_opened(tmp_path, monkeypatch):
    # Tests run as root here, where chmod 000 does not stop reading; refuse the open instead.
    path = tmp_path / "locked.h5"
    shutil.copy(SAMPLES / "cnn_trained.h5", path)
    real_open = os.open

    def refusing_open(file, *args, **kwargs):
        if Path(str(file)) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(ModelReadError, match="permission denied"):
        loaders.load(path)


def test_missing_paths_and_empty_directories(tmp_path):
    assert_one_line_failure(run_cli("inspect", str(tmp_path / "nope.h5")), "nope.h5", "no such file")
    assert_one_line_failure(run_cli("check", str(tmp_path / "nope.h5")), "nope.h5")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "notes.txt").write_text("no models here")
    assert_one_line_failure(run_cli("check", str(empty)), "empty_dir")


def test_check_reports_every_file_of_a_mixed_directory(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(SAMPLES / "cnn_trained.keras", folder / "good.keras")
    (folder / "truncated.h5").write_bytes((SAMPLES / "cnn_trained.h5").read_bytes()[:3000])
    (folder / "text.keras").write_text("not a model")
    result = run_cli("check", str(folder), "--format", "json")
    assert result.returncode == 2
    document = json.loads(result.stdout)
    by_name = {Path(model["path"]).name: model for model in document["models"]}
    assert set(by_name) == {"good.keras", "truncated.h5", "text.keras"}
    assert by_name["good.keras"]["error"] is None and by_name["good.keras"]["bn_layers"]
    assert by_name["truncated.h5"]["error"] and by_name["text.keras"]["error"]
    assert document["summary"]["unreadable"] == 2


# --- code in model files is never run --------------------------------------------------------------

def _lambda_models(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A Keras 3 and a tf-keras model with a Lambda that writes a marker file whenever it runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tf_keras

    marker = tmp_path / "lambda_ran"
    body = f"lambda x: (open({str(marker)!r}, 'w').write('ran'), x)[1]"
    paths = []
    for name, api in (("keras3", keras), ("tf_keras", tf_keras)):
        inputs = api.Input((4,))
        x = api.layers.Lambda(eval(body), name="trap")(inputs)  # noqa: S307 - the test's own code
        x = api.layers.BatchNormalization()(x)
        model = api.Model(inputs, x)
        if name == "keras3":
            model.save(tmp_path / "lambda.keras")
            paths.append(tmp_path / "lambda.keras")
        model.save(tmp_path / f"lambda_{name}.h5")
        paths.append(tmp_path / f"lambda_{name}.h5")
    marker.unlink()  # building the models ran the Lambda; from here on nothing may
    return marker, paths


@pytest.mark.slow
def test_static_commands_never_run_lambda_code(tmp_path):
    marker, paths = _lambda_models(tmp_path)
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).normal(size=(16, 4)).astype("float32"))
    for path in paths:
        for args in (["inspect", str(path)], ["check", str(path), "--format", "json"],
                     ["diff", str(path), str(path)], ["rules"]):
            result = run_cli(*args)
            assert result.returncode in (0, 1), (args, result.stderr)
            assert not marker.exists(), f"{args} ran the Lambda"
        check = json.loads(run_cli("check", str(path), "--format", "json").stdout)
        assert "BN017" in {finding["code"] for finding in check["models"][0]["findings"]}
        refused = run_cli("probe", str(path), "--data", str(data))
        assert_one_line_failure(refused, "--unsafe")
        assert not marker.exists(), "probe without --unsafe ran the Lambda"
    # The trap is real: loading the model with Keras, unsafely, does run it.
    import keras

    keras.config.enable_unsafe_deserialization()
    keras.models.load_model(paths[0]).predict(np.zeros((1, 4), dtype="float32"), verbose=0)
    assert marker.exists()


# --- input files are never written ---------------------------------------------------------------

@pytest.mark.slow
def test_no_command_writes_to_its_inputs(tmp_path):
    inputs = [SAMPLES / name for name in ("cnn_trained.keras", "cnn_untrained.h5", "cnn_trained.weights.h5",
                                          "cnn_trained_tf2.h5", "cnn_trained_tf2_weights.h5",
                                          "cnn_trained_tf2_savedmodel", "cnn_data.npy")]
    before = {path: digest(path) for path in inputs}
    mtimes = {path: path.stat().st_mtime_ns for path in inputs}
    for path in inputs[:-1]:
        run_cli("inspect", str(path))
        run_cli("inspect", str(path), "--format", "json")
    run_cli("check", *[str(path) for path in inputs[:-1]], "--format", "sarif")
    run_cli("diff", str(inputs[0]), str(inputs[1]))
    run_cli("probe", str(inputs[0]), "--data", str(inputs[-1]))
    run_cli("recalibrate", str(inputs[1]), "--data", str(inputs[-1]), "-o", str(tmp_path / "out.h5"))
    assert {path: digest(path) for path in inputs} == before
    assert {path: path.stat().st_mtime_ns for path in inputs} == mtimes
