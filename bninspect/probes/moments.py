"""Streaming per-channel mean and variance: the parallel (Chan et al.) form of Welford's update.

Each batch arrives already reduced to per-channel (count, mean, M2), where M2 is the sum of squared
deviations from the batch's own mean. Merging those summaries in float64 gives the statistics of
all values seen so far, with memory that depends only on the number of channels, and without the
cancellation of the naive sum/sum-of-squares formula (BN inputs often have |mean| >> std).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ChannelMoments:
    """Per-channel statistics of the finite values seen; `non_finite` counts the NaN/Inf left out."""

    count: np.ndarray
    mean: np.ndarray
    variance: np.ndarray  # population variance (divides by count), like BN's batch variance
    non_finite: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.count.size)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)


def merge(count_a: np.ndarray, mean_a: np.ndarray, m2_a: np.ndarray,
          count_b: np.ndarray, mean_b: np.ndarray, m2_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan's pairwise combination of two (count, mean, M2) summaries, channel by channel.

    A side with count 0 contributes nothing, whatever its mean holds (it may be NaN).
    """
    count = count_a + count_b
    with np.errstate(invalid="ignore", divide="ignore"):
        weight_b = np.where(count > 0, count_b / np.where(count > 0, count, 1.0), 0.0)
        safe_mean_a = np.where(count_a > 0, mean_a, 0.0)
        safe_mean_b = np.where(count_b > 0, mean_b, 0.0)
        delta = safe_mean_b - safe_mean_a
        mean = np.where(count_a > 0, safe_mean_a + delta * weight_b, safe_mean_b)
        m2 = (np.where(count_a > 0, m2_a, 0.0) + np.where(count_b > 0, m2_b, 0.0)
              + delta * delta * count_a * weight_b)
    return count, mean, m2


class RunningMoments:
    """Accumulates (count, mean, M2, non_finite) summaries for a fixed number of channels.

    Deliberately mutable: it is the one place state grows during a pass, and it grows by nothing.
    """

    def __init__(self, channels: int):
        self.count = np.zeros(channels, dtype=np.float64)
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)
        self.non_finite = np.zeros(channels, dtype=np.float64)

    def add_summary(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray,
                    non_finite: np.ndarray | None = None) -> None:
        self.count, self.mean, self.m2 = merge(self.count, self.mean, self.m2,
                                               np.asarray(count, np.float64), np.asarray(mean, np.float64),
                                               np.asarray(m2, np.float64))
        if non_finite is not None:
            self.non_finite = self.non_finite + np.asarray(non_finite, np.float64)

    def add_values(self, values: np.ndarray, channel_axis: int = -1) -> None:
        """Add raw values (any shape); statistics are kept per index of `channel_axis`."""
        values = np.moveaxis(np.asarray(values, dtype=np.float64), channel_axis, -1)
        flat = values.reshape(-1, values.shape[-1])
        finite = np.isfinite(flat)
        count = finite.sum(axis=0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, flat, 0.0).sum(axis=0) / np.where(count > 0, count, 1.0)
            m2 = (np.where(finite, flat - mean, 0.0) ** 2).sum(axis=0)
        self.add_summary(count, mean, m2, (~finite).sum(axis=0))

    def result(self) -> ChannelMoments:
        with np.errstate(invalid="ignore", divide="ignore"):
            variance = np.where(self.count > 0, self.m2 / np.where(self.count > 0, self.count, 1.0), np.nan)
            mean = np.where(self.count > 0, self.mean, np.nan)
        return ChannelMoments(count=self.count.copy(), mean=mean, variance=np.maximum(variance, 0.0),
                              non_finite=self.non_finite.copy())


def from_sums(count: np.ndarray, s1: np.ndarray, s2: np.ndarray, center: np.ndarray,
              bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, M2, non_finite) of one batch from its sums: `s1` and `s2` sum the deviations
    from `center` (0 in one pass, the device's batch mean in two) and their squares, so mean =
    center + s1 / count and M2 = s2 - s1^2 / count, in float64."""
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(count > 0, s1 / np.where(count > 0, count, 1.0), 0.0)
        mean = np.where(count > 0, center + offset, 0.0)
        m2 = s2 - count * np.square(offset)
    return count, mean, m2, bad
