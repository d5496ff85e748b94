"""Layer names that hold a "/" (tf-keras names DenseNet's and MobileNetV3's layers `conv1/bn`,
`Conv/BatchNorm`): a path is the names joined by "/", so the loaders must not split it to find
the weights. Written by tf-keras (Keras 3 refuses such names), top level and nested."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slash_named_files(tmp_path_factory):
    import tf_keras as K

    inputs = K.Input((4, 4, 3))
    x = K.layers.BatchNormalization(name="conv1/bn")(K.layers.Conv2D(2, 1, name="conv1/conv")(inputs))
    inner_in = K.Input((4, 4, 2))
    inner = K.Model(inner_in, K.layers.BatchNormalization(name="block/bn")(inner_in), name="inner")
    model = K.Model(inputs, inner(x))
    rng = np.random.default_rng(0)
    expected = {}
    for path, layer in (("conv1/bn", model.get_layer("conv1/bn")), ("inner/block/bn", inner.get_layer("block/bn"))):
        layer.set_weights([rng.uniform(0.5, 1.5, 2).astype(np.float32) for _ in range(4)])
        expected[path] = dict(zip(("gamma", "beta", "moving_mean", "moving_variance"), layer.get_weights()))
    directory = tmp_path_factory.mktemp("slash")
    paths = [directory / "model.h5", directory / "model.keras"]
    for path in paths:
        model.save(path)
    return paths, expected


def test_layer_names_with_a_slash_are_read_with_their_weights(slash_named_files):
    paths, expected = slash_named_files
    for path in paths:
        result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
        assert result.exit_code == 0, result.output
        (model,) = json.loads(result.output)["models"]
        assert {layer["path"] for layer in model["bn_layers"]} == set(expected)
        for layer in model["bn_layers"]:
            for key, values in expected[layer["path"]].items():
                assert layer[key]["min"] == pytest.approx(float(values.min()))
                assert layer[key]["max"] == pytest.approx(float(values.max()))
