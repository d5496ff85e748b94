"""The optimizer's step count read from real files, and BN018 on models trained too briefly.

Models are fit here with Keras 3 and tf-keras and saved in every full-model format; the step
count and the findings are read back through the command line, as a user would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 16
BATCH = 32


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Not standardised: the layer's real input statistics are far from the initial 0/1.
    x = rng.normal(1.0, 5.0, size=(STEPS_PER_EPOCH * BATCH, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 1.0).astype("float32")
    return x, y


def _cnn(keras):
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(8, 3, name="conv2"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


def _fit(keras, epochs: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = _cnn(keras)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = _data(seed)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return model


def _save_all(keras3_model, tf_keras_model, directory, stem: str) -> dict[str, str]:
    paths = {
        "keras3_keras": directory / f"{stem}.keras",
        "keras3_h5": directory / f"{stem}_k3.h5",
        "tf_keras_h5": directory / f"{stem}_tf2.h5",
        "tf_keras_savedmodel": directory / f"{stem}_tf2_savedmodel",
    }
    keras3_model.save(paths["keras3_keras"])
    keras3_model.save(paths["keras3_h5"])
    tf_keras_model.save(paths["tf_keras_h5"])
    tf_keras_model.save(paths["tf_keras_savedmodel"], save_format="tf")
    return {kind: str(path) for kind, path in paths.items()}


@pytest.fixture(scope="module")
def trained_files(tmp_path_factory):
    import keras
    import tf_keras

    directory = tmp_path_factory.mktemp("training_steps")
    short = _save_all(_fit(keras, 3), _fit(tf_keras, 3), directory, "short")
    long = _save_all(_fit(keras, 40), _fit(tf_keras, 40), directory, "long")
    return {"short": short, "long": long, "directory": directory}


def _json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


FORMATS = ("keras3_keras", "keras3_h5", "tf_keras_h5", "tf_keras_savedmodel")


@pytest.mark.parametrize("kind", FORMATS)
def test_three_epochs_of_16_steps_get_bn018_on_every_bn_layer(trained_files, kind):
    entry = _json("check", trained_files["short"][kind])["models"][0]
    assert entry["error"] is None
    assert entry["training_steps"] == 3 * STEPS_PER_EPOCH
    bn018 = [finding for finding in entry["findings"] if finding["code"] == "BN018"]
    assert sorted(finding["layer"] for finding in bn018) == sorted(layer["path"] for layer in entry["bn_layers"])
    assert len(bn018) == 2
    for finding in bn018:
        assert "after 48 training steps at momentum 0.99" in finding["message"]
        assert "62%" in finding["message"]
        assert finding["severity"] == "warning"
        assert "bninspect recalibrate" in finding["hint"]


@pytest.mark.parametrize("kind", FORMATS)
def test_forty_epochs_converge_and_get_no_bn018(trained_files, kind):
    entry = _json("check", trained_files["long"][kind])["models"][0]
    assert entry["training_steps"] == 40 * STEPS_PER_EPOCH
    assert not [finding for finding in entry["findings"] if finding["code"] == "BN018"]


def test_the_header_and_diff_show_the_step_counts(trained_files):
    result = CliRunner().invoke(app, ["inspect", trained_files["short"]["keras3_keras"]])
    assert result.exit_code == 0
    assert "48 training steps" in result.stdout.splitlines()[0]
    result = CliRunner().invoke(app, ["diff", trained_files["short"]["tf_keras_h5"], trained_files["long"]["tf_keras_h5"]])
    assert result.exit_code == 0
    assert "48 training steps" in result.stdout and "640 training steps" in result.stdout
    document = _json("diff", trained_files["short"]["keras3_h5"], trained_files["long"]["keras3_keras"])
    assert (document["a"]["training_steps"], document["b"]["training_steps"]) == (48, 640)


def test_files_without_an_optimizer_report_null_and_no_bn018(trained_files, tmp_path):
    import keras
    import tf_keras

    keras3_model = _fit(keras, 3)
    tf_keras_model = _fit(tf_keras, 3)
    files = [tmp_path / "tf2_weights.h5", tmp_path / "k3_no_optimizer.h5",
             tmp_path / "tf2_no_optimizer.h5", tmp_path / "tf2_no_optimizer_savedmodel"]
    tf_keras_model.save_weights(files[0])
    keras.saving.save_model(keras3_model, files[1], include_optimizer=False)
    tf_keras_model.save(files[2], include_optimizer=False)
    tf_keras_model.save(files[3], include_optimizer=False, save_format="tf")
    # An uncompiled Keras 3 model saved as .keras has no optimizer either.
    uncompiled = _cnn(keras)
    uncompiled.set_weights(keras3_model.get_weights())
    files.append(tmp_path / "k3_uncompiled.keras")
    uncompiled.save(files[-1])
    document = _json("check", *map(str, files))
    assert [entry["error"] for entry in document["models"]] == [None] * len(files)
    assert [entry["training_steps"] for entry in document["models"]] == [None] * len(files)
    assert not [f for entry in document["models"] for f in entry["findings"] if f["code"] == "BN018"]
    # Keras 3 `save_weights` stores the optimizer's variables with the layers': its step count reads,
    # but without the layer configs (momentum) BN018 cannot run.
    keras3_model.save_weights(tmp_path / "k3.weights.h5")
    (entry,) = _json("check", str(tmp_path / "k3.weights.h5"))["models"]
    assert entry["training_steps"] == 3 * STEPS_PER_EPOCH
    assert not [f for f in entry["findings"] if f["code"] == "BN018"]


def test_the_formula_matches_what_keras_leaves_in_the_moving_statistics(tmp_path):
    """Fit N steps on inputs whose every batch has the same mean c and no variance: Keras' update
    then leaves moving_mean = c * (1 - share) and moving_variance = share * 1, with share =
    momentum ** N. bninspect reads N from the file; the measured share must equal momentum ** N."""
    import keras

    from bninspect import loaders
    from bninspect.rules.stats import initial_share

    momentum, steps, constant = 0.9, 20, 3.0
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=momentum, name="bn"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.full((steps * 8, 4), constant, dtype="float32")
    model.fit(x, np.zeros((steps * 8, 1), "float32"), batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    description = loaders.load(tmp_path / "m.keras")
    assert description.training_steps == steps
    (layer,) = description.bn_layers
    expected = initial_share(layer.momentum, description.training_steps)
    assert expected == pytest.approx(momentum ** steps, rel=1e-12)
    measured_from_mean = 1.0 - layer.moving_mean / constant
    np.testing.assert_allclose(measured_from_mean, expected, rtol=1e-4)
    np.testing.assert_allclose(layer.moving_variance, expected, rtol=1e-4)


def test_a_fine_tune_with_a_fresh_optimizer_from_pretrained_statistics_is_not_bn018(tmp_path):
    """Pretrained on inputs of small scale (moving variances well below 1), then fine-tuned for
    48 steps with a new optimizer: the step counter says 48, but the variances are below the 62%
    a run from 0/1 would leave, so BN018 stays silent."""
    import keras

    keras.utils.set_random_seed(1)
    model = _cnn(keras)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x, y = _data(1)
    x = x * 0.02
    model.fit(x, y, batch_size=BATCH, epochs=40, shuffle=False, verbose=0)
    model.compile(optimizer="adam", loss="binary_crossentropy")  # a fresh optimizer: the counter restarts
    model.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    model.save(tmp_path / "fine_tuned.keras")
    entry = _json("check", str(tmp_path / "fine_tuned.keras"))["models"][0]
    assert entry["training_steps"] == 48
    variances = [layer["moving_variance"]["min"] for layer in entry["bn_layers"]]
    assert all(value < 0.5 for value in variances), variances
    assert not [finding for finding in entry["findings"] if finding["code"] == "BN018"]


def test_bn101_on_an_unconverged_layer_names_the_cause(trained_files, tmp_path):
    """Probed with its own training data, the briefly trained CNN's first BN layer drifts from its
    moving statistics, and BN101 says that BN018's unconverged statistics explain it."""
    x, _ = _data(0)
    np.save(tmp_path / "x.npy", x)
    entry = _json("check", trained_files["short"]["keras3_keras"], "--data", str(tmp_path / "x.npy"))["models"][0]
    codes = {(finding["code"], finding["layer"]) for finding in entry["findings"]}
    assert ("BN018", "bn1") in codes
    bn101 = [finding for finding in entry["findings"] if finding["code"] == "BN101" and finding["layer"] == "bn1"]
    assert len(bn101) == 1
    assert "explained by unconverged moving statistics (BN018)" in bn101[0]["message"]
    assert "after 48 training steps" in bn101[0]["message"]
    assert "bninspect recalibrate" in bn101[0]["hint"]
    # the converged model on the same data: no BN018, and a BN101 (if any) does not blame it
    entry = _json("check", trained_files["long"]["keras3_keras"], "--data", str(tmp_path / "x.npy"))["models"][0]
    assert not [f for f in entry["findings"] if f["code"] == "BN018" or "BN018" in f["message"]]


