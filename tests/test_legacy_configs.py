"""Files written before Keras 2.2, as Keras 1 and 2.0/2.1 wrote them, read through the real CLI.

Before Keras 2.2 a Sequential model saved its `config` as the bare LIST of its layer configs (also
when nested in another Sequential, where it had no name at all: Keras matched its weights by
position). Keras 1 named BN weights `batchnormalization_1_running_mean`/`_running_std` (the latter
held the variance) and convolutions' layout `dim_ordering`. These files are written here with h5py
in that layout (no TensorFlow: Keras 2.1 is not installable next to Keras 3), with known values.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from bninspect.cli import app

CHANNELS = 4


def _bn_values(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"gamma": rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32),
            "beta": rng.uniform(-0.2, 0.2, CHANNELS).astype(np.float32),
            "moving_mean": rng.uniform(-1, 1, CHANNELS).astype(np.float32),
            "moving_variance": rng.uniform(0.1, 2, CHANNELS).astype(np.float32)}


def _write_layer(group: h5py.Group, name: str, weights: dict[str, np.ndarray]) -> None:
    """One layer group of `model_weights`: `weight_names` lists the datasets, in saving order."""
    layer = group.create_group(name)
    layer.attrs["weight_names"] = [key.encode() for key in weights]
    for key, values in weights.items():
        layer.create_dataset(key, data=values)
    names = [n.encode() for n in group.attrs.get("layer_names", [])]
    group.attrs["layer_names"] = [*names, name.encode()] if names else [name.encode()]


def _conv_config(name: str, **extra) -> dict:
    return {"class_name": "Conv2D", "config": {
        "name": name, "trainable": True, "filters": CHANNELS, "kernel_size": [1, 1], "strides": [1, 1],
        "padding": "same", "data_format": "channels_last", "activation": "linear", "use_bias": True, **extra}}


def _bn_config(name: str, **extra) -> dict:
    return {"class_name": "BatchNormalization", "config": {
        "name": name, "trainable": True, "axis": -1, "momentum": 0.99, "epsilon": 0.001,
        "center": True, "scale": True, **extra}}


def _bn_weights(scope: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{scope}/{key}:0": array for key, array in values.items()}


def _conv_weights(scope: str) -> dict[str, np.ndarray]:
    return {f"{scope}/kernel:0": np.ones((1, 1, 3, CHANNELS), np.float32),
            f"{scope}/bias:0": np.zeros(CHANNELS, np.float32)}


def write_keras21_sequential(path: Path, untrained_inner: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """A Keras 2.1.6 Sequential: conv -> bn -> an unnamed nested Sequential (conv -> bn) -> dense.
    Returns the BN values by layer path."""
    outer_bn, inner_bn = _bn_values(1), _bn_values(2)
    if untrained_inner:
        inner_bn["moving_mean"] = np.zeros(CHANNELS, np.float32)
        inner_bn["moving_variance"] = np.ones(CHANNELS, np.float32)
    config = {"class_name": "Sequential", "config": [
        _conv_config("conv2d_1", batch_input_shape=[None, 8, 8, 3], dtype="float32"),
        _bn_config("batch_normalization_1"),
        {"class_name": "Sequential", "config": [
            {**_conv_config("conv2d_2", activation="relu")},
            _bn_config("batch_normalization_2"),
        ]},
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
        {"class_name": "Dense", "config": {"name": "dense_1", "units": 2, "activation": "softmax",
                                           "use_bias": True}},
    ]}
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.1.6"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["model_config"] = json.dumps(config).encode()
        weights = handle.create_group("model_weights")
        weights.attrs["keras_version"] = b"2.1.6"
        weights.attrs["backend"] = b"tensorflow"
        _write_layer(weights, "conv2d_1", _conv_weights("conv2d_1"))
        _write_layer(weights, "batch_normalization_1", _bn_weights("batch_normalization_1", outer_bn))
        _write_layer(weights, "sequential_1", {**_conv_weights("conv2d_2"),
                                               **_bn_weights("batch_normalization_2", inner_bn)})
        _write_layer(weights, "flatten_1", {})
        _write_layer(weights, "dense_1", {"dense_1/kernel:0": np.ones((256, 2), np.float32),
                                          "dense_1/bias:0": np.zeros(2, np.float32)})
    return {"batch_normalization_1": outer_bn, "sequential_1/batch_normalization_2": inner_bn}


def write_keras1_sequential(path: Path) -> dict[str, np.ndarray]:
    """A Keras 1.2.2 Sequential (Theano layout): Convolution2D(dim_ordering="th") ->
    BatchNormalization(axis=-1, the wrong axis for it). Returns the BN values."""
    values = _bn_values(3)
    config = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {
            "name": "convolution2d_1", "trainable": True, "nb_filter": CHANNELS, "nb_row": 1, "nb_col": 1,
            "dim_ordering": "th", "activation": "linear", "bias": True, "batch_input_shape": [None, 3, 8, 8]}},
        {"class_name": "BatchNormalization", "config": {
            "name": "batchnormalization_1", "trainable": True, "axis": -1, "momentum": 0.99, "epsilon": 0.001,
            "mode": 0}},
        {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
    ]}
    keras1_names = {"gamma": "gamma", "beta": "beta", "moving_mean": "running_mean",
                    "moving_variance": "running_std"}
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"1.2.2"
        handle.attrs["model_config"] = json.dumps(config).encode()
        weights = handle.create_group("model_weights")
        _write_layer(weights, "convolution2d_1", {"convolution2d_1_W": np.ones((CHANNELS, 3, 1, 1), np.float32),
                                                  "convolution2d_1_b": np.zeros(CHANNELS, np.float32)})
        _write_layer(weights, "batchnormalization_1",
                     {f"batchnormalization_1_{keras1_names[key]}": array for key, array in values.items()})
        _write_layer(weights, "flatten_1", {})
    return values


def _inspect_json(path: Path) -> dict:
    result = CliRunner().invoke(app, ["inspect", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.output)["models"]
    assert model["error"] is None
    return model


def _check_json(*paths: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["check", *map(str, paths), "--format", "json"])
    return result.exit_code, json.loads(result.stdout)


def test_keras21_sequential_with_a_nested_unnamed_sequential(tmp_path):
    path = tmp_path / "keras21.h5"
    expected = write_keras21_sequential(path)
    model = _inspect_json(path)
    assert model["keras_version"] == "2.1.6"
    assert [layer["path"] for layer in model["bn_layers"]] == list(expected)
    for layer in model["bn_layers"]:
        for key, values in expected[layer["path"]].items():
            stats = layer[key]
            assert stats["min"] == pytest.approx(float(values.min()))
            assert stats["max"] == pytest.approx(float(values.max()))
            assert stats["mean"] == pytest.approx(float(values.astype(np.float64).mean()))
        assert layer["momentum"] == 0.99 and layer["axis"] == [-1]
    codes = {(f["code"], f["layer"]) for f in model["findings"]}
    # conv2d_1 (linear, with a bias) feeds batch_normalization_1 directly; conv2d_2 has a relu.
    assert ("BN011", "batch_normalization_1") in codes
    assert ("BN011", "sequential_1/batch_normalization_2") not in codes
    assert not any(code == "BN015" for code, _ in codes)


def test_a_keras21_file_does_not_make_check_of_a_directory_exit_2(tmp_path):
    write_keras21_sequential(tmp_path / "good.h5")
    write_keras21_sequential(tmp_path / "untrained_inner.h5", untrained_inner=True)
    code, document = _check_json(tmp_path)
    assert document["summary"]["unreadable"] == 0
    by_file = {Path(m["path"]).name: m for m in document["models"]}
    assert [f["layer"] for f in by_file["untrained_inner.h5"]["findings"] if f["code"] == "BN001"] \
        == ["sequential_1/batch_normalization_2"]
    assert not [f for f in by_file["good.h5"]["findings"] if f["code"] == "BN001"]
    assert code == 1  # the BN001 error fails the gate; an unreadable file would be 2


def test_keras1_weight_names_and_dim_ordering(tmp_path):
    path = tmp_path / "keras1.h5"
    expected = write_keras1_sequential(path)
    model = _inspect_json(path)
    (layer,) = model["bn_layers"]
    assert layer["path"] == "batchnormalization_1"
    for key, values in expected.items():
        assert layer[key]["mean"] == pytest.approx(float(values.astype(np.float64).mean()))
    findings = {f["code"]: f for f in model["findings"]}
    # dim_ordering "th" puts channels on axis 1: axis=-1 normalises the image width instead.
    assert "axis=-1 is not the channel axis 1" in findings["BN009"]["message"]


@pytest.mark.parametrize(("config", "reason"), [
    ({"class_name": "Sequential", "config": "conv, bn"}, "'config' entry that is a string"),
    ({"class_name": "Model", "config": {"layers": {"conv": {}}}}, "its layers entry is an object"),
    (["conv", "bn"], "model config is a list, not a JSON object"),
])
def test_a_config_it_cannot_parse_says_what_it_found(tmp_path, config, reason):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config).encode()
        handle.create_group("model_weights")
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.output
