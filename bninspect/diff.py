"""Compare the BN layers of two checkpoints of one model, matched by layer path.

For every array the change is reported two ways: the largest absolute change over the channels,
and that same change relative to the array's scale (its largest magnitude in A or B, whichever is
larger). Relative to the scale, not per element, because beta and the moving mean start at exactly
0, where a per-element ratio would be infinite for any change at all; and the larger of both sides,
so that a moving mean trained away from its initial 0 reads as a 100% change, not as 1e13%.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.model import BNLayer, ModelDescription

ARRAY_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
# Below this the scale of an array is treated as 0, so the relative change stays finite.
SCALE_FLOOR = 1e-12


@dataclass(frozen=True)
class ArrayChange:
    max_abs: float
    max_rel: float


@dataclass(frozen=True)
class LayerDiff:
    path: str
    status: str  # changed | unchanged | only_in_a | only_in_b
    changes: dict[str, ArrayChange | None]  # None: the array exists in only one of the two
    note: str | None = None

    def to_dict(self) -> dict:
        data: dict = {"path": self.path, "status": self.status}
        for name, change in self.changes.items():
            data[name] = None if change is None else {"max_abs_change": change.max_abs,
                                                      "max_rel_change": change.max_rel}
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class ModelDiff:
    a: ModelDescription
    b: ModelDescription
    layers: tuple[LayerDiff, ...]

    def to_dict(self) -> dict:
        return {"a": _side(self.a), "b": _side(self.b),
                "layers": [layer.to_dict() for layer in self.layers],
                "summary": {status: sum(1 for layer in self.layers if layer.status == status)
                            for status in ("changed", "unchanged", "only_in_a", "only_in_b")}}


def _side(description: ModelDescription) -> dict:
    return {"path": description.source, "format": description.format,
            "training_steps": description.training_steps}


def _array_change(a: np.ndarray, b: np.ndarray) -> ArrayChange:
    with np.errstate(invalid="ignore"):
        delta = np.abs(b - a)
    # NaN on one side only is a change; NaN on both sides in the same channel is not.
    same_nan = np.isnan(a) & np.isnan(b)
    delta = np.where(same_nan, 0.0, np.where(np.isnan(delta), np.inf, delta))
    max_abs = float(delta.max()) if delta.size else 0.0
    finite = np.abs(np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]]))
    scale = max(float(finite.max()) if finite.size else 0.0, SCALE_FLOOR)
    return ArrayChange(max_abs=max_abs, max_rel=max_abs / scale)


def _layer_diff(a: BNLayer, b: BNLayer) -> LayerDiff:
    if a.channels != b.channels:
        return LayerDiff(a.path, "changed", {name: None for name in ARRAY_NAMES},
                         note=f"{a.channels} channels in A, {b.channels} in B")
    arrays_a, arrays_b = a.arrays(), b.arrays()
    changes = {name: _array_change(arrays_a[name], arrays_b[name])
               if name in arrays_a and name in arrays_b else None for name in ARRAY_NAMES}
    differs = (any(change is not None and change.max_abs > 0 for change in changes.values())
               or set(arrays_a) != set(arrays_b))
    return LayerDiff(a.path, "changed" if differs else "unchanged", changes)


def diff_models(a: ModelDescription, b: ModelDescription) -> ModelDiff:
    layers_b = {layer.path: layer for layer in b.bn_layers}
    paths_a = {layer.path for layer in a.bn_layers}
    diffs = [(_layer_diff(layer, layers_b[layer.path]) if layer.path in layers_b
              else LayerDiff(layer.path, "only_in_a", {})) for layer in a.bn_layers]
    diffs += [LayerDiff(layer.path, "only_in_b", {}) for layer in b.bn_layers if layer.path not in paths_a]
    return ModelDiff(a, b, tuple(diffs))