def test_no_sample_model_gets_bn018():
    from pathlib import Path

    samples = Path(__file__).resolve().parents[1] / "sample_models"
    paths = sorted(str(path) for path in samples.iterdir()
                   if path.suffix in (".h5", ".keras") or path.name.endswith("_savedmodel"))
    document = _json("check", *paths)
    assert len(document["models"]) == len(paths)
    assert not [f for entry in document["models"] for f in entry["findings"] if f["code"] == "BN018"]


@pytest.mark.parametrize("counter", ["a float", "negative", "a vector"])
def test_an_odd_step_counter_reads_as_unknown_and_the_file_stays_readable(tmp_path, counter):
    import shutil
    from pathlib import Path

    import h5py

    from bninspect import loaders

    sample = Path(__file__).resolve().parents[1] / "sample_models" / "cnn_trained_tf2.h5"
    assert loaders.load(sample).training_steps == 640
    copy = tmp_path / "odd.h5"
    shutil.copy(sample, copy)
    with h5py.File(copy, "r+") as handle:
        group = handle["optimizer_weights"]
        del group["iteration:0"]
        value = {"a float": np.float32(640.0), "negative": np.int64(-3), "a vector": np.arange(3)}[counter]
        group.create_dataset("iteration:0", data=value)
    description = loaders.load(copy)
    assert description.training_steps is None
    assert len(description.bn_layers) == 2


