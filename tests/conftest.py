"""Shared fixtures: tiny Keras 3 and tf-keras models saved in every format bninspect reads.

Everything heavy is imported inside the fixtures, so tests that use none of them never import
TensorFlow. All fixtures are session-scoped and write only under pytest's tmp directories.

Fixtures for any test:

- `keras3_bn_model`, `tf_keras_bn_model`: a live model (Functional) with BN layers in every
  variant — plain, center=False, scale=False, both False, synchronized, frozen, channels-first
  with axis=1, model output — and nested models (`block/bn_plain` and `block/bn` in a Sequential,
  `residual/bn` and `residual/deep/bn` (tf-keras: `residual/deep/deep_bn`) in a Functional
  holding a Sequential). Every BN array holds distinct random values, so a loader that mixes up
  layers or arrays is caught.
- `keras3_bn_files`, `tf_keras_bn_files`: {kind: path} of those models saved in every format; see
  the fixtures for the kinds. Each file also appears as a `SavedCase` in `saved_bn_cases`.
- `saved_bn_cases`: {case id: SavedCase}: path, the format bninspect should report, and the
  expected BN layers (`ExpectedBN`, read from the live model through Keras' own API).
- `tiny_cnn_files`: {kind: path} of a small untrained and trained CNN, for tests that need an
  ordinary model rather than every BN variant; `tiny_cnn_data` is input data for it.

- `subclassed_files`, `kerashub_files`, `tf_keras_subclassed_savedmodel`, `tf_keras_nested_savedmodel`:
  models whose architecture is code, from `tests/code_models.py` (see there).

Helpers (`ExpectedBN`, `SavedCase`, `expected_bn_layers`, `randomize_bn_weights`) live in
`tests/bn_model_zoo.py`: import them with `from bn_model_zoo import ...`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# What bninspect.tf_runtime.import_tensorflow does for the CLI, done here for the in-process tests:
# TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported, and the fixtures and test
# modules import it (through keras) before bninspect gets a chance. Without oneDNN (TF's default on
# AVX2-only CPUs) the channels_first convolutions of the model zoo fail with "Conv2D only supports
# NHWC on the CPU", so test outcomes would depend on the CPU. This file is imported before any test
# module; none of them imports TensorFlow at import time before it. A value the user set is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# The backend suite runs only through tests/test_backend_matrix.py, once per backend, each in its own process.
collect_ignore = [] if os.environ.get("BNINSPECT_BACKEND_MODELS") else ["backends"]

import shutil  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bn_model_zoo import SavedCase, expected_bn_layers, randomize_bn_weights  # noqa: E402
# Models whose architecture is code (subclassed, KerasHub), shared by the modules that test them.
from code_models import (kerashub_files, subclassed_files, tf_keras_nested_savedmodel,  # noqa: E402,F401
                         tf_keras_subclassed_savedmodel)


def _build_bn_zoo(K: Any, sync_bn: Any, deep_bn_name: str) -> Any:
    """The same architecture for Keras 3 (`K` = keras) and tf-keras (`K` = tf_keras).

    tf-keras names variables by layer name only (`bn/gamma:0`), so it cannot save two layers named
    `bn` in one nested model to .h5; it gets `deep_bn_name` = "deep_bn" there, Keras 3 gets "bn".
    """
    layers = K.layers
    image = K.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(image)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.BatchNormalization(center=False, momentum=0.9, name="bn_no_center")(x)
    x = layers.BatchNormalization(scale=False, epsilon=1e-5, name="bn_no_scale")(x)
    x = layers.BatchNormalization(center=False, scale=False, name="bn_plain")(x)
    x = sync_bn(name="bn_sync")(x)
    frozen = layers.BatchNormalization(name="bn_frozen")
    frozen.trainable = False
    x = frozen(x)
    # `bn_plain` has no trainable weights, so Keras lists its arrays after those of `bn`.
    block = K.Sequential([K.Input((6, 6, 4)), layers.Conv2D(5, 1, name="conv"),
                          layers.BatchNormalization(center=False, scale=False, name="bn_plain"),
                          layers.BatchNormalization(momentum=0.8, name="bn")], name="block")
    x = block(x)
    # `deep` comes before `residual/bn` so that a matcher relying on weight order is caught.
    residual_in = K.Input((6, 6, 5))
    deep = K.Sequential([K.Input((6, 6, 5)), layers.Conv2D(3, 1, name="deep_conv"),
                         layers.BatchNormalization(name=deep_bn_name)], name="deep")
    y = deep(residual_in)
    y = layers.BatchNormalization(center=False, name="bn")(y)
    residual = K.Model(residual_in, y, name="residual")
    x = residual(x)
    # Read as channels-first (channels = 6): the correct axis for it is 1.
    x = layers.Conv2D(2, 1, data_format="channels_first", name="conv_cf")(x)
    x = layers.BatchNormalization(axis=1, name="bn_cf")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(3, name="head")(x)
    outputs = layers.BatchNormalization(name="bn_out")(x)
    return K.Model(image, outputs, name="zoo")


@pytest.fixture(scope="session")
def keras3_bn_model() -> Any:
    import keras

    model = _build_bn_zoo(keras, lambda name: keras.layers.BatchNormalization(synchronized=True, name=name),
                          deep_bn_name="bn")
    randomize_bn_weights(model, seed=1)
    return model


@pytest.fixture(scope="session")
def tf_keras_bn_model() -> Any:
    import tf_keras

    model = _build_bn_zoo(tf_keras, lambda name: tf_keras.layers.experimental.SyncBatchNormalization(name=name),
                          deep_bn_name="deep_bn")
    randomize_bn_weights(model, seed=2)
    return model


def _rewrite_weights(archive: Path, target: Path, edit: Any) -> None:
    """Copy a .keras archive with `edit(h5py.File)` applied to its model.weights.h5. The original
    is not touched."""
    import h5py

    work = target.with_suffix(".weights-work.h5")
    with zipfile.ZipFile(archive) as source:
        work.write_bytes(source.read("model.weights.h5"))
        members = {info.filename: source.read(info.filename) for info in source.infolist()}
    with h5py.File(work, "r+") as weights:
        edit(weights)
    members["model.weights.h5"] = work.read_bytes()
    work.unlink()
    with zipfile.ZipFile(target, "w") as out:
        for name, data in members.items():
            out.writestr(name, data)


def _without_name_attributes(archive: Path, target: Path) -> None:
    """Delete the `name` attribute of every `vars` group, like the archives older Keras 3 wrote."""
    import h5py

    def strip(weights: Any) -> None:
        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and "name" in obj.attrs:
                del obj.attrs["name"]
        weights.visititems(visit)

    _rewrite_weights(archive, target, strip)


def _deflated(archive: Path, target: Path) -> None:
    """Re-zip a .keras archive with compression, as a user re-packing it might (Keras stores the
    weights uncompressed)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))


