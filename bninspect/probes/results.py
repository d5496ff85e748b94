"""What one probe run measured: per-BN-layer statistics, the two prediction comparisons, findings.

Plain numpy and frozen dataclasses, so the rules and reporters work without TensorFlow.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from bninspect.findings import Finding
from bninspect.model import ModelDescription
from bninspect.probes.moments import ChannelMoments
from bninspect.probes.thresholds import ProbeThresholds
from bninspect.untrusted import redact


@dataclass(frozen=True, eq=False)
class LayerProbe:
    """One BN layer: its stored statistics and what its input and output looked like on the data."""

    path: str
    # Position in the order the data reached the BN layers (0 = the first BN the input meets);
    # None for a layer the data never reached (e.g. an unused branch).
    order: int | None
    axis: tuple[int, ...]
    epsilon: float
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    input: ChannelMoments
    output: ChannelMoments
    # How many times the layer ran (batches x calls per batch; a shared layer runs more than once).
    calls: int
    # False when the output statistics were derived from the input's through the layer's inference
    # affine map (stock Keras BN in inference mode) rather than reduced from the output tensor.
    output_measured: bool = True

    @property
    def channels(self) -> int:
        return int(self.moving_mean.size)

    @property
    def reached(self) -> bool:
        return self.calls > 0

    @property
    def stored_std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.moving_variance, 0.0) + self.epsilon)

    @property
    def mean_shift(self) -> np.ndarray:
        """|observed mean - moving mean| in units of the stored std, per channel."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(self.input.mean - self.moving_mean) / self.stored_std

    @property
    def variance_ratio(self) -> np.ndarray:
        """(observed variance + eps) / (moving variance + eps), per channel: 1 when the stored scale fits.

        Epsilon is on both sides because it is part of what the layer divides by: a channel whose
        variance is far below epsilon is barely normalised, and its raw ratio would be noise.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.input.variance + self.epsilon) / (np.maximum(self.moving_variance, 0.0) + self.epsilon)


@dataclass(frozen=True)
class GapMeasure:
    """BN on batch statistics vs BN on moving statistics, on the first batches of the data."""

    relative_difference: float  # ||y_batch_stats - y_inference|| / ||y_inference|| (L2 over all outputs)
    batches: int
    batch_size: int


@dataclass(frozen=True)
class ConsistencyMeasure:
    """Samples predicted alone vs inside their batch, both in inference mode."""

    relative_difference: float  # max |y_alone - y_in_batch| / max |y_in_batch|
    worst_sample: int
    samples: int
    batch_size: int


@dataclass(frozen=True)
class ProbeReport:
    """The result of `run_probe`; `to_dict()` is the `probe` entry of the JSON model entry."""

    source: str
    keras: str  # which Keras ran the model, e.g. "keras 3.15.1" or "tf_keras 2.21.0"
    samples: int
    batch_size: int
    batches: int
    seconds: float
    layers: tuple[LayerProbe, ...]
    findings: tuple[Finding, ...]
    thresholds: ProbeThresholds
    gap: GapMeasure | None = None
    consistency: ConsistencyMeasure | None = None
    # The static reading of the model file (None for an in-memory model), for the JSON model entry.
    description: ModelDescription | None = field(default=None, compare=False, repr=False)

    def with_findings(self, select: Callable[[Iterable[Finding]], Iterable[Finding]]) -> "ProbeReport":
        """The same report with its findings passed through `select` (e.g. `Settings.apply`)."""
        return replace(self, findings=tuple(select(self.findings)))

    def named(self, source: str) -> "ProbeReport":
        """The same report naming the model `source` (redacted), its findings too: a model at a URL
        runs from a downloaded copy, whose temporary path is gone once the report is shown."""
        shown = redact(source)
        return replace(self, source=shown, findings=tuple(replace(finding, source=shown) for finding in self.findings),
                       description=replace(self.description, source=shown) if self.description else None)

    def layer(self, path: str) -> LayerProbe | None:
        return next((layer for layer in self.layers if layer.path == path), None)

    def findings_for(self, path: str | None) -> tuple[Finding, ...]:
        return tuple(finding for finding in self.findings if finding.layer == path)

    def to_dict(self) -> dict:
        """The `probe` entry of the JSON model entry. The findings themselves are the entry's
        `findings`; each layer lists its finding codes."""
        return {
            "keras": self.keras,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "thresholds": self.thresholds.to_dict(),
            "train_inference_gap": None if self.gap is None else {
                "relative_difference": self.gap.relative_difference, "batches": self.gap.batches,
                "batch_size": self.gap.batch_size},
            "batch_consistency": None if self.consistency is None else {
                "relative_difference": self.consistency.relative_difference,
                "worst_sample": self.consistency.worst_sample, "samples": self.consistency.samples,
                "batch_size": self.consistency.batch_size},
            "layers": [_layer_dict(layer, self.thresholds, self.findings_for(layer.path))
                       for layer in self.layers],
        }


def constant_channels(layer: LayerProbe, thresholds: ProbeThresholds) -> np.ndarray:
    """Channels whose input took one value on the whole data (needs two values to tell)."""
    moments = layer.input
    with np.errstate(invalid="ignore", over="ignore"):
        # Relative to the mean: a constant 100.0 summed in float32 leaves ~1e-14 * 100^2 of variance.
        limit = thresholds.dead_channel_variance * np.maximum(1.0, np.square(moments.mean))
        return (moments.count >= 2) & (moments.variance <= limit)


def drifting_channels(layer: LayerProbe, thresholds: ProbeThresholds) -> np.ndarray:
    """Channels whose input mean or variance disagrees with the moving statistics.

    Constant channels are judged by their mean only: their variance ratio is 0 by definition, and
    BN104 reports them.
    """
    shift = layer.mean_shift
    ratio = layer.variance_ratio
    constant = constant_channels(layer, thresholds)
    with np.errstate(invalid="ignore"):
        shifted = shift > thresholds.drift_mean_shift
        rescaled = ((ratio > thresholds.drift_variance_ratio) | (ratio < 1.0 / thresholds.drift_variance_ratio)) & ~constant
    return (shifted | rescaled) & (layer.input.count > 0)



def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"min": None, "median": None, "max": None}
    return {"min": float(finite.min()), "median": float(np.median(finite)), "max": float(finite.max())}


def _layer_dict(layer: LayerProbe, thresholds: ProbeThresholds, findings) -> dict:
    return {
        "path": layer.path,
        "order": layer.order,
        "channels": layer.channels,
        "calls": layer.calls,
        "input": {
            "mean_shift": _summary(layer.mean_shift),
            "variance_ratio": _summary(layer.variance_ratio),
            "mean": _summary(layer.input.mean),
            "std": _summary(layer.input.std),
            "values": int(layer.input.count.sum()),
            "non_finite": int(layer.input.non_finite.sum()),
            "drifting_channels": int(drifting_channels(layer, thresholds).sum()),
            "constant_channels": int(constant_channels(layer, thresholds).sum()),
        },
        "output": {
            "mean": _summary(layer.output.mean),
            "std": _summary(layer.output.std),
            "values": int(layer.output.count.sum()),
            "non_finite": int(layer.output.non_finite.sum()),
            "measured": layer.output_measured,
        },
        "findings": sorted({finding.code for finding in findings}),
    }
