"""Build a ModelDescription from a compact case spec (a TOML table), for the rule case files.

    [[case]]
    name = "untrained stats"          # what the case shows
    expect = ["BN001"]                # codes that must be found
    must_not = ["BN014"]              # codes that must not be found
    has_config = true                 # false: a weights-only file
    outputs = ["bn"]                  # model outputs (default: none, so BN010 stays quiet)
    dtype_policy = "mixed_float16"    # the model's policy
    training_steps = 48               # the optimizer's step count saved in the file (default: none)
    keras_version = "3.15.1"          # the Keras version that wrote the file (default: none)
    settings = { thresholds = { extreme-scale = 10.0 } }   # a [tool.bninspect] table

    [[case.layers]]                   # in graph order
    name = "conv"                     # the path ("outer/inner/bn" for nested layers)
    class = "Conv2D"
    config = { data_format = "channels_first", filters = 8 }
    inbound = []                      # default: the previous layer
    input_shape = [0, 3, 8, 8]        # 0 stands for None (the batch axis)
    call_training = [false, "unset"]  # the training argument of each call ("unset": not passed;
                                      # omit the key: no calls recorded, as in a Sequential)

    [[case.layers]]
    name = "bn"                       # class defaults to BatchNormalization
    channels = 8
    moving_mean = 0.0                 # a number fills every channel; a list gives each
    moving_variance = [1.0, 2.0]      # arrays left out get healthy trained-looking values
    gamma = false                     # false: the array is absent (scale=False)

    [[case.detail]]                   # optional: what one expected finding says
    code = "BN005"
    layer = "bn"
    severity = "warning"
    message = ["12 of 64", "0.001"]   # substrings of the message
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bninspect.config import settings_from_table
from bninspect.loaders.common import bn_layer
from bninspect.model import BN_CLASS_NAMES, Layer, ModelDescription

BN_DEFAULT_CONFIG = {"axis": -1, "epsilon": 1e-3, "momentum": 0.99, "center": True, "scale": True,
                     "trainable": True}


def trained_arrays(channels: int) -> dict[str, np.ndarray]:
    """Values a trained layer could have: nothing initial, nothing extreme."""
    return {"gamma": np.linspace(0.8, 1.2, channels), "beta": np.linspace(-0.1, 0.1, channels),
            "moving_mean": np.linspace(-0.5, 0.5, channels),
            "moving_variance": np.linspace(0.5, 2.0, channels)}


def _array(value: Any, channels: int) -> np.ndarray:
    if isinstance(value, list):
        array = np.asarray(value, dtype=np.float64)
        assert array.size == channels, f"array of {array.size} values for {channels} channels"
        return array
    return np.full(channels, float(value))


def _shape(value: list | None) -> tuple | None:
    return None if value is None else tuple(None if v == 0 else v for v in value)


def build_description(case: dict) -> ModelDescription:
    has_config = case.get("has_config", True)
    layers: list[Layer] = []
    bn_layers = []
    previous: str | None = None
    for spec in case.get("layers", []):
        path = spec["name"]
        class_name = spec.get("class", "BatchNormalization")
        config = dict(spec.get("config", {}))
        is_bn = class_name in BN_CLASS_NAMES
        if is_bn:
            config = {**BN_DEFAULT_CONFIG, **config}
        inbound = spec.get("inbound", [previous] if previous else [])
        layers.append(Layer(path=path, name=path.rsplit("/", 1)[-1], class_name=class_name, config=config,
                            inbound=tuple(inbound), input_shape=_shape(spec.get("input_shape")),
                            module=spec.get("module"), registered_name=spec.get("registered_name"),
                            call_training=tuple(None if value == "unset" else value
                                                for value in spec.get("call_training", ()))))
        previous = path
        if is_bn:
            channels = spec.get("channels", 4)
            arrays = trained_arrays(channels)
            if not config["scale"]:
                arrays.pop("gamma")
            if not config["center"]:
                arrays.pop("beta")
            for key in ("gamma", "beta", "moving_mean", "moving_variance"):
                if spec.get(key) is False:
                    arrays.pop(key, None)
                elif key in spec:
                    arrays[key] = _array(spec[key], channels)
            dtype = spec.get("stored_dtype", "float32")
            bn_layers.append(bn_layer(path, class_name, config if has_config else None,
                                      {key: (values, dtype) for key, values in arrays.items()}))
    return ModelDescription(
        source=case.get("source", "case.h5"),
        format="h5-legacy" if has_config else "h5-weights",
        bn_layers=tuple(bn_layers),
        has_config=has_config,
        layers=tuple(layers) if has_config else (),
        outputs=tuple(case.get("outputs", [])),
        dtype_policy=case.get("dtype_policy"),
        training_steps=case.get("training_steps"),
        keras_version=case.get("keras_version"),
    )


def build_settings(case: dict):
    return settings_from_table(case.get("settings", {}), "case")
