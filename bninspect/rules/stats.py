"""Rules over one BN layer's arrays and scalar config: BN001-BN008, BN013, BN014, BN016, BN018.

Each check is a pure function `(ModelDescription, Thresholds) -> Iterator[Hit]`. Comparisons with
the initial values (mean 0, variance 1, gamma 1, beta 0) are exact on purpose: training moves them
at the first update, so an exact initial value means "never updated", not "small".

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from bninspect.findings import HIGHER, LOWER, Quantity
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


def measured(label: str, value: float, worse: str | None = HIGHER) -> Quantity:
    """A measured number of a message, written as `num` writes it; `label` reads with the number
    in place of `{}`."""
    return Quantity(label, float(value), num(float(value)), worse)


def counted(label: str, count: int | np.integer, worse: str | None = HIGHER) -> Quantity:
    """A count of a message (channels, layers), written in full as the messages write counts."""
    return Quantity(label, float(count), str(int(count)), worse)


def channel_total(layer: BNLayer) -> Quantity:
    """The layer's channel count: a number of the message, but no measure of how bad it is."""
    return counted("{} channels", layer.channels, worse=None)


def channel_list(mask: np.ndarray, limit: int = 6) -> str:
    indices = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    more = f" and {indices.size - limit} more" if indices.size > limit else ""
    return f"channel{'s' if indices.size > 1 else ''} {shown}{more}"


def _epsilon(layer: BNLayer) -> tuple[float, str]:
    if layer.epsilon is not None:
        return layer.epsilon, num(layer.epsilon)
    return DEFAULT_EPSILON, f"{num(DEFAULT_EPSILON)} (assumed, no config)"


