"""BN011, BN005 and BN019 on files written by Keras 3 and tf-keras, through the real CLI.

The cases the issue reports from real models: BN011 only where the bias reaches the BN layer
unchanged (not through a built-in activation or an Activation layer); BN005 only for collapsed
channels that inference amplifies (not gamma ~ 0); BN019 for a pretrained base fine-tuned without
`training=False`, not with it, not frozen, not a user's own block.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app

pytestmark = pytest.mark.slow

LIBRARIES = ("keras3", "tf_keras")
SUFFIXES = (".keras", ".h5")


def _library(name: str) -> Any:
    if name == "keras3":
        import keras

        return keras
    import tf_keras

    return tf_keras


def _findings(path: Path) -> list[dict]:
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.output)["models"]
    assert model["error"] is None, model["error"]
    return model["findings"]


def _save(model: Any, directory: Path, stem: str) -> dict[str, Path]:
    paths = {}
    for suffix in SUFFIXES:
        paths[suffix] = directory / f"{stem}{suffix}"
        model.save(paths[suffix])
    return paths


def _bias_model(K: Any) -> Any:
    """Three conv -> BN pairs: linear conv, conv with a built-in relu, linear conv -> Activation."""
    layers = K.layers
    inputs = K.Input((6, 6, 3))
    linear = layers.BatchNormalization(name="bn_after_linear")(layers.Conv2D(4, 1, name="conv_linear")(inputs))
    relu = layers.BatchNormalization(name="bn_after_relu")(
        layers.Conv2D(4, 1, activation="relu", name="conv_relu")(linear))
    through = layers.Activation("relu", name="act")(layers.Conv2D(4, 1, name="conv_then_act")(relu))
    out = layers.BatchNormalization(name="bn_after_activation")(through)
    return K.Model(inputs, layers.Flatten()(out))


def _saved_by_each_library(tmp_path_factory, build) -> dict[tuple[str, str], Path]:
    """{(library, suffix): path} of the model `build(K)` makes, saved by each library in each format."""
    files = {}
    for name in LIBRARIES:
        directory = tmp_path_factory.mktemp(f"{build.__name__.strip('_')}_{name}")
        for suffix, path in _save(build(_library(name)), directory, "model").items():
            files[name, suffix] = path
    return files


@pytest.fixture(scope="module")
def bias_files(tmp_path_factory) -> dict[tuple[str, str], Path]:
    return _saved_by_each_library(tmp_path_factory, _bias_model)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bn011_only_where_the_bias_reaches_bn_unchanged(bias_files, library, suffix):
    flagged = {f["layer"] for f in _findings(bias_files[library, suffix]) if f["code"] == "BN011"}
    assert flagged == {"bn_after_linear"}


def _collapsed_model(K: Any) -> Any:
    """bn_amplified: channel 0 collapsed with gamma 1. bn_zero_gamma: channels 0, 1 collapsed with
    gamma ~ 0 (a trained-away channel, as in DenseNet121)."""
    layers = K.layers
    inputs = K.Input((4,))
    x = layers.BatchNormalization(name="bn_amplified")(layers.Dense(4, use_bias=False, name="d1")(inputs))
    x = layers.BatchNormalization(name="bn_zero_gamma")(layers.Dense(4, use_bias=False, name="d2")(x))
    model = K.Model(inputs, layers.Dense(1, name="head")(x))
    variance = np.array([1e-7, 0.5, 0.8, 1.2], np.float32)
    mean = np.array([0.1, -0.1, 0.2, 0.3], np.float32)
    beta = np.zeros(4, np.float32)
    model.get_layer("bn_amplified").set_weights([np.ones(4, np.float32), beta, mean, variance])
    model.get_layer("bn_zero_gamma").set_weights(
        [np.array([1e-4, 2e-3, 1.0, 1.0], np.float32), beta, mean, np.array([1e-7, 2e-6, 0.8, 1.2], np.float32)])
    return model


@pytest.fixture(scope="module")
def collapsed_files(tmp_path_factory) -> dict[tuple[str, str], Path]:
    return _saved_by_each_library(tmp_path_factory, _collapsed_model)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_bn005_only_for_amplified_collapsed_channels(collapsed_files, library, suffix):
    findings = [f for f in _findings(collapsed_files[library, suffix]) if f["code"] == "BN005"]
    assert [f["layer"] for f in findings] == ["bn_amplified"]
    assert "1 of 4 channels" in findings[0]["message"] and "channel 0" in findings[0]["message"]


# --- BN019 -------------------------------------------------------------------------------------

def _base(K: Any) -> Any:
    """The cheapest Keras Applications backbone with BN: MobileNetV2, alpha 0.35, 32x32."""
    return K.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)


def _own_block(K: Any) -> Any:
    block_in = K.Input((32, 32, 3))
    block_out = K.layers.BatchNormalization(name="bn")(K.layers.Conv2D(4, 3, use_bias=False)(block_in))
    return K.Model(block_in, block_out, name="my_block")


def _fine_tuning_model(K: Any, variant: str) -> Any:
    """inputs -> base -> pooling -> head, the way Keras' transfer-learning guide builds it."""
    layers = K.layers
    base = _own_block(K) if variant == "own_block" else _base(K)
    if variant == "frozen":
        base.trainable = False
    if variant == "sequential":
        return K.Sequential([base, layers.GlobalAveragePooling2D(), layers.Dense(2, name="head")])
    inputs = K.Input((32, 32, 3))
    x = base(inputs, training=False) if variant == "training_false" else base(inputs)
    return K.Model(inputs, layers.Dense(2, name="head")(layers.GlobalAveragePooling2D()(x)))


VARIANTS = ("unfrozen", "sequential", "training_false", "frozen", "own_block")


@pytest.fixture(scope="module")
def fine_tuning_files(tmp_path_factory) -> dict[tuple[str, str, str], Path]:
    files = {}
    for name in LIBRARIES:
        K = _library(name)
        directory = tmp_path_factory.mktemp(f"finetune_{name}")
        for variant in VARIANTS:
            for suffix, path in _save(_fine_tuning_model(K, variant), directory, variant).items():
                files[name, variant, suffix] = path
    return files


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_bn019_fine_tuning_a_pretrained_base(fine_tuning_files, library, suffix, variant):
    findings = _findings(fine_tuning_files[library, variant, suffix])
    bn019 = [f for f in findings if f["code"] == "BN019"]
    if variant in ("unfrozen", "sequential"):
        (finding,) = bn019
        assert finding["layer"] == "mobilenetv2_0.35_32" and finding["severity"] == "warning"
        # MobileNetV2 has 52 BN layers, all trainable.
        assert "52 of its 52 BN layers are trainable" in finding["message"]
        assert ("inside a Sequential" in finding["message"]) == (variant == "sequential")
    else:
        assert bn019 == []
    if variant == "frozen":
        assert sum(f["code"] == "BN013" for f in findings) == 52
