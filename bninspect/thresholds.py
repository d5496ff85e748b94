"""The numbers the rules compare against (`[tool.bninspect.thresholds]`).

Bottom layer: the static rules and the probes read `Thresholds`; `bninspect.config` reads it from
the user's configuration.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """Numbers the rules compare against. Config keys are the field names in kebab-case.

    Static rules:
      collapsed_variance_factor  BN005: a channel is collapsed when moving variance < factor * epsilon.
      collapsed_variance_scale   BN005: a collapsed channel is reported only when its effective scale
                                 abs(gamma) / sqrt(moving_variance + epsilon) is above this (it
                                 amplifies the channel at inference); gamma ~ 0 channels are not.
      extreme_scale              BN007: abs(gamma) / sqrt(moving_variance + epsilon) above this.
      min_momentum               BN008: momentum below this looks like a PyTorch value.
      zero_gamma                 BN006: abs(gamma) at or below this counts as zero.
      unconverged_share          BN018: the share momentum ** steps of the initial 0/1 still in the
                                 moving statistics above which they count as unconverged (0..1).
    Dynamic probes (BN101-BN104; bninspect.probes.thresholds reads these fields):
      drift_mean_shift           BN101: a channel drifts when abs(data mean - moving mean) /
                                 sqrt(moving variance + epsilon) is above this.
      drift_variance_ratio       BN101: a channel drifts when (data var + eps) / (moving var + eps) is
                                 above this or below its inverse (must be >= 1).
      drift_channel_fraction     BN101: a layer drifts when more than this fraction (0..1) of its
                                 channels drift.
      train_inference_gap        BN102: ||y_batch_stats - y_moving_stats|| / ||y_moving_stats|| above this.
      batch_consistency          BN102: in inference mode, one sample predicted alone vs inside a batch
                                 may differ by at most this, relative to the largest output (float noise).
      dead_channel_variance      BN104: a channel is constant when its BN input variance on the data is
                                 at most this times max(1, mean^2).
    """

    collapsed_variance_factor: float = 1.0
    collapsed_variance_scale: float = 10.0
    extreme_scale: float = 1e3
    min_momentum: float = 0.5
    zero_gamma: float = 1e-5
    unconverged_share: float = 0.05
    drift_mean_shift: float = 0.5
    drift_variance_ratio: float = 2.0
    drift_channel_fraction: float = 0.25
    train_inference_gap: float = 0.1
    batch_consistency: float = 1e-4
    dead_channel_variance: float = 1e-12

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(item.name.replace("_", "-") for item in fields(cls))
