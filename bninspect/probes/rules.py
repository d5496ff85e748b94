"""The dynamic rules BN101-BN104: pure functions from measured statistics to findings.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from bninspect.findings import Finding, Quantity, Severity
from bninspect.model import ModelDescription
from bninspect.probes.results import ConsistencyMeasure, GapMeasure, LayerProbe, constant_channels, drifting_channels
from bninspect.probes.thresholds import ProbeThresholds
from bninspect.rules.stats import unconverged_layers
from bninspect.summary import fmt_number

# Scales people commonly apply to image inputs; a drift that matches one of them is named in the hint.
_COMMON_SCALES = {255.0: "1/255", 127.5: "1/127.5", 256.0: "1/256"}


def _measured(label: str, value: float) -> Quantity:
    """A measured number of a message as grouped outputs compare it (the higher, the worse)."""
    return Quantity(label, float(value), fmt_number(float(value)))


def _counted(label: str, count: int) -> Quantity:
    """A count of a message (channels, values) as grouped outputs compare it (the higher, the worse)."""
    return Quantity(label, float(count), str(int(count)))


def _is_drifting(layer: LayerProbe, thresholds: ProbeThresholds) -> bool:
    live = int((layer.input.count > 0).sum())
    return live > 0 and drifting_channels(layer, thresholds).sum() > thresholds.drift_channel_fraction * live


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def _scale_hint(layer: LayerProbe) -> str:
    """For the first BN layer: say how much wider the inputs are than in training, if it is clear."""
    width = np.sqrt(_median(layer.variance_ratio))
    if not np.isfinite(width) or width <= 0:
        return ""
    for scale, flag in _COMMON_SCALES.items():
        if abs(width / scale - 1) < 0.35:
            return f" The inputs are ~{width:.0f}x wider than in training: try `--rescale {flag}`."
        if abs(width * scale - 1) < 0.35:
            return f" The inputs are ~{1 / width:.0f}x narrower than in training: the model was trained on 0-{scale:g} data."
    return ""


def _drift_findings(source: str, layers: tuple[LayerProbe, ...], thresholds: ProbeThresholds,
                    unconverged: Mapping[str, float] | None = None, steps: int | None = None) -> list[Finding]:
    reached = sorted((layer for layer in layers if layer.reached), key=lambda layer: layer.order)
    drifting = [layer for layer in reached if _is_drifting(layer, thresholds)]
    findings = []
    for layer in drifting:
        count = int(drifting_channels(layer, thresholds).sum())
        largest_shift = float(np.nanmax(layer.mean_shift))
        numbers = (f"{count} of {layer.channels} channels drift from the moving statistics "
                   f"(mean shift median {fmt_number(_median(layer.mean_shift))}, max {fmt_number(largest_shift)} stored std; "
                   f"variance ratio median {fmt_number(_median(layer.variance_ratio))})")
        quantities = (_counted("{} drifting channels", count), _measured("mean shift up to {} stored std", largest_shift))
        first = drifting[0]
        if layer is first and layer.order == 0:
            message = f"first drifting layer, and the first BN layer the data reaches: {numbers}"
            hint = ("Drift at the first BN layer usually means the input preprocessing differs from training "
                    "(e.g. pixels 0-255 instead of 0-1, another mean/std normalisation, BGR vs RGB)."
                    + _scale_hint(layer))
        elif layer is first:
            message = f"first drifting layer: {numbers}"
            hint = ("The data differs from the training data at this depth, or the moving statistics are stale: "
                    "check the data, or recompute the statistics on representative data (`bninspect recalibrate`).")
        else:
            message = f"{numbers}; downstream of the first drifting layer {first.path}"
            hint = f"Drift propagates: fix the first drifting layer ({first.path}) first."
        share = (unconverged or {}).get(layer.path)
        if share is not None:
            message += (f"; explained by unconverged moving statistics (BN018): after {steps} training steps "
                        f"{share:.0%} of them are still the initial 0/1")
            hint = ("The moving statistics never converged: recompute them from training data with "
                    "`bninspect recalibrate MODEL --data FILE -o OUT`, or train longer.")
        findings.append(Finding("BN101", "stats-drift", Severity.WARNING, source, layer.path, message, hint,
                                quantities))
    return findings


def _non_finite_findings(source: str, layers: tuple[LayerProbe, ...]) -> list[Finding]:
    findings = []
    reached = sorted((layer for layer in layers if layer.reached), key=lambda layer: layer.order)
    affected = [layer for layer in reached if layer.input.non_finite.sum() or layer.output.non_finite.sum()]
    for layer in affected:
        bad_in, bad_out = int(layer.input.non_finite.sum()), int(layer.output.non_finite.sum())
        total_in = bad_in + int(layer.input.count.sum())
        total_out = bad_out + int(layer.output.count.sum())
        message = f"{bad_in} of {total_in} input values and {bad_out} of {total_out} output values are NaN/Inf"
        if bad_in:
            hint = ("The data or a layer upstream produces NaN/Inf: check np.isfinite on the input data and "
                    "the layers before this one.")
        else:
            hint = ("The input is finite but the output is not: moving_variance + epsilon is ~0 or gamma is huge "
                    "in some channel (see BN003, BN005, BN007 from `bninspect MODEL`).")
        if layer is not affected[0]:
            message += f"; downstream of {affected[0].path}"
        quantities = (_counted("{} non-finite input values", bad_in), _counted("{} non-finite output values", bad_out))
        findings.append(Finding("BN103", "non-finite-activation", Severity.ERROR, source, layer.path, message, hint,
                                quantities))
    return findings


def _dead_channel_findings(source: str, layers: tuple[LayerProbe, ...], thresholds: ProbeThresholds) -> list[Finding]:
    findings = []
    for layer in layers:
        constant = np.flatnonzero(constant_channels(layer, thresholds))
        if constant.size == 0:
            continue
        examples = ", ".join(f"{int(c)} (= {fmt_number(float(layer.input.mean[c]))})" for c in constant[:5])
        more = ", ..." if constant.size > 5 else ""
        message = f"{constant.size} of {layer.channels} channels have a constant input on the data: channels {examples}{more}"
        hint = ("Dead units upstream (a ReLU that never fires, zeroed filters) or constant data: prune the channels, "
                "or check the data and the layers that feed this one.")
        findings.append(Finding("BN104", "dead-channel", Severity.INFO, source, layer.path, message, hint,
                                (_counted("{} constant channels", constant.size),)))
    return findings


def first_mismatched_layer(layers: tuple[LayerProbe, ...], thresholds: ProbeThresholds) -> LayerProbe | None:
    """The first BN layer (graph order) whose moving statistics disagree with the data, by BN101's test.

    The train/inference gap is measured on a few batches, and batch statistics are noisy: on a
    healthy trained CNN, predictions with the statistics of 32 samples differ from predictions with
    the moving statistics by ~15% (softmax outputs near a decision boundary move a lot), and the
    smaller the probe's batches, the more (17-24% at 8). That noise says nothing about the model. A gap that
    matters is systematic: the moving statistics differ from what the layer sees over all the data
    (Dropout before BN during training, stale statistics), which is what the per-layer moments,
    pooled over every sample, measure.
    """
    reached = sorted((layer for layer in layers if layer.reached), key=lambda layer: layer.order)
    return next((layer for layer in reached if _is_drifting(layer, thresholds)), None)


def _gap_findings(source: str, layers: tuple[LayerProbe, ...], gap: GapMeasure | None,
                  consistency: ConsistencyMeasure | None, thresholds: ProbeThresholds) -> list[Finding]:
    findings = []
    mismatched = first_mismatched_layer(layers, thresholds) if gap is not None else None
    if gap is not None and gap.relative_difference > thresholds.train_inference_gap and mismatched is not None:
        findings.append(Finding(
            "BN102", "train-inference-gap", Severity.WARNING, source, None,
            f"predictions with BN on batch statistics differ from predictions on the moving statistics by "
            f"{gap.relative_difference:.1%} (relative L2, {gap.batches} batch(es) of {gap.batch_size}; "
            f"threshold {thresholds.train_inference_gap:.1%}), and the moving statistics of {mismatched.path} "
            f"disagree with the data (BN101)",
            "The moving statistics do not describe the activations the model sees at inference: recompute them "
            "on representative data (`bninspect recalibrate`), avoid Dropout right before BN (variance shift), "
            "and train with batches large enough for stable batch statistics."))
    if consistency is not None and consistency.relative_difference > thresholds.batch_consistency:
        findings.append(Finding(
            "BN102", "train-inference-gap", Severity.WARNING, source, None,
            f"in inference mode, sample {consistency.worst_sample} predicted alone differs from the same sample "
            f"inside a batch of {consistency.batch_size} by {consistency.relative_difference:.3g} (relative; "
            f"threshold {thresholds.batch_consistency:g}): the prediction depends on the other samples",
            "A layer uses batch statistics at inference: look for `BatchNormalization()(x, training=True)` in the "
            "model code, or custom layers that ignore the `training` argument."))
    return findings


def evaluate(source: str, layers: tuple[LayerProbe, ...], gap: GapMeasure | None,
             consistency: ConsistencyMeasure | None, thresholds: ProbeThresholds,
             description: ModelDescription | None = None) -> tuple[Finding, ...]:
    """Every dynamic finding. `description`, the static reading of the model, tells which layers
    BN018 reports, so that their BN101 names the cause."""
    unconverged: dict[str, float] = {}
    steps = None
    if description is not None:
        unconverged = {layer.path: share for layer, share in
                       unconverged_layers(description, thresholds.unconverged_share)}
        steps = description.training_steps
    return tuple(_non_finite_findings(source, layers) + _drift_findings(source, layers, thresholds, unconverged, steps)
                 + _gap_findings(source, layers, gap, consistency, thresholds)
                 + _dead_channel_findings(source, layers, thresholds))