# --- a stored counter of 0 on a trained model ---------------------------------------------------

def _fit_then_compile_again(tf_keras):
    """A tf-keras model fit for 30 steps on inputs of variance 25, then compiled again: the new
    optimizer is never built, and tf.keras 2.12+ saves its `iteration:0` as 0."""
    model = _fit(tf_keras, 1)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def recompiled(tmp_path_factory):
    import h5py
    import tf_keras

    model = _fit_then_compile_again(tf_keras)
    path = tmp_path_factory.mktemp("recompiled") / "recompiled_tf2.h5"
    model.save(path)
    with h5py.File(path, "r") as handle:
        assert handle["optimizer_weights/iteration:0"][()] == 0
    return {"model": model, "path": str(path)}


def test_a_zero_counter_on_a_trained_file_is_null_and_the_header_says_nothing(recompiled):
    entry = _json("check", recompiled["path"])["models"][0]
    assert entry["training_steps"] is None
    # Trained statistics that a run from 0/1 with the counter's 0 steps cannot leave, yet as
    # consistent with such a run as BN018's variance test can tell: only the counter can say.
    assert max(layer["moving_variance"]["min"] for layer in entry["bn_layers"]) > 1
    assert not [finding for finding in entry["findings"] if finding["code"] == "BN018"]
    result = CliRunner().invoke(app, ["inspect", recompiled["path"]])
    assert result.exit_code == 0, result.output
    assert "training steps" not in result.stdout


def test_the_live_model_reads_its_counter_like_its_file(recompiled, tmp_path):
    """The recompiled model in memory has `optimizer.iterations == 0` too: the notebook API reads
    it as its file does, null and no BN018 ("after 0 training steps, 100% still 0/1")."""
    import bninspect
    import tf_keras

    model = recompiled["model"]
    assert int(model.optimizer.iterations.numpy()) == 0
    report = bninspect.inspect(model)
    assert report.to_dict()["training_steps"] is None
    assert report.description.training_steps is None
    assert not [finding for finding in report.findings if finding.code == "BN018"]
    # A model that was fit keeps its count, live and in its file alike.
    trained = _fit(tf_keras, 1)
    trained.save(tmp_path / "trained_tf2.h5")
    assert bninspect.inspect(trained).to_dict()["training_steps"] == STEPS_PER_EPOCH
    assert bninspect.inspect(str(tmp_path / "trained_tf2.h5")).to_dict()["training_steps"] == STEPS_PER_EPOCH
    # Reloaded without its training config and compiled again: a fresh counter of 0.
    reloaded = tf_keras.models.load_model(tmp_path / "trained_tf2.h5", compile=False)
    reloaded.compile(optimizer="adam", loss="binary_crossentropy")
    report = bninspect.inspect(reloaded)
    assert report.to_dict()["training_steps"] is None
    assert not [finding for finding in report.findings if finding.code == "BN018"]
