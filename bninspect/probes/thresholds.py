"""Thresholds of the dynamic rules BN101-BN104, their defaults, and where they come from.

Keys (all numbers >= 0). The same names, kebab- or snake_case, go under
`[tool.bninspect.thresholds]` in pyproject.toml (`bninspect.config.Thresholds`):

- `drift_mean_shift` (0.5): a channel drifts when its observed input mean is further than this many
  stored standard deviations from the moving mean: |mean - moving_mean| / sqrt(moving_var + eps).
- `drift_variance_ratio` (2.0): a channel drifts when (var + eps) / (moving_var + eps) is above
  this or below its inverse. On the training distribution, converged statistics give 0.9-1.1.
- `drift_channel_fraction` (0.25): BN101 flags a layer when more than this fraction of its channels
  drift. One odd channel is normal; a quarter of them is a different input distribution.
- `train_inference_gap` (0.1): BN102 when predictions with BN on batch statistics differ from
  predictions on the moving statistics by more than this: ||y_batch - y_moving|| / ||y_moving||,
  and some BN layer's moving statistics disagree with the data (BN101's test, with the drift
  thresholds above). A gap alone is mostly batch-to-batch noise: healthy trained CNNs show
  ~15% at the probe's default batch of 32 (17-24% at 8, 5-9% at 128).
- `batch_consistency` (1e-4): BN102 when a sample predicted alone differs from the same sample
  predicted inside a batch by more than this, relative to the largest output magnitude (float
  noise is ~1e-7).
- `dead_channel_variance` (1e-12): BN104 when a channel's input variance on the data is at most
  this times max(1, mean^2): constant at float32 precision.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Mapping

from bninspect.errors import UsageProblem
from bninspect.thresholds import Thresholds


class ThresholdError(UsageProblem):
    """A threshold has a value the rules cannot use."""


_DEFAULTS = Thresholds()  # one place for every default: the config's


@dataclass(frozen=True)
class ProbeThresholds:
    drift_mean_shift: float = _DEFAULTS.drift_mean_shift
    drift_variance_ratio: float = _DEFAULTS.drift_variance_ratio
    drift_channel_fraction: float = _DEFAULTS.drift_channel_fraction
    train_inference_gap: float = _DEFAULTS.train_inference_gap
    batch_consistency: float = _DEFAULTS.batch_consistency
    dead_channel_variance: float = _DEFAULTS.dead_channel_variance
    # BN018's limit: BN101 on a layer with unconverged statistics says so.
    unconverged_share: float = _DEFAULTS.unconverged_share

    def to_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(self)}


KEYS = tuple(item.name for item in fields(ProbeThresholds))


def _validated(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ThresholdError(f"threshold {key} must be a finite number, not {value!r}")
    if value < 0:
        raise ThresholdError(f"threshold {key} must be >= 0, not {value!r}")
    if key == "drift_variance_ratio" and value < 1:
        raise ThresholdError(f"threshold drift_variance_ratio must be >= 1 (it is used as x and 1/x), not {value!r}")
    if key == "unconverged_share" and value > 1:
        raise ThresholdError(f"threshold unconverged_share is a share of the initial values (0..1), not {value!r}")
    if key == "drift_channel_fraction" and value > 1:
        raise ThresholdError(f"threshold drift_channel_fraction is a fraction of channels (0..1), not {value!r}")
    return float(value)


def resolve(thresholds: Mapping[str, float] | object | None) -> ProbeThresholds:
    """Defaults overridden by the probe's keys in `thresholds`.

    `thresholds` is a mapping (kebab- or snake_case keys) or an object with the keys as attributes
    (`bninspect.config.Thresholds`). Keys that are not the probe's are ignored: the same mapping
    carries the static rules' thresholds too.
    """
    if thresholds is None:
        return ProbeThresholds()
    if isinstance(thresholds, Mapping):
        given = {str(key).replace("-", "_"): value for key, value in thresholds.items()}
    else:
        given = {key: getattr(thresholds, key) for key in KEYS if hasattr(thresholds, key)}
    overrides = {key: _validated(key, value) for key, value in given.items() if key in KEYS}
    return replace(ProbeThresholds(), **overrides)
