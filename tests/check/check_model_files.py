"""Small legacy HDF5 model files written with h5py alone, for CLI tests that must not pay for
importing TensorFlow. The layout is the one tf.keras 2 writes: a `model_config` JSON attribute
and `model_weights/<layer>/<layer>/<var>:0` datasets listed in `weight_names`.
(The real Keras-saved files are built in conftest.py for the slow end-to-end tests.)
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

CHANNELS = 4


def trained_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"gamma": rng.uniform(0.7, 1.3, CHANNELS), "beta": rng.uniform(-0.2, 0.2, CHANNELS),
            "moving_mean": rng.uniform(-1, 1, CHANNELS), "moving_variance": rng.uniform(0.2, 2, CHANNELS)}


def untrained_arrays() -> dict[str, np.ndarray]:
    return {"gamma": np.ones(CHANNELS), "beta": np.zeros(CHANNELS), "moving_mean": np.zeros(CHANNELS),
            "moving_variance": np.ones(CHANNELS)}


def write_model(path: Path, arrays: dict[str, np.ndarray] | None = None, bn_config: dict | None = None,
                bn_last: bool = False, name: str = "bn") -> Path:
    """Input(4) -> Dense(4, no bias) -> BatchNormalization [-> Dense(2)], as a legacy .h5 file."""
    arrays = trained_arrays() if arrays is None else arrays
    bn = {"name": name, "axis": -1, "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True,
          "trainable": True, **(bn_config or {})}
    layers = [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, CHANNELS], "name": "input"}},
        {"class_name": "Dense", "config": {"name": "dense", "units": CHANNELS, "use_bias": False}},
        {"class_name": "BatchNormalization", "config": bn},
    ]
    if not bn_last:
        layers.append({"class_name": "Dense", "config": {"name": "out", "units": 2, "use_bias": True}})
    config = {"class_name": "Sequential", "config": {"name": "model", "layers": layers}}
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        handle.attrs["keras_version"] = "2.15.0"
        handle.attrs["backend"] = "tensorflow"
        weights = handle.create_group("model_weights")
        weights.attrs["layer_names"] = [layer["config"]["name"].encode() for layer in layers[1:]]
        group = weights.create_group(name)
        names = []
        for key, values in arrays.items():
            dataset = f"{name}/{key}:0"
            group.create_dataset(dataset, data=np.asarray(values, dtype=np.float32))
            names.append(dataset.encode())
        group.attrs["weight_names"] = names
        for other in layers[1:]:
            if other["config"]["name"] != name:
                weights.create_group(other["config"]["name"]).attrs["weight_names"] = []
    return path


def write_broken(path: Path) -> Path:
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)  # an HDF5 signature, then nothing usable
    return path


def run(*args):
    """`bninspect ARGS` in this process (typer's CliRunner); arguments may be paths."""
    from typer.testing import CliRunner

    from bninspect.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])
