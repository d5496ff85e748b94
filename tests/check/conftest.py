"""Fixtures for the check command tests: small synthetic files (fast) and real Keras-saved models
(session-scoped, slow: they import TensorFlow and train a tiny CNN for a few epochs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from check_model_files import trained_arrays, untrained_arrays, write_model


@pytest.fixture
def in_empty_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from an empty directory, so no pyproject.toml above the test changes the settings."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory of synthetic model files: healthy, untrained (error), momentum 0.1 (warning)."""
    write_model(tmp_path / "healthy.h5", trained_arrays(1))
    write_model(tmp_path / "untrained.h5", untrained_arrays())
    write_model(tmp_path / "momentum.h5", trained_arrays(2), bn_config={"momentum": 0.1})
    return tmp_path


def _structured_images(count: int, channels_last: bool = True, seed: int = 0):
    """Two classes a CNN can tell apart: bright blobs vs. stripes, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    images = rng.normal(0.3, 0.1, (count, 12, 12, 3))
    images[labels == 0, 3:9, 3:9, :] += 0.6
    images[labels == 1, :, ::3, :] += 0.6
    images = images.astype("float32")
    return (images if channels_last else images.transpose(0, 3, 1, 2)), labels


def _tf_env() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _cnn(layers, channels_first: bool = False, bn_axis: int = -1, momentum: float = 0.99):
    """Conv-BN-ReLU x2 -> pooling -> softmax: the tiny CNN of the tests."""
    data_format = "channels_first" if channels_first else "channels_last"
    shape = (3, 12, 12) if channels_first else (12, 12, 3)
    inputs = layers.Input(shape)
    x = inputs
    for index in (1, 2):
        x = layers.Conv2D(8, 3, use_bias=False, data_format=data_format, name=f"conv{index}")(x)
        x = layers.BatchNormalization(axis=bn_axis, momentum=momentum, name=f"bn{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
    x = layers.GlobalAveragePooling2D(data_format=data_format, name="pool")(x)
    outputs = layers.Dense(2, activation="softmax", name="out")(x)
    return inputs, outputs


def _variants(keras, directory: Path, suffix: str) -> dict[str, Path]:
    """The same rule-triggering models for Keras 3 and tf-keras (`keras` is either module)."""
    layers = keras.layers
    files: dict[str, Path] = {}

    inputs = layers.Input((6,))
    x = layers.Dense(4, use_bias=False, name="dense")(inputs)
    model = keras.Model(inputs, layers.BatchNormalization(name="bn_out")(x))
    files["bn_last"] = directory / f"bn_last{suffix}"
    model.save(files["bn_last"])

    model = keras.Model(*_cnn(layers, channels_first=True, bn_axis=-1))
    files["channels_first_wrong_axis"] = directory / f"channels_first_wrong_axis{suffix}"
    model.save(files["channels_first_wrong_axis"])

    model = keras.Model(*_cnn(layers, momentum=0.1))
    files["pytorch_momentum"] = directory / f"pytorch_momentum{suffix}"
    model.save(files["pytorch_momentum"])

    inputs = layers.Input((6,))
    x = layers.Dense(4, use_bias=False, name="dense")(inputs)
    x = layers.Dropout(0.5, name="drop")(x)
    x = layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    files["dropout_before_bn"] = directory / f"dropout_before_bn{suffix}"
    model.save(files["dropout_before_bn"])

    inputs = layers.Input((6,))
    x = layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, layers.Dense(2, name="out")(x))
    files["lambda"] = directory / f"lambda{suffix}"
    model.save(files["lambda"])
    return files


def _train(keras, channels_last: bool = True):
    images, labels = _structured_images(192, channels_last)
    keras.utils.set_random_seed(0)
    model = keras.Model(*_cnn(keras.layers))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    # 6 steps per epoch; 60 epochs = 360 steps leave 0.99 ** 360 = 2.7% of the initial 0/1 in the
    # moving statistics: converged (BN018 reports fewer steps).
    model.fit(images, labels, batch_size=32, epochs=60, verbose=0)
    return model


@pytest.fixture(scope="session")
def keras3_files(tmp_path_factory) -> dict[str, Path]:
    _tf_env()
    import keras

    directory = tmp_path_factory.mktemp("keras3")
    files: dict[str, Path] = {}
    trained = _train(keras)
    for kind, name in (("trained_keras", "trained.keras"), ("trained_h5", "trained.h5")):
        files[kind] = directory / name
        trained.save(files[kind])
    files["trained_weights"] = directory / "trained.weights.h5"
    trained.save_weights(files["trained_weights"])
    untrained = keras.Model(*_cnn(keras.layers))
    files["untrained_keras"] = directory / "untrained.keras"
    untrained.save(files["untrained_keras"])
    files["untrained_h5"] = directory / "untrained.h5"
    untrained.save(files["untrained_h5"])
    files.update(_variants(keras, directory, ".keras"))
    return files


@pytest.fixture(scope="session")
def tf_keras_files(tmp_path_factory) -> dict[str, Path]:
    _tf_env()
    import tf_keras

    directory = tmp_path_factory.mktemp("tf_keras")
    files: dict[str, Path] = {}
    trained = _train(tf_keras)
    files["trained_h5"] = directory / "trained.h5"
    trained.save(files["trained_h5"], save_format="h5")
    files["trained_keras"] = directory / "trained.keras"
    trained.save(files["trained_keras"])
    files["trained_weights"] = directory / "trained_weights.h5"
    trained.save_weights(files["trained_weights"], save_format="h5")
    untrained = tf_keras.Model(*_cnn(tf_keras.layers))
    files["untrained_h5"] = directory / "untrained.h5"
    untrained.save(files["untrained_h5"], save_format="h5")
    files.update(_variants(tf_keras, directory, ".h5"))
    return files

