"""Recompute BN moving statistics from data, as PyTorch's `update_bn` does.

One pass over the data with the chosen BN layers normalising with their batch's own statistics
(training=True for them only; Dropout and every other layer stay in inference mode), exactly as
during training, while each chosen layer's input is reduced to per-channel (count, mean, M2) and
merged over all batches in float64. The result is the cumulative statistics of everything the layer
saw, every sample weighted equally, not an exponential moving average: the same numbers whatever
the batch order, and for the first BN layer exactly the mean and (population) variance of its input
over the data. Keras stores the population variance (no Bessel correction), so that is what is
written.

The live model's variables are left as they were; the caller writes the numbers into a file.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bninspect.errors import UsageProblem
from bninspect.probes.instrument import BNTap, Instrumentation, find_bn_layers
from bninspect.probes.loading import LoadedModel
from bninspect.probes.run_errors import model_run
from bninspect.recalibration import RecalibratedLayer
from bninspect.probes.runner import merged_moments, one_pass, open_model_and_data, restore, snapshot


@dataclass(frozen=True)
class Recalibration:
    loaded: LoadedModel
    samples: int
    batches: int
    layers: tuple[RecalibratedLayer, ...]
    # BN layers that keep their statistics, and why: not selected, or not reached by the data.
    kept: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = ()  # what was done differently from what was asked, and why


def matches(path: str, pattern: str) -> bool:
    """A glob over the layer path or its last component, as `--layer` does elsewhere."""
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def recompute(model: str | os.PathLike | Any, data: Any, *, batch_size: int = 32, limit: int | None = None,
              rescale: float | str | None = None, layers: str | None = None, unsafe: bool = False,
              custom_objects: Mapping[str, Any] | str | os.PathLike | None = None,
              progress: bool = True) -> Recalibration:
    """New moving statistics for the BN layers of `model` (all, or those matching `layers`).

    Raises UsageProblem (ModelRefused, DataError, ModelRunError) and ModelReadError. The model is not changed.
    """
    if batch_size < 2:
        # Batch statistics of a single sample: every channel's variance is 0 and its mean the value.
        raise UsageProblem(f"--batch-size {batch_size}: recalibration needs at least 2 samples per batch")
    loaded, source, samples, adapter = open_model_and_data(model, data, limit=limit, rescale=rescale,
                                                           unsafe=unsafe, custom_objects=custom_objects)
    taps = find_bn_layers(loaded.model)
    if not taps:
        raise UsageProblem(f"{source}: the model has no BatchNormalization layers")
    chosen = tuple(tap for tap in taps if layers is None or matches(tap.path, layers))
    if not chosen:
        raise UsageProblem(f"--layers {layers!r}: no BN layer matches (layers: "
                           f"{', '.join(tap.path for tap in taps[:8])}{', ...' if len(taps) > 8 else ''})")
    notes = ()
    if samples.samples > 1 and samples.samples % batch_size == 1:
        # A last batch of one sample has no batch statistics: BN would output beta for every
        # channel, and the layers after it would see that constant. Leave the sample out.
        samples.samples -= 1
        notes = (f"the last sample was left out: with batch size {batch_size} it would be a batch of one",)
    stored = snapshot(taps)
    # Keras runs a BN layer with trainable=False in inference mode even when called with
    # training=True; for the pass it must use batch statistics like the others.
    frozen = [tap.layer for tap in chosen if not tap.layer.trainable]
    try:
        for layer in frozen:
            layer.trainable = True
        with model_run(source, loaded.model, adapter), \
                Instrumentation(chosen, adapter, batch_statistics=True) as instrumentation:
            result = one_pass(source, loaded.model, instrumentation, samples, batch_size, 0, progress)
    finally:
        for layer in frozen:
            layer.trainable = False
        restore(stored)  # training=True moved the variables with momentum; that is not our answer
    new, kept = [], [(tap.path, "not selected by --layers") for tap in taps if tap not in chosen]
    for tap in chosen:
        seen, _ = merged_moments(result.moments, result.layout, tap.index, "input")
        if seen is None or not np.any(seen.count > 0):
            kept.append((tap.path, "the data never reaches it"))
            continue
        if np.any(seen.non_finite > 0):
            raise UsageProblem(f"{source}: the data drives NaN/Inf into the input of {tap.path} "
                               f"({int(seen.non_finite.sum())} values); statistics from it would be meaningless")
        new.append(_statistics(tap, seen))
    return Recalibration(loaded, samples.samples, result.batches, tuple(new), tuple(kept), notes)


def _statistics(tap: BNTap, seen: Any) -> RecalibratedLayer:
    layer = tap.layer
    return RecalibratedLayer(
        path=tap.path, samples=int(seen.count.min()),
        before_mean=np.asarray(layer.moving_mean.numpy(), np.float64).reshape(-1),
        before_variance=np.asarray(layer.moving_variance.numpy(), np.float64).reshape(-1),
        after_mean=seen.mean, after_variance=seen.variance)


def assign(recalibration: Recalibration) -> None:
    """Write the new statistics into the live model's variables (the in-memory API)."""
    by_path = {tap.path: tap for tap in find_bn_layers(recalibration.loaded.model)}
    for layer in recalibration.layers:
        target = by_path[layer.path].layer
        for variable, values in ((target.moving_mean, layer.after_mean), (target.moving_variance, layer.after_variance)):
            current = np.asarray(variable.numpy())
            variable.assign(values.reshape(current.shape).astype(current.dtype))