def untrained_moving_stats(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.channels and layer.initial_channels().all():
            yield Hit(layer.path, f"moving mean is exactly 0 and moving variance exactly 1 in all "
                                  f"{layer.channels} channels: the statistics were never updated",
                      quantities=(channel_total(layer),))


def partially_untrained(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        initial = layer.initial_channels()
        if initial.any() and not initial.all():
            yield Hit(layer.path, f"{int(initial.sum())} of {layer.channels} channels still hold the initial "
                                  f"statistics (mean 0, variance 1): {channel_list(initial)}",
                      quantities=(counted("{} channels at the initial statistics", initial.sum()),))


# float32 updates round: a run from the initial values can leave a channel's variance a hair under
# momentum ** steps. "Clearly below" means more than this relative margin below.
SHARE_ROUNDING = 1e-3


def initial_share(momentum: float | None, steps: int | None) -> float | None:
    """The share `momentum ** steps` of the initial values still in the moving statistics after
    `steps` updates (Keras: new = momentum * old + (1 - momentum) * batch)."""
    if momentum is None or steps is None or not 0.0 <= momentum < 1.0:
        return None
    return float(momentum) ** steps


def steps_to_reach(momentum: float, share: float) -> int:
    """How many updates leave at most `share` of the initial values."""
    return max(1, math.ceil(math.log(share) / math.log(momentum))) if 0 < momentum < 1 and 0 < share < 1 else 1


def unconverged_layers(description: ModelDescription, limit: float) -> list[tuple[BNLayer, float]]:
    """(layer, remaining share of the initial 0/1) for the layers BN018 reports.

    Only trainable layers with updated statistics (not BN001) when the file records the step
    count. A run from the initial values leaves moving_variance >= share in every channel (the
    initial 1 contributes share * 1, the data a non-negative amount); a channel clearly below it
    means the layer started from other statistics (a fine-tune with a fresh optimizer), whose
    steps the counter does not tell.
    """
    found: list[tuple[BNLayer, float]] = []
    for layer in description.bn_layers:
        share = initial_share(layer.momentum, description.training_steps)
        if share is None or share <= limit or layer.trainable is False or not layer.channels:
            continue
        variance = layer.moving_variance
        if layer.initial_channels().all() or not np.all(np.isfinite(variance)):
            continue
        if float(variance.min()) < share * (1.0 - SHARE_ROUNDING):
            continue
        found.append((layer, share))
    return found


def unconverged_message(steps: int, momentum: float, share: float, limit: float) -> str:
    return (f"after {steps} training steps at momentum {num(momentum)}, {share:.0%} of the moving statistics "
            f"are still the initial 0/1 (below {limit:.0%} needs {steps_to_reach(momentum, limit)} steps)")


def unconverged_quantities(momentum: float, share: float) -> tuple[Quantity, ...]:
    """The numbers of `unconverged_message` that differ between layers (the step count does not)."""
    return (Quantity("{} still initial", share, f"{share:.0%}"), measured("momentum {}", momentum, worse=None))


def unconverged_moving_stats(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    limit = thresholds.unconverged_share
    for layer, share in unconverged_layers(description, limit):
        # unconverged_layers reports layers only when the step count and the momentum are known
        momentum = float(layer.momentum)
        yield Hit(layer.path, unconverged_message(int(description.training_steps), momentum, share, limit),
                  quantities=unconverged_quantities(momentum, share))


def untrained_affine(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.trainable is False or not layer.channels or layer.initial_channels().all():
            continue
        # Only the arrays that exist: scale=False has no gamma, center=False no beta.
        checks = [(name, values, initial) for name, values, initial in
                  (("gamma", layer.gamma, 1.0), ("beta", layer.beta, 0.0)) if values is not None]
        if checks and all(np.all(values == initial) for _, values, initial in checks):
            what = " and ".join(f"{name} is exactly {num(initial)}" for name, _, initial in checks)
            yield Hit(layer.path, f"{what} in all {layer.channels} channels although the moving "
                                  f"statistics were updated: the affine parameters never trained",
                      quantities=(channel_total(layer),))


def non_finite(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        parts = []
        affected = np.zeros(layer.channels, dtype=bool)
        for name, values in layer.arrays().items():
            finite = np.isfinite(values)
            if finite.all():
                continue  # the common case: one test instead of counting NaN and Inf separately
            affected |= ~finite
            nans = int(np.isnan(values).sum())
            infs = int(np.isinf(values).sum())
            if nans:
                parts.append(f"{name} {nans} NaN")
            if infs:
                parts.append(f"{name} {infs} Inf")
        if parts:
            yield Hit(layer.path, f"non-finite values in {int(affected.sum())} of {layer.channels} channels: "
                                  f"{', '.join(parts)}",
                      quantities=(counted("{} channels with NaN/Inf", affected.sum()),))


def negative_variance(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        negative = layer.moving_variance < 0  # NaN compares False: BN003 reports those
        if negative.any():
            lowest = float(layer.moving_variance[negative].min())
            yield Hit(layer.path, f"{int(negative.sum())} of {layer.channels} channels have a negative moving "
                                  f"variance (min {num(lowest)}): {channel_list(negative)}",
                      quantities=(counted("{} channels with a negative variance", negative.sum()),
                                  measured("lowest variance {}", lowest, worse=LOWER)))


def collapsed_variance(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    factor = thresholds.collapsed_variance_factor
    limit_scale = thresholds.collapsed_variance_scale
    for layer in description.bn_layers:
        epsilon, epsilon_text = _epsilon(layer)
        variance = layer.moving_variance
        # Negative (BN004) and NaN (BN003) variances are reported by their own rules.
        collapsed = (variance >= 0) & (variance < factor * epsilon)
        if not collapsed.any():
            continue
        # A collapsed channel only matters when inference amplifies it: with gamma ~ 0 its output
        # is the constant beta whatever the variance (BN006 names those).
        scale = effective_scale(layer)
        amplified = collapsed & (scale > limit_scale)
        if not amplified.any():
            continue
        limit = f"epsilon {epsilon_text}" if factor == 1 else f"{num(factor)} x epsilon {epsilon_text}"
        quiet = int(collapsed.sum() - amplified.sum())
        also = (f"; {quiet} more collapsed channels have effective scale at most {num(limit_scale)}"
                if quiet else "")
        largest = float(scale[amplified].max())
        yield Hit(layer.path, f"{int(amplified.sum())} of {layer.channels} channels have moving variance "
                              f"below {limit} (min {num(float(variance[amplified].min()))}) and effective scale "
                              f"|gamma|/sqrt(var+eps) up to {num(largest)}, above "
                              f"{num(limit_scale)}: {channel_list(amplified)}{also}",
                  quantities=(counted("{} amplified collapsed channels", amplified.sum()),
                              measured("effective scale up to {}", largest)))


def zero_gamma(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.gamma is None:
            continue
        zero = np.abs(layer.gamma) <= thresholds.zero_gamma
        if zero.any():
            yield Hit(layer.path, f"{int(zero.sum())} of {layer.channels} channels have |gamma| <= "
                                  f"{num(thresholds.zero_gamma)} (they output the constant beta): "
                                  f"{channel_list(zero)}",
                      quantities=(counted("{} channels with gamma ~ 0", zero.sum()),))


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
            largest = float(scale[extreme].max())
            yield Hit(layer.path, f"{int(extreme.sum())} of {layer.channels} channels have effective scale "
                                  f"|gamma|/sqrt(var+eps) above {num(thresholds.extreme_scale)} "
                                  f"(max {num(largest)})",
                      quantities=(counted("{} channels above the limit", extreme.sum()),
                                  measured("effective scale up to {}", largest)))


def pytorch_momentum(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    for layer in description.bn_layers:
        if layer.momentum is not None and layer.momentum < thresholds.min_momentum:
            yield Hit(layer.path, f"momentum {num(layer.momentum)} is below {num(thresholds.min_momentum)}: "
                                  f"every update keeps only {num(layer.momentum * 100)}% of the old moving "
                                  f"statistics (Keras default 0.99)",
                      hint=f"Keras momentum is 1 - PyTorch momentum: use {num(1 - layer.momentum)} "
                           f"(or Keras' default 0.99)",
                      quantities=(measured("momentum {}", layer.momentum, worse=LOWER),))


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
                                  f"smallest normal float16, under {why}",
                      quantities=(measured("epsilon {}", layer.epsilon, worse=LOWER),))
