"""`bninspect recalibrate` on real files written by Keras 3 and tf-keras, checked by reading the
result back with bninspect and with Keras, and byte by byte against the input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect import loaders
from bninspect.cli import app

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
DATA = SAMPLES / "cnn_data.npy"


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def conv1_output(model_file: Path, data: np.ndarray, tf_keras: bool = False) -> np.ndarray:
    """What the first BN layer of the sample CNN receives: conv1's output, computed by Keras."""
    if tf_keras:
        import tf_keras as K
    else:
        import keras as K
    model = K.models.load_model(str(model_file), compile=False)
    conv = model.get_layer("conv1")
    return np.asarray(K.Model(model.inputs, conv.output).predict(data, verbose=0), np.float64)


def bn(description, path: str):
    return next(layer for layer in description.bn_layers if layer.path == path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    for name in ("cnn_untrained.keras", "cnn_untrained.h5", "cnn_untrained_tf2.h5", "cnn_untrained.weights.h5",
                 "cnn_untrained_tf2_weights.h5", "cnn_trained.keras"):
        shutil.copy(SAMPLES / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name, tf_keras", [("cnn_untrained.keras", False), ("cnn_untrained.h5", False),
                                            ("cnn_untrained_tf2.h5", True)])
def test_first_bn_gets_the_mean_and_variance_of_its_input(work: Path, name: str, tf_keras: bool):
    source = work / name
    suffix = ".keras" if name.endswith(".keras") else ".h5"
    out = work / f"recalibrated{suffix}"
    before = digest(source)
    result = run("recalibrate", str(source), "--data", str(DATA), "-o", str(out), "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert digest(source) == before

    data = np.load(DATA)
    expected = conv1_output(source, data, tf_keras)
    written = loaders.load(str(out))
    assert written.format == loaders.load(str(source)).format
    first = bn(written, "bn1")
    np.testing.assert_allclose(first.moving_mean, expected.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(first.moving_variance, expected.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-7)
    # The second layer moved too (its input depends on batch-normalised bn1 output).
    second = bn(written, "bn2")
    assert not np.allclose(second.moving_mean, 0) and not np.allclose(second.moving_variance, 1)

    # Keras loads the new file, and it holds what bninspect reads.
    if tf_keras:
        import tf_keras as K
    else:
        import keras as K
    reloaded = K.models.load_model(str(out), compile=False)
    np.testing.assert_allclose(reloaded.get_layer("bn1").moving_mean.numpy(), first.moving_mean, rtol=1e-6)

    check = run("check", str(out), "--format", "json")
    assert check.exit_code == 0, check.output
    codes = {finding["code"] for finding in json.loads(check.output)["models"][0]["findings"]}
    assert "BN001" not in codes


def _datasets(path: Path) -> dict[str, bytes]:
    found = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            found[name] = item[()].tobytes()

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found


def test_only_the_moving_statistics_change(work: Path):
    source, out = work / "cnn_untrained_tf2.h5", work / "out.h5"
    assert run("recalibrate", str(source), "--data", str(DATA), "-o", str(out)).exit_code == 0
    before, after = _datasets(source), _datasets(out)
    assert before.keys() == after.keys()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {f"model_weights/{layer}/{layer}/{array}:0" for layer in ("bn1", "bn2")
                       for array in ("moving_mean", "moving_variance")}
    with h5py.File(source, "r") as a, h5py.File(out, "r") as b:
        assert a.attrs["model_config"] == b.attrs["model_config"]
        assert a.attrs["keras_version"] == b.attrs["keras_version"]

    diff = run("diff", str(source), str(out), "--format", "json")
    layers = {layer["path"]: layer for layer in json.loads(diff.output)["layers"]}
    assert {layer["status"] for layer in layers.values()} == {"changed"}


def test_keras_archive_keeps_its_other_members(work: Path, tmp_path: Path):
    import zipfile

    source, out = work / "cnn_untrained.keras", work / "out.keras"
    assert run("recalibrate", str(source), "--data", str(DATA), "-o", str(out)).exit_code == 0
    with zipfile.ZipFile(source) as a, zipfile.ZipFile(out) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "model.weights.h5":
                assert a.read(name) == b.read(name), name


def test_layers_pattern_recalibrates_only_the_matching_layers(work: Path):
    source, out = work / "cnn_untrained.keras", work / "out.keras"
    result = run("recalibrate", str(source), "--data", str(DATA), "-o", str(out), "--layers", "bn2",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["recalibration"]
    assert [layer["path"] for layer in report["layers"]] == ["bn2"]
    assert report["kept"] == [{"path": "bn1", "reason": "not selected by --layers"}]
    written = loaders.load(str(out))
    assert np.all(bn(written, "bn1").moving_mean == 0) and np.all(bn(written, "bn1").moving_variance == 1)
    assert not np.allclose(bn(written, "bn2").moving_variance, 1)
    assert report["check"]["path"] == str(out)


def test_refuses_to_overwrite_the_input_without_in_place(work: Path):
    source = work / "cnn_untrained.keras"
    before = digest(source)
    result = run("recalibrate", str(source), "--data", str(DATA), "-o", str(source))
    assert result.exit_code == 2
    assert "--in-place" in result.output
    assert digest(source) == before

    missing_output = run("recalibrate", str(source), "--data", str(DATA))
    assert missing_output.exit_code == 2 and "-o OUT" in missing_output.output

    other_format = run("recalibrate", str(source), "--data", str(DATA), "-o", str(work / "out.h5"))
    assert other_format.exit_code == 2 and ".keras" in other_format.output

    in_place = run("recalibrate", str(source), "--data", str(DATA), "--in-place")
    assert in_place.exit_code == 0, in_place.output
    assert digest(source) != before
    assert not np.allclose(bn(loaders.load(str(source)), "bn1").moving_variance, 1)
    assert sorted(path.name for path in work.iterdir() if path.name.startswith(".")) == []


def test_weights_only_file_with_architecture(work: Path):
    for weights, out in (("cnn_untrained.weights.h5", "out.weights.h5"), ("cnn_untrained_tf2_weights.h5", "out.h5")):
        refused = run("recalibrate", str(work / weights), "--data", str(DATA), "-o", str(work / out))
        assert refused.exit_code == 2 and "--architecture" in refused.output
        architecture = work / ("cnn_untrained.keras" if weights.endswith(".weights.h5") else "cnn_untrained_tf2.h5")
        result = run("recalibrate", str(work / weights), "--data", str(DATA), "-o", str(work / out),
                     "--architecture", str(architecture))
        assert result.exit_code == 0, result.output
        written = loaders.load(str(work / out))
        assert written.format == loaders.load(str(work / weights)).format
        expected = conv1_output(architecture, np.load(DATA), tf_keras="tf2" in weights)
        np.testing.assert_allclose(bn(written, "bn1").moving_mean, expected.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_savedmodel_and_bad_data_are_one_line_errors(tmp_path: Path):
    savedmodel = run("recalibrate", str(SAMPLES / "cnn_trained_tf2_savedmodel"), "--data", str(DATA),
                     "-o", str(tmp_path / "out"))
    assert savedmodel.exit_code == 2
    assert "save the model as .keras" in savedmodel.output

    wrong_shape = tmp_path / "wrong.npy"
    np.save(wrong_shape, np.zeros((8, 5, 5, 3), np.float32))
    shutil.copy(SAMPLES / "cnn_untrained.keras", tmp_path / "m.keras")
    bad = run("recalibrate", str(tmp_path / "m.keras"), "--data", str(wrong_shape), "-o", str(tmp_path / "o.keras"))
    assert bad.exit_code == 2
    assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output
    assert not (tmp_path / "o.keras").exists()

    nan_data = tmp_path / "nan.npy"
    values = np.load(DATA)
    values[3, 2, 2, 1] = np.nan
    np.save(nan_data, values)
    nan = run("recalibrate", str(tmp_path / "m.keras"), "--data", str(nan_data), "-o", str(tmp_path / "o.keras"))
    assert nan.exit_code == 2 and "NaN" in nan.output
    assert not (tmp_path / "o.keras").exists()


def test_write_is_atomic(work: Path, monkeypatch: pytest.MonkeyPatch):
    """A failure while writing leaves an existing output as it was and no temporary file behind."""
    from bninspect import writing

    source, out = work / "cnn_untrained.h5", work / "out.h5"
    out.write_bytes(b"previous output")
    description = loaders.load(str(source))
    statistics = {"bn1": (np.full(8, 0.5), np.full(8, 2.0))}

    def broken(path, *args):
        with open(path, "r+b") as handle:  # half-written, then the disk fills up
            handle.truncate(100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing, "_patch_hdf5", broken)
    from bninspect.commands.common import UsageProblem

    with pytest.raises(UsageProblem, match="No space left"):
        writing.write_statistics(description, statistics, out)
    assert out.read_bytes() == b"previous output"
    assert sorted(os.listdir(work)) == sorted(["out.h5", "cnn_untrained.keras", "cnn_untrained.h5",
                                               "cnn_untrained_tf2.h5", "cnn_untrained.weights.h5",
                                               "cnn_untrained_tf2_weights.h5", "cnn_trained.keras"])

    monkeypatch.undo()
    writing.write_statistics(description, statistics, out)
    written = bn(loaders.load(str(out)), "bn1")
    assert np.all(written.moving_mean == 0.5) and np.all(written.moving_variance == 2.0)
    assert np.all(bn(loaders.load(str(out)), "bn2").moving_variance == 1.0)


def test_in_memory_model_is_recalibrated_in_place():
    import keras

    import bninspect

    model = keras.models.load_model(str(SAMPLES / "cnn_untrained.keras"), compile=False)
    data = np.load(DATA)
    expected = np.asarray(keras.Model(model.inputs, model.get_layer("conv1").output).predict(data, verbose=0),
                          np.float64)
    layers = bninspect.recalibrate(model, data, layers="bn1")
    assert [layer.path for layer in layers] == ["bn1"]
    np.testing.assert_allclose(model.get_layer("bn1").moving_mean.numpy(), expected.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.get_layer("bn1").moving_variance.numpy(), expected.var(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-7)
    assert np.all(model.get_layer("bn2").moving_variance.numpy() == 1)
    assert "BN001" not in {f.code for f in bninspect.inspect(model).findings if f.layer == "bn1"}
    with pytest.raises(TypeError, match="bninspect recalibrate MODEL"):
        bninspect.recalibrate(str(SAMPLES / "cnn_untrained.keras"), data)


def test_a_last_batch_of_one_sample_is_left_out():
    """Batch statistics of one sample are degenerate (variance 0): that sample is not used."""
    import keras

    from bninspect.probes.recalibrate import recompute

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, name="first_dense")(inputs)
    normalised = keras.layers.BatchNormalization(name="bn_a")(hidden)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn_b")(keras.layers.Dense(3)(normalised)))
    data = np.random.default_rng(1).normal(2.0, 3.0, (33, 4)).astype(np.float32)
    result = recompute(model, data, batch_size=32, progress=False)
    assert result.samples == 32 and result.batches == 1
    assert result.notes and "left out" in result.notes[0]
    first = next(layer for layer in result.layers if layer.path == "bn_a")
    seen = np.asarray(model.get_layer("first_dense")(data[:32]), np.float64)
    np.testing.assert_allclose(first.after_mean, seen.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(first.after_variance, seen.var(axis=0), rtol=1e-4)
    assert recompute(model, data, batch_size=10, progress=False).samples == 33


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_frozen_bn_layers_use_batch_statistics_during_the_pass(flavour):
    """A fine-tuned model with frozen BN is what recalibration is for: the frozen layers must
    normalise with batch statistics in the pass like the others, and stay frozen afterwards."""
    import importlib

    from bninspect.probes.recalibrate import recompute

    K = importlib.import_module(flavour)

    def build(frozen: bool):
        K.utils.set_random_seed(3)
        inputs = K.Input((5,))
        x = K.layers.Dense(7, name="d1")(inputs)
        first = K.layers.BatchNormalization(name="bn_a")
        x = first(x)
        x = K.layers.Dense(4, name="d2")(x)
        model = K.Model(inputs, K.layers.BatchNormalization(name="bn_b")(x))
        first.trainable = not frozen
        return model

    data = np.random.default_rng(0).normal(5.0, 2.0, (64, 5)).astype(np.float32)
    frozen_model, open_model = build(True), build(False)
    open_model.set_weights(frozen_model.get_weights())
    frozen_result = {layer.path: layer for layer in recompute(frozen_model, data, progress=False).layers}
    open_result = {layer.path: layer for layer in recompute(open_model, data, progress=False).layers}
    np.testing.assert_allclose(frozen_result["bn_b"].after_mean, open_result["bn_b"].after_mean, rtol=1e-5)
    np.testing.assert_allclose(frozen_result["bn_b"].after_variance, open_result["bn_b"].after_variance, rtol=1e-5)
    assert frozen_model.get_layer("bn_a").trainable is False