def _with_swapped_keys(archive: Path, target: Path) -> None:
    """Swap the groups of the first two BN layers: the keys no longer follow the config order, and
    only the `name` attributes tell which layer each group belongs to."""
    def swap(weights: Any) -> None:
        layers = weights["layers"]
        layers.move("batch_normalization", "swap_tmp")
        layers.move("batch_normalization_1", "batch_normalization")
        layers.move("swap_tmp", "batch_normalization_1")

    _rewrite_weights(archive, target, swap)


def _with_old_keras_naming(h5_file: Path, target: Path) -> None:
    """Copy a tf-keras .h5 and rename every weight like old standalone Keras did when the TF name
    scope of a layer got a suffix: `bn/gamma:0` becomes `bn/bn_1/gamma:0` (dataset moved too)."""
    import h5py

    shutil.copyfile(h5_file, target)
    with h5py.File(target, "r+") as handle:
        weights_root = handle["model_weights"] if "model_weights" in handle else handle
        for layer_name in weights_root.attrs["layer_names"]:
            group = weights_root[layer_name]
            renamed = []
            for name in group.attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                scope, _, leaf = name.rpartition("/")
                new_name = f"{scope}/{scope.rsplit('/', 1)[-1]}_1/{leaf}"
                group.move(name, new_name)
                renamed.append(new_name.encode())
            group.attrs["weight_names"] = renamed


