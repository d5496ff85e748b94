"""Model-building helpers shared by conftest's fixtures and the tests (importable by name:
`from bn_model_zoo import ...`; a module named conftest would clash with other test folders')."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BN_CLASS_NAMES = ("BatchNormalization", "SyncBatchNormalization")


@dataclass(frozen=True)
class ExpectedBN:
    """One BN layer as Keras holds it: what a loader must report for it."""

    path: str
    class_name: str
    arrays: dict[str, np.ndarray] = field(compare=False)
    axis: tuple[int, ...]
    epsilon: float
    momentum: float
    center: bool
    scale: bool
    trainable: bool


@dataclass(frozen=True)
class SavedCase:
    """One saved file (or SavedModel directory) and what bninspect should read from it."""

    case_id: str
    path: Path
    format: str
    has_config: bool
    expected: tuple[ExpectedBN, ...]
    # The Keras version the file records, None where the format records none (Keras 3 .weights.h5).
    keras_version: str | None


def expected_bn_layers(model: Any) -> tuple[ExpectedBN, ...]:
    """Every BN layer of a live Keras 3 or tf-keras model, walking nested models.

    Arrays are named from the variables' own names (`gamma`, `bn/gamma:0`), paired with
    `get_weights()` values, so this does not share code with bninspect's in-memory reader.
    """
    found = []

    def walk(container: Any, prefix: str) -> None:
        for layer in sublayers(container):
            if type(layer).__name__ in BN_CLASS_NAMES:
                names = [variable.name.split("/")[-1].split(":")[0] for variable in layer.weights]
                config = layer.get_config()
                axis = config["axis"]
                found.append(ExpectedBN(
                    path=prefix + layer.name,
                    class_name=type(layer).__name__,
                    arrays=dict(zip(names, (np.asarray(v, dtype=np.float64) for v in layer.get_weights()))),
                    axis=tuple(axis) if isinstance(axis, (list, tuple)) else (axis,),
                    epsilon=config["epsilon"], momentum=config["momentum"], center=config["center"],
                    scale=config["scale"], trainable=config["trainable"]))
            else:
                walk(layer, prefix + layer.name + "/")

    walk(model, "")
    return tuple(found)


def sublayers(layer: Any) -> list:
    """The layers directly inside a model, a wrapper (TimeDistributed) or a custom layer."""
    if hasattr(layer, "layers"):
        return list(layer.layers)
    return list(layer._flatten_layers(include_self=False, recursive=False))


def randomize_bn_weights(model: Any, seed: int) -> None:
    """Give every BN array distinct random values (variances positive), nested models included."""
    rng = np.random.default_rng(seed)

    def walk(container: Any) -> None:
        for layer in sublayers(container):
            if type(layer).__name__ in BN_CLASS_NAMES:
                layer.set_weights([rng.uniform(0.1, 3.0, w.shape).astype(np.float32) for w in layer.get_weights()])
            else:
                walk(layer)

    walk(model)


def color_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images in [0, 1], 16x16x3; the label is the brightest channel."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (samples, 16, 16, 3)).astype(np.float32)
    x *= rng.uniform(0.3, 1.0, (samples, 1, 1, 3)).astype(np.float32)
    return x, x.mean(axis=(1, 2)).argmax(axis=1)
