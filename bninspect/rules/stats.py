"""Rules over one BN layer's arrays and scalar config: BN001-BN008, BN013, BN014, BN016.

Each check is a pure function `(ModelDescription, Thresholds) -> Iterator[Hit]`. Comparisons with
the initial values (mean 0, variance 1, gamma 1, beta 0) are exact on purpose: training moves them
at the first update, so an exact initial value means "never updated", not "small".

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from bninspect.thresholds import Thresholds
from bninspect.model import BNLayer, ModelDescription
from bninspect.rules.base import Hit

# Keras' BatchNormalization default, assumed when a weights-only file does not say.
DEFAULT_EPSILON = 1e-3
# The smallest normal float16: below it float16 numbers lose precision and flush towards 0.
FLOAT16_SMALLEST_NORMAL = 6.1e-5
FLOAT16_POLICIES = frozenset({"float16", "mixed_float16"})


def num(value: float) -> str:
    """A number for a one-line message: short, exact enough to act on."""
    if value == 0:
        return "0"
    return f"{value:.4g}"


def channel_list(mask: np.ndarray, limit: int = 6) -> str:
    indices = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f" and {indices.size - limit} more" if indices.size > limit else ""
    return f"channel{'s' if indices.size > 1 else ''} {shown}{more}"


def _epsilon(layer: BNLayer) -> tuple[float, str]:
    if layer.epsilon is not None:
        return layer.epsilon, num(layer.epsilon)
    return DEFAULT_EPSILON, f"{num(DEFAULT_EPSILON)} (assumed, no config)"


def initial_channels(layer: BNLayer) -> np.ndarray:
    """Per channel: moving mean exactly 0 and moving variance exactly 1 (never updated)."""
    return (layer.moving_mean == 0.0) & (layer.moving_variance == 1.0)


def untrained_moving_stats(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.channels and initial_channels(layer).all():
            yield Hit(layer.path, f"moving mean is exactly 0 and moving variance exactly 1 in all "
                                  f"{layer.channels} channels: the statistics were never updated")


def partially_untrained(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        initial = initial_channels(layer)
        if initial.any() and not initial.all():
            yield Hit(layer.path, f"{int(initial.sum())} of {layer.channels} channels still hold the initial "
                                  f"statistics (mean 0, variance 1): {channel_list(initial)}")


def untrained_affine(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.trainable is False or not layer.channels or initial_channels(layer).all():
            continue
        # Only the arrays that exist: scale=False has no gamma, center=False no beta.
        checks = [(name, values, initial) for name, values, initial in
                  (("gamma", layer.gamma, 1.0), ("beta", layer.beta, 0.0)) if values is not None]
        if checks and all(np.all(values == initial) for _, values, initial in checks):
            what = " and ".join(f"{name} is exactly {num(initial)}" for name, _, initial in checks)
            yield Hit(layer.path, f"{what} in all {layer.channels} channels although the moving "
                                  f"statistics were updated: the affine parameters never trained")


def non_finite(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        parts = []
        for name, values in layer.arrays().items():
            if np.isfinite(values).all():
                continue  # the common case: one test instead of counting NaN and Inf separately
            nans = int(np.isnan(values).sum())
            infs = int(np.isinf(values).sum())
            if nans:
                parts.append(f"{name} {nans} NaN")
            if infs:
                parts.append(f"{name} {infs} Inf")
        if parts:
            yield Hit(layer.path, f"non-finite values in {layer.channels} channels: {', '.join(parts)}")


def negative_variance(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        negative = layer.moving_variance < 0  # NaN compares False: BN003 reports those
        if negative.any():
            yield Hit(layer.path, f"{int(negative.sum())} of {layer.channels} channels have a negative moving "
                                  f"variance (min {num(float(layer.moving_variance[negative].min()))}): "
                                  f"{channel_list(negative)}")


def collapsed_variance(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    factor = thresholds.collapsed_variance_factor
    for layer in description.bn_layers:
        epsilon, epsilon_text = _epsilon(layer)
        variance = layer.moving_variance
        # Negative (BN004) and NaN (BN003) variances are reported by their own rules.
        collapsed = (variance >= 0) & (variance < factor * epsilon)
        if collapsed.any():
            limit = f"epsilon {epsilon_text}" if factor == 1 else f"{num(factor)} x epsilon {epsilon_text}"
            yield Hit(layer.path, f"{int(collapsed.sum())} of {layer.channels} channels have moving variance "
                                  f"below {limit} (min {num(float(variance[collapsed].min()))})")


def zero_gamma(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.gamma is None:
            continue
        zero = np.abs(layer.gamma) <= thresholds.zero_gamma
        if zero.any():
            yield Hit(layer.path, f"{int(zero.sum())} of {layer.channels} channels have |gamma| <= "
                                  f"{num(thresholds.zero_gamma)} (they output the constant beta): "
                                  f"{channel_list(zero)}")


def effective_scale(layer: BNLayer) -> np.ndarray:
    """abs(gamma) / sqrt(moving_variance + epsilon): what one unit of input becomes at inference."""
    epsilon, _ = _epsilon(layer)
    gamma = layer.gamma if layer.gamma is not None else np.ones_like(layer.moving_variance)
    with np.errstate(all="ignore"):
        return np.abs(gamma) / np.sqrt(layer.moving_variance + epsilon)


def extreme_scale(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        scale = effective_scale(layer)
        # NaN (from NaN/negative inputs) compares False: BN003/BN004 report those layers.
        extreme = np.isfinite(scale) & (scale > thresholds.extreme_scale)
        if extreme.any():
            yield Hit(layer.path, f"{int(extreme.sum())} of {layer.channels} channels have effective scale "
                                  f"|gamma|/sqrt(var+eps) above {num(thresholds.extreme_scale)} "
                                  f"(max {num(float(scale[extreme].max()))})")


def pytorch_momentum(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.momentum is not None and layer.momentum < thresholds.min_momentum:
            yield Hit(layer.path, f"momentum {num(layer.momentum)} is below {num(thresholds.min_momentum)}: "
                                  f"every update keeps only {num(layer.momentum * 100)}% of the old moving "
                                  f"statistics (Keras default 0.99)",
                      hint=f"Keras momentum is 1 - PyTorch momentum: use {num(1 - layer.momentum)} "
                           f"(or Keras' default 0.99)")


def frozen_bn(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.trainable is False:
            yield Hit(layer.path, "trainable=False: the layer runs in inference mode even during fit, "
                                  "with its moving statistics, gamma and beta frozen")


def fp16_epsilon(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        policy = layer.dtype_policy or description.dtype_policy
        half = policy in FLOAT16_POLICIES or layer.stored_dtype == "float16"
        if half and layer.epsilon is not None and layer.epsilon < FLOAT16_SMALLEST_NORMAL:
            why = f"dtype policy {policy}" if policy in FLOAT16_POLICIES else "float16 weights"
            yield Hit(layer.path, f"epsilon {num(layer.epsilon)} is below {num(FLOAT16_SMALLEST_NORMAL)}, the "
                                  f"smallest normal float16, under {why}")
