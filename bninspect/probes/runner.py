"""`run_probe`: one pass over the data with every BN layer instrumented, then the rules.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from bninspect.errors import UsageProblem
from bninspect.data import Batch, DataSource, InputSpec, open_data, parse_rescale
from bninspect.keras_runtime import import_keras
from bninspect.probes import backends, budget, rules
from bninspect.probes.images import decode_images
from bninspect.probes.instrument import BNTap, Entry, Instrumentation, Reduction, find_bn_layers
from bninspect.probes.loading import (LoadedModel, ModelRefused, built_input_specs, describe_in_memory,
                                      load_custom_objects, load_model)
from bninspect.probes.moments import ChannelMoments, RunningMoments, from_sums, merge
from bninspect.probes.run_errors import model_run
from bninspect.probes.results import ConsistencyMeasure, GapMeasure, LayerProbe, ProbeReport
from bninspect.probes.thresholds import ProbeThresholds, resolve

# Samples of the first batch that are also predicted one by one for the batch-consistency check.
CONSISTENCY_SAMPLES = 4
# BN102's train/inference gap is measured on the first batches holding at least GAP_SAMPLES samples,
# and on at most GAP_BATCHES batches: each costs a second forward pass, so the gap costs about
# one batch of 32 whatever the data's size (4 batches on 144 samples had made the probe of ResNet50
# 1.98x `predict`).
GAP_SAMPLES = 32
GAP_BATCHES = 4
# A batch is summarised in one pass (sums and sums of squares), whose variance is exact to about
# 1e-7 * (1 + mean^2 / variance) where it sums float32 squares. Where some such channel's
# mean^2 / variance exceeds this, that is not good enough: the batch is summarised again in two
# passes, and so is every later batch.
ONE_PASS_MAX_RATIO = 1e3


@dataclass(frozen=True)
class _PassResult:
    layout: tuple[Entry, ...]
    moments: RunningMoments  # flat over the layout's entries
    batches: int
    # The first batches and their inference-mode outputs, for the two prediction comparisons.
    kept: tuple[tuple[Batch, tuple[np.ndarray, ...]], ...]
    # The compiled inference step (`backends.Step`).
    step: Any


def run_probe(model: str | os.PathLike | Any, data: Any, *, batch_size: int = 32, limit: int | None = None,
              rescale: float | str | None = None, unsafe: bool = False,
              custom_objects: Mapping[str, Any] | str | os.PathLike | None = None,
              thresholds: Mapping[str, float] | ProbeThresholds | None = None,
              progress: bool = True) -> ProbeReport:
    """Run the model on `data` in inference mode and report BN101-BN104.

    model: a model file / SavedModel directory, or an in-memory keras.Model / tf_keras Model.
    data: a path (.npy, .npz, directory of images) or arrays (one array, a list in input order, a
    dict by input name). `custom_objects` is a dict, or the path of a Python file whose top-level
    classes and functions are used (the file is executed). The model's weights are left as they were.
    Raises UsageProblem subclasses (ModelRefused, DataError, ThresholdError, ModelRunError when
    the backend cannot run the model) and ModelReadError.
    """
    started = time.perf_counter()
    limits = thresholds if isinstance(thresholds, ProbeThresholds) else resolve(_configured(thresholds))
    if batch_size < 1:
        raise UsageProblem(f"--batch-size {batch_size}: must be at least 1")
    loaded, source, samples, adapter = open_model_and_data(model, data, limit=limit, rescale=rescale,
                                                           unsafe=unsafe, custom_objects=custom_objects)
    taps = find_bn_layers(loaded.model)
    stored = snapshot(taps)
    try:
        with model_run(source, loaded.model, adapter), Instrumentation(taps, adapter) as instrumentation:
            keep = gap_batches(samples.batch_count(batch_size), batch_size)
            result = one_pass(source, loaded.model, instrumentation, samples, batch_size, keep, progress)
            gap = _train_inference_gap(source, loaded.model, instrumentation, result.kept, result.step)
            restore(stored)  # the consistency check runs on the moving statistics
            consistency = _batch_consistency(result.step, result.kept[0])
    finally:
        restore(stored)
    layers = _layer_probes(taps, result)
    findings = rules.evaluate(source, layers, gap, consistency, limits, loaded.description)
    return ProbeReport(source=source, keras=loaded.keras, samples=samples.samples, batch_size=batch_size,
                       batches=result.batches, seconds=time.perf_counter() - started, layers=layers,
                       findings=findings, thresholds=limits, gap=gap, consistency=consistency,
                       description=loaded.description)


def open_model_and_data(model: Any, data: Any, *, limit: int | None, rescale: float | str | None, unsafe: bool,
                        custom_objects: Mapping[str, Any] | str | os.PathLike | None
                        ) -> tuple[LoadedModel, str, DataSource, Any]:
    """The model loaded (or taken as it is), the name to report it by, the data matched to its
    inputs, and the backend adapter that runs it (`backends.for_model`)."""
    # Keras on the backend the user chose (on TensorFlow, oneDNN on unless the user chose; for an
    # in-memory model Keras is imported already, and this changes nothing).
    import_keras(needed_for="running a model on data")
    scale = parse_rescale(rescale) if isinstance(rescale, str) else rescale
    if isinstance(custom_objects, (str, os.PathLike)):
        custom_objects = load_custom_objects(custom_objects)
    loaded = _load(model, unsafe, custom_objects)
    source = str(model) if isinstance(model, (str, os.PathLike)) else f"<in-memory model {loaded.model.name!r}>"
    adapter = backends.for_model(source, loaded.model)
    adapter.refuse_names(source, loaded.model)
    return loaded, source, open_data(data, input_specs(loaded.model, source), limit=limit, rescale=scale,
                                     decoder=decode_images), adapter


def _configured(thresholds: Mapping[str, float] | None) -> Any:
    """Explicit thresholds win; otherwise those of `[tool.bninspect]` in the nearest pyproject.toml."""
    if thresholds is not None:
        return thresholds
    from bninspect import config

    try:
        return config.load_settings().thresholds
    except config.SettingsError as error:
        raise UsageProblem(str(error)) from None


def _load(model: Any, unsafe: bool, custom_objects: Mapping[str, Any] | None) -> LoadedModel:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model, unsafe=unsafe, custom_objects=custom_objects)
    if not callable(model) or not hasattr(model, "layers"):
        raise UsageProblem(f"expected a model file or a Keras model, not {type(model).__name__}")
    return LoadedModel(model, describe_in_memory(model), None)


def input_specs(model: Any, source: str) -> tuple[InputSpec, ...]:
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        inputs = []
    if not inputs:
        built = built_input_specs(model)  # a subclassed model: no `inputs`, but the shapes it was built with
        if built:
            return built
        raise ModelRefused(f"{source}: the model has no defined inputs (a subclassed model that was never built); "
                           "build it or save it as a functional/Sequential model")
    specs = []
    for position, tensor in enumerate(inputs):
        name = str(getattr(tensor, "name", None) or f"input_{position}").split(":")[0]
        shape = tuple(None if size is None else int(size) for size in tuple(tensor.shape)[1:])
        dtype = getattr(tensor.dtype, "name", tensor.dtype)
        specs.append(InputSpec(name, shape, str(dtype)))
    return tuple(specs)


def snapshot(taps: tuple[BNTap, ...]) -> tuple[tuple[Any, np.ndarray], ...]:
    return tuple((variable, np.array(variable.numpy(), copy=True)) for tap in taps for variable in tap.layer.weights)


def restore(stored: tuple[tuple[Any, np.ndarray], ...]) -> None:
    # Batch-statistics mode (and a model that hard-codes training=True) updates the moving statistics.
    for variable, value in stored:
        variable.assign(value)


def _model_inputs(arrays: tuple[Any, ...]) -> Any:
    return arrays[0] if len(arrays) == 1 else list(arrays)


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(file=sys.stderr)
    return Progress(TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


class _Layout:
    """The layout of what the last trace (or eager call) of a step recorded."""

    latest: tuple[Entry, ...] = ()


def _step_function(model: Any, instrumentation: Instrumentation, reduction: Reduction, layout: _Layout) -> Any:
    """The model in inference mode plus the BN summaries, for the backend to compile.

    function(batch_statistics, valid, arrays) -> (outputs, packed sums). `batch_statistics` is a
    boolean (a tensor of the step when compiled): true switches the BN layers to their batch's own
    statistics (for BN102's gap) in the same step, so the gap costs no second trace
    (`Instrumentation.start_recording`). `valid`: the real rows of a padded batch (JAX), or None.
    """
    from keras import tree

    def function(batch_statistics: Any, valid: Any, arrays: tuple[Any, ...]) -> tuple[list[Any], tuple[Any, ...]]:
        instrumentation.start_recording(reduction, batch_statistics, valid)
        try:
            outputs = model(_model_inputs(arrays), training=False)
        finally:
            recorded, packed = instrumentation.stop_recording()
        layout.latest = recorded
        return tree.flatten(outputs), packed

    return function


def gap_batches(batch_count: int, batch_size: int) -> int:
    """How many of the first batches BN102's gap is measured on: enough for GAP_SAMPLES samples,
    at most GAP_BATCHES, and at most half of the data's batches (at least one)."""
    wanted = min(GAP_BATCHES, -(-GAP_SAMPLES // batch_size))
    return max(1, min(wanted, (batch_count + 1) // 2))


class _Steps:
    """The compiled steps of one pass, one per reduction, each compiled when first needed."""

    def __init__(self, source: str, model: Any, instrumentation: Instrumentation, rows: int):
        self._source = source
        self._rows = rows  # the largest batch the steps get
        self._model = model
        self._instrumentation = instrumentation
        self._compiled: dict[Reduction, Any] = {}
        self.layout = _Layout()

    def run(self, reduction: Reduction, batch: Batch) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
        step = self._compiled.get(reduction)
        if step is None:
            function = _step_function(self._model, self._instrumentation, reduction, self.layout)
            step = self._compiled[reduction] = self._instrumentation.adapter.compile(
                self._source, self._model, function, batch, self._rows)
        return step(False, batch.arrays)

    def step(self, reduction: Reduction) -> Any:
        return self._compiled[reduction]


def one_pass_imprecise(layout: tuple[Entry, ...], count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> bool:
    """Whether some channel's one-pass summary is not precise enough (`ONE_PASS_MAX_RATIO`)."""
    float32_squares = np.repeat(np.array([entry.squares_in_float32 for entry in layout], dtype=bool),
                                [entry.channels for entry in layout])
    with np.errstate(all="ignore"):
        doubtful = (m2 < 0) | ((mean != 0) & (count * mean * mean > ONE_PASS_MAX_RATIO * m2))
    return bool(np.any(doubtful & float32_squares))


def one_pass(source: str, model: Any, instrumentation: Instrumentation, samples: DataSource, batch_size: int,
             keep: int, progress: bool) -> _PassResult:
    budget.check_inputs(source, samples, batch_size)  # before the first batch is read or decoded
    steps = _Steps(source, model, instrumentation, min(batch_size, samples.samples))
    reduction = Reduction.ONE_PASS
    moments: RunningMoments | None = None
    kept = []
    count = 0
    with _progress_bar(progress) as bar:
        task = bar.add_task("probe", total=samples.batch_count(batch_size))
        for batch in samples.batches(batch_size):
            outputs, packed = steps.run(reduction, batch)
            total, mean, m2, non_finite = from_sums(*packed)
            finite = np.isfinite(mean).all() and np.isfinite(m2).all()
            if (finite and reduction is Reduction.ONE_PASS
                    and one_pass_imprecise(steps.layout.latest, total, mean, m2)):
                reduction = Reduction.TWO_PASS
                outputs, packed = steps.run(reduction, batch)
                total, mean, m2, non_finite = from_sums(*packed)
            if not finite:
                # NaN/Inf somewhere in this batch: summarise it again without them, and count them.
                _, packed = steps.run(Reduction.MASKED, batch)
                total, mean, m2, non_finite = from_sums(*packed)
            if moments is None:
                moments = RunningMoments(total.size)
            moments.add_summary(total, mean, m2, non_finite)
            if len(kept) < keep:
                kept.append((batch, tuple(outputs)))
            count += 1
            bar.advance(task)
    return _PassResult(steps.layout.latest, moments, count, tuple(kept), steps.step(reduction))


def _batch_statistics_step(source: str, model: Any, instrumentation: Instrumentation, first: Batch, rows: int) -> Any:
    """The model with its BN layers on batch statistics, compiled once: for models with BN layers
    the recording step cannot switch (tf-keras, subclasses). Compiled, not eager where the backend
    compiles: an eager Keras 3 functional call on TensorFlow keeps every intermediate tensor until
    it returns (7.3 GB for DenseNet121 on a batch of 32 at 224x224, against 1.5 GB for `predict`)."""
    from keras import tree

    def function(batch_statistics: Any, valid: Any, arrays: tuple[Any, ...]) -> tuple[list[Any], tuple[Any, ...]]:
        with instrumentation.batch_statistics():
            return tree.flatten(model(_model_inputs(arrays), training=False)), ()

    return instrumentation.adapter.compile(source, model, function, first, rows)


def _train_inference_gap(source: str, model: Any, instrumentation: Instrumentation,
                         kept: tuple[tuple[Batch, tuple[np.ndarray, ...]], ...], step: Any) -> GapMeasure | None:
    """Relative L2 difference of the predictions with BN on batch statistics vs moving statistics.

    Only the BN layers switch to batch statistics; Dropout and everything else stay in inference
    mode, so the number measures what BN alone changes. The recording step switches them itself
    when it can (one trace for everything); otherwise a batch-statistics step is traced.
    """
    usable = [(batch, outputs) for batch, outputs in kept if batch.size >= 2]
    if not usable:
        return None
    if instrumentation.switchable:
        def predict(arrays):
            return step(True, arrays)[0]
    else:
        batch_statistics_step = _batch_statistics_step(source, model, instrumentation, usable[0][0],
                                                       max(batch.size for batch, _ in usable))

        def predict(arrays):
            return batch_statistics_step(False, arrays)[0]
    difference = reference = 0.0
    for batch, inference_outputs in usable:
        for with_batch_stats, with_moving_stats in zip(predict(batch.arrays), inference_outputs):
            delta = np.asarray(with_batch_stats, np.float64) - np.asarray(with_moving_stats, np.float64)
            difference += float(np.sum(delta * delta))
            reference += float(np.sum(np.square(np.asarray(with_moving_stats, np.float64))))
    relative = float(np.sqrt(difference / reference)) if reference > 0 else float(np.sqrt(difference))
    return GapMeasure(relative, len(usable), max(batch.size for batch, _ in usable))


def _largest_finite(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def _batch_consistency(step: Any, first: tuple[Batch, tuple[np.ndarray, ...]]) -> ConsistencyMeasure | None:
    """In inference mode a sample's prediction must not depend on the other samples of its batch.

    The single samples go through the same compiled step as the batch, so the comparison is not
    blurred by eager-vs-graph rounding differences (on JAX a single sample is padded with copies
    of itself, whose batch statistics are its own). NaN/Inf predictions are BN103's business and
    are left out here.
    """
    batch, batch_outputs = first
    if batch.size < 2:
        return None
    scale = max(_largest_finite(output) for output in batch_outputs)
    worst, worst_sample = 0.0, 0
    samples = min(CONSISTENCY_SAMPLES, batch.size)
    for index in range(samples):
        alone, _ = step(False, tuple(array[index:index + 1] for array in batch.arrays))
        difference = max(_largest_finite(np.asarray(single[0], np.float64) - output[index])
                         for single, output in zip(alone, batch_outputs))
        if difference > worst:
            worst, worst_sample = difference, index
    relative = worst / scale if scale > 0 else worst
    return ConsistencyMeasure(relative, worst_sample, samples, batch.size)


def merged_moments(moments: RunningMoments, layout: tuple[Entry, ...], tap: int, side: str) -> tuple[ChannelMoments, int]:
    offset = 0
    count = mean = m2 = non_finite = None
    calls = 0
    for entry in layout:
        span = slice(offset, offset + entry.channels)
        offset += entry.channels
        if entry.tap != tap or entry.side != side:
            continue
        calls += 1
        if count is None:
            count, mean, m2, non_finite = (moments.count[span], moments.mean[span], moments.m2[span],
                                           moments.non_finite[span])
        else:
            # A shared BN layer runs more than once per batch: pool everything it saw.
            count, mean, m2 = merge(count, mean, m2, moments.count[span], moments.mean[span], moments.m2[span])
            non_finite = non_finite + moments.non_finite[span]
    if count is None:
        return None, 0
    pooled = RunningMoments(count.size)
    pooled.add_summary(count, mean, m2, non_finite)
    return pooled.result(), calls


def _vector(layer: Any, name: str, channels: int, default: float) -> np.ndarray:
    """gamma or beta as float64, or the constant they stand for when scale/center is off."""
    variable = getattr(layer, name, None)
    if variable is None:
        return np.full(channels, default)
    return np.asarray(variable.numpy(), np.float64).reshape(-1)


def derive_output(inputs: ChannelMoments, gamma: np.ndarray, beta: np.ndarray, moving_mean: np.ndarray,
                  moving_variance: np.ndarray, epsilon: float) -> ChannelMoments:
    """Statistics of a BN layer's inference output from those of its input.

    In inference mode y = a * x + b per channel, with a = gamma / sqrt(moving_variance + eps) and
    b = beta - a * moving_mean, so mean(y) = a * mean(x) + b and var(y) = a^2 * var(x) exactly.
    Where a or b is not finite every output value of the channel is NaN/Inf.
    """
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(moving_variance + epsilon)
        shift = beta - scale * moving_mean
        broken = ~(np.isfinite(scale) & np.isfinite(shift))
        mean = np.where(broken, np.nan, scale * inputs.mean + shift)
        variance = np.where(broken, np.nan, scale * scale * inputs.variance)
    return ChannelMoments(count=np.where(broken, 0.0, inputs.count), mean=mean, variance=variance,
                          non_finite=inputs.non_finite + np.where(broken, inputs.count, 0.0))


def _unreached(channels: int) -> ChannelMoments:
    nan = np.full(channels, np.nan)
    return ChannelMoments(np.zeros(channels), nan, nan, np.zeros(channels))


def _layer_probes(taps: tuple[BNTap, ...], result: _PassResult) -> tuple[LayerProbe, ...]:
    first_seen = {}
    for position, entry in enumerate(result.layout):
        first_seen.setdefault(entry.tap, position)
    order = {tap: rank for rank, tap in enumerate(sorted(first_seen, key=first_seen.get))}
    probes = []
    for tap in taps:
        layer = tap.layer
        moving_mean = np.asarray(layer.moving_mean.numpy(), np.float64).reshape(-1)
        moving_variance = np.asarray(layer.moving_variance.numpy(), np.float64).reshape(-1)
        epsilon = float(layer.epsilon)
        inputs, calls = merged_moments(result.moments, result.layout, tap.index, "input")
        outputs, _ = merged_moments(result.moments, result.layout, tap.index, "output")
        measured = outputs is not None
        if inputs is None:
            inputs = outputs = _unreached(moving_mean.size)
        elif outputs is None:
            outputs = derive_output(inputs, _vector(layer, "gamma", moving_mean.size, 1.0),
                                    _vector(layer, "beta", moving_mean.size, 0.0), moving_mean, moving_variance, epsilon)
        entry = next((e for e in result.layout if e.tap == tap.index), None)
        axes = entry.axes if entry is not None else tuple(np.atleast_1d(layer.axis).tolist())
        probes.append(LayerProbe(
            path=tap.path, order=order.get(tap.index), axis=axes, epsilon=epsilon,
            moving_mean=moving_mean, moving_variance=moving_variance, input=inputs, output=outputs,
            calls=calls * result.batches, output_measured=measured))
    return tuple(probes)