@pytest.fixture(scope="session")
def keras3_bn_files(keras3_bn_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`keras`: .keras archive; `keras_no_name_attrs`: the same without `name` attributes;
    `keras_swapped_keys`: with two weight groups swapped (only the `name` attributes are right);
    `keras_deflated`: re-zipped with compression;
    `weights_h5`: .weights.h5; `legacy_h5`: the legacy .h5 full model Keras 3 writes."""
    folder = tmp_path_factory.mktemp("keras3_bn")
    files = {"keras": folder / "zoo.keras", "keras_no_name_attrs": folder / "zoo_no_names.keras",
             "keras_swapped_keys": folder / "zoo_swapped_keys.keras", "keras_deflated": folder / "zoo_deflated.keras",
             "weights_h5": folder / "zoo.weights.h5", "legacy_h5": folder / "zoo.h5"}
    keras3_bn_model.save(files["keras"])
    keras3_bn_model.save_weights(files["weights_h5"])
    keras3_bn_model.save(files["legacy_h5"])
    _without_name_attributes(files["keras"], files["keras_no_name_attrs"])
    _with_swapped_keys(files["keras"], files["keras_swapped_keys"])
    _deflated(files["keras"], files["keras_deflated"])
    return files


@pytest.fixture(scope="session")
def tf_keras_bn_files(tf_keras_bn_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`h5`: full model; `weights_h5`: weights only; `old_naming_h5`, `old_naming_weights_h5`: the
    same with old standalone Keras' `bn/bn_1/gamma:0` naming; `savedmodel`: SavedModel directory."""
    import warnings

    folder = tmp_path_factory.mktemp("tf_keras_bn")
    files = {"h5": folder / "zoo.h5", "weights_h5": folder / "zoo_weights.h5",
             "old_naming_h5": folder / "zoo_old_naming.h5",
             "old_naming_weights_h5": folder / "zoo_old_naming_weights.h5", "savedmodel": folder / "zoo_savedmodel"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf_keras_bn_model.save(files["h5"])
        tf_keras_bn_model.save_weights(files["weights_h5"])
        tf_keras_bn_model.save(files["savedmodel"], save_format="tf")
    _with_old_keras_naming(files["h5"], files["old_naming_h5"])
    _with_old_keras_naming(files["weights_h5"], files["old_naming_weights_h5"])
    return files


@pytest.fixture(scope="session")
def saved_bn_cases(keras3_bn_model: Any, tf_keras_bn_model: Any, keras3_bn_files: dict[str, Path],
                   tf_keras_bn_files: dict[str, Path]) -> dict[str, SavedCase]:
    import keras
    import tf_keras

    keras3 = expected_bn_layers(keras3_bn_model)
    tf_keras_bns = expected_bn_layers(tf_keras_bn_model)
    # tf-keras weight names carry only the layer name (`deep_bn/gamma:0`), and a weights-only file
    # has no config to tell which nested model inside the top-level group holds the layer.
    tf_keras_weights_only = tuple(replace(bn, path=_top_and_leaf(bn.path)) for bn in tf_keras_bns)
    v3, v2 = keras.__version__, tf_keras.__version__
    cases = [
        SavedCase("keras3-keras", keras3_bn_files["keras"], "keras-v3", True, keras3, v3),
        SavedCase("keras3-keras-no-name-attrs", keras3_bn_files["keras_no_name_attrs"], "keras-v3", True, keras3, v3),
        SavedCase("keras3-keras-swapped-keys", keras3_bn_files["keras_swapped_keys"], "keras-v3", True, keras3, v3),
        SavedCase("keras3-keras-deflated", keras3_bn_files["keras_deflated"], "keras-v3", True, keras3, v3),
        SavedCase("keras3-weights-h5", keras3_bn_files["weights_h5"], "weights-v3", False, keras3, None),
        SavedCase("keras3-legacy-h5", keras3_bn_files["legacy_h5"], "h5-legacy", True, keras3, v3),
        SavedCase("tf-keras-h5", tf_keras_bn_files["h5"], "h5-legacy", True, tf_keras_bns, v2),
        SavedCase("tf-keras-weights-h5", tf_keras_bn_files["weights_h5"], "h5-weights", False,
                  tf_keras_weights_only, v2),
        SavedCase("old-keras-naming-h5", tf_keras_bn_files["old_naming_h5"], "h5-legacy", True, tf_keras_bns, v2),
        SavedCase("old-keras-naming-weights-h5", tf_keras_bn_files["old_naming_weights_h5"], "h5-weights", False,
                  tf_keras_weights_only, v2),
        SavedCase("tf-keras-savedmodel", tf_keras_bn_files["savedmodel"], "savedmodel", True, tf_keras_bns, v2),
    ]
    return {case.case_id: case for case in cases}


def _top_and_leaf(path: str) -> str:
    parts = path.split("/")
    return path if len(parts) <= 2 else f"{parts[0]}/{parts[-1]}"


def _build_tiny_cnn(K: Any) -> Any:
    layers = K.layers
    return K.Sequential([
        K.Input((16, 16, 3)),
        layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv1"),
        layers.BatchNormalization(name="bn1"),
        layers.ReLU(name="relu1"),
        layers.MaxPooling2D(name="pool1"),
        layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2"),
        layers.BatchNormalization(name="bn2"),
        layers.ReLU(name="relu2"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(3, activation="softmax", name="head"),
    ], name="tiny_cnn")


@pytest.fixture(scope="session")
def tiny_cnn_data() -> tuple[np.ndarray, np.ndarray]:
    """(x, y): 128 images 16x16x3 in [0, 1] and 3-class labels (the brightest channel)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (128, 16, 16, 3)).astype(np.float32)
    x *= rng.uniform(0.3, 1.0, (128, 1, 1, 3)).astype(np.float32)
    y = x.mean(axis=(1, 2)).argmax(axis=1)
    return x, y


@pytest.fixture(scope="session")
def tiny_cnn_files(tiny_cnn_data: tuple[np.ndarray, np.ndarray],
                   tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small Keras 3 CNN (Sequential, conv-BN-ReLU twice, 3 classes), untrained and trained for a
    few epochs on `tiny_cnn_data`: `untrained_keras`, `untrained_h5`, `trained_keras`, `trained_h5`
    (legacy HDF5 full model), `trained_weights_h5` (Keras 3 weights-only)."""
    import keras

    folder = tmp_path_factory.mktemp("tiny_cnn")
    x, y = tiny_cnn_data
    model = _build_tiny_cnn(keras)
    files = {"untrained_keras": folder / "untrained.keras", "untrained_h5": folder / "untrained.h5",
             "trained_keras": folder / "trained.keras", "trained_h5": folder / "trained.h5",
             "trained_weights_h5": folder / "trained.weights.h5"}
    model.save(files["untrained_keras"])
    model.save(files["untrained_h5"])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    model.save(files["trained_keras"])
    model.save(files["trained_h5"])
    model.save_weights(files["trained_weights_h5"])
    return files
