"""Instrument the BatchNormalization layers of a live Keras model, on any Keras backend.

Each BN layer's `call` is wrapped on the instance (Keras 3 and tf-keras both look `self.call` up at
call time). While the model runs inside one compiled step (`probes.backends`: a `tf.function`, a
`jax.jit`, or torch eager), the wrapper reduces the layer's input to per-channel sums with
`keras.ops`, so one forward pass yields the model outputs plus a few small vectors per batch: the
activations never leave the device. This module is backend-neutral; what cannot be (the compiled
step, the host transfer, a fast sum of squares, TensorFlow's concatenation shortcut) is the
adapter's.

The output of a stock Keras BN layer in inference mode is the per-channel affine map
gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta of its input, so its statistics
follow exactly from the input's (`derive_output`). Reducing the output tensor in the graph as well
cost ~30% of the model's run time on the benchmark CNN (it keeps TF from fusing BN with what
follows), so the output is only measured where that map is not guaranteed: BN subclasses and
layers that run with training=True although the model was called in inference mode.

Three things keep the pass near the cost of `predict` on real backbones. Each input is reduced in
one pass, one axis at a time (`_reduce`; the caller redoes a batch in two passes where one pass
is not precise enough). On TensorFlow, a concatenation along the channel axis is summarised from
the summaries of its parts, so DenseNet's ever-growing concatenations are not reduced again at
every BN layer (`concat_parts` of the TensorFlow adapter). And Keras 3's own BN layers are switched
between moving and batch statistics by a boolean tensor of the step (`start_recording`), so
BN102's train/inference gap runs through the same compiled step as the pass: no second trace, and
no eager call (an eager Keras 3 functional call on TensorFlow keeps every intermediate tensor until
it returns: 7.3 GB for DenseNet121 on 32 images at 224x224, against 1.5 GB for `predict`).

The same wrapper can also put a BN layer on batch statistics while every other layer stays in
inference mode: how the gap is measured for the layers that cannot be switched by a tensor
(tf-keras, subclasses: they are called with training=True), and how `recalibrate` sees what each
layer gets (Keras 3's own layers normalise with the statistics of the input's summary, so the
input is reduced once and no moving statistics are updated; the others with training=True).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from bninspect.model import BN_CLASS_NAMES


@dataclass(frozen=True, eq=False)
class BNTap:
    index: int
    path: str  # `outer/inner/bn`, without the top-level model's name
    layer: Any


@dataclass(frozen=True)
class Entry:
    """One recorded tensor: the input or output of one call of one BN layer."""

    tap: int
    side: str  # "input" or "output"
    channels: int
    axes: tuple[int, ...]
    rank: int
    # Whether one pass over this tensor sums float32 squares (`_reduce`): it reduces axes besides
    # the batch axis, or the backend has no float64. Only those sums lose the variance when |mean| >> std.
    squares_in_float32: bool = True


class Reduction(enum.Enum):
    """How a traced step reduces each BN input to its per-channel summaries."""

    ONE_PASS = "one-pass"  # sums and sums of squares: fast; the variance loses precision when |mean| >> std
    TWO_PASS = "two-pass"  # the mean, then the squared deviations from it: exact, needs a copy of the input
    MASKED = "masked"  # two passes leaving NaN/Inf out, and counting them


class Mode(enum.Enum):
    OFF = "off"
    RECORD = "record"  # reduce inputs/outputs to per-channel summaries (inside the traced function)
    BATCH_STATS = "batch_stats"  # BN layers normalise with the batch's own statistics


def _is_bn(layer: Any) -> bool:
    return (any(cls.__name__ in BN_CLASS_NAMES for cls in type(layer).__mro__)
            and hasattr(layer, "moving_mean") and hasattr(layer, "moving_variance"))


def _children(layer: Any) -> list[Any]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []) or [])


def _is_stock(layer: Any) -> bool:
    """Keras' or tf-keras' own BN class itself, not a subclass that might change `call`."""
    cls = type(layer)
    return cls.__name__ in BN_CLASS_NAMES and cls.__module__.split(".")[0] in ("keras", "tf_keras")


def find_bn_layers(model: Any) -> tuple[BNTap, ...]:
    """Every BN layer reachable from `model`, depth first, nested models included."""
    taps: list[BNTap] = []
    seen: set[int] = set()

    def walk(container: Any, prefix: str) -> None:
        for child in _children(container):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = prefix + child.name
            if _is_bn(child):
                taps.append(BNTap(len(taps), path, child))
            else:
                walk(child, path + "/")

    walk(model, "")
    return tuple(taps)


def layer_axes(layer: Any, rank: int) -> tuple[int, ...]:
    axis = layer.axis
    axes = [axis] if isinstance(axis, int) else list(axis)
    return tuple(sorted(int(a) % rank for a in axes))


@dataclass(frozen=True)
class _Summary:
    """Per-channel sums of one tensor in one batch, flat over the channel axes.

    `count`, `s1`, `s2` and `bad` go to the host (`host_sums`): the count of finite values, the
    sum of their deviations from `center` and of the squares of those, and the count of NaN/Inf. Each is a
    (channels,) float64 vector summed over the batch on the device where the backend computes in
    float64, else (batch, channels) per-sample float32 sums that the host adds up in float64
    (JAX without x64). `center` is (channels,): 0 in one pass, the device's batch mean in two.
    `mean` and `variance` are the batch's mean and population variance on the device, for a BN
    layer switched to batch statistics inside the step (None when masked).
    """

    count: Any
    s1: Any
    s2: Any
    center: Any
    bad: Any
    mean: Any = None
    variance: Any = None

    def packed(self) -> tuple[Any, Any, Any, Any, Any]:
        return self.count, self.s1, self.s2, self.center, self.bad


PACKED_FIELDS = 5


def _concatenated(parts: list[_Summary]) -> _Summary:
    from keras import ops

    def join(values: list[Any]) -> Any:
        return None if any(value is None for value in values) else ops.concatenate(values, axis=-1)

    return _Summary(*(join([getattr(part, name) for part in parts])
                      for name in ("count", "s1", "s2", "center", "bad", "mean", "variance")))


class _Context:
    """What the reductions of one traced step share: the backend and which batch rows are real."""

    def __init__(self, adapter: Any, valid: Any):
        self.adapter = adapter
        self.valid = valid  # the number of real rows (a padded fixed-size batch), or None: all rows are

    @property
    def accumulator(self) -> str:
        return "float64" if self.adapter.float64_on_device else "float32"

    def total(self, per_sample: Any) -> tuple[Any, Any]:
        """(what goes to the host, the batch total on the device) of a (batch, channels) array."""
        from keras import ops

        values = ops.cast(per_sample, self.accumulator)
        if self.valid is not None:
            rows = ops.arange(ops.shape(values)[0])
            values = values * ops.cast(ops.expand_dims(ops.less(rows, self.valid), -1), values.dtype)
        device_total = ops.sum(values, axis=0)
        return (device_total if self.adapter.float64_on_device else values), device_total


def _summaries(x: Any, axes: tuple[int, ...], reduction: Reduction, context: _Context,
               cache: dict[int, tuple[Any, _Summary]]) -> _Summary:
    """Per-channel sums of `x` (see `_Summary`).

    Unmasked, a NaN/Inf makes that channel's mean non-finite, which the caller sees, and then runs
    the batch again masked: the NaN/Inf are left out and counted. Likewise the caller runs a batch
    again in two passes when one pass was not precise enough. (A tf.cond choosing inside the
    graph made tracing 6x slower.)
    `cache` maps the tensors summarised in this trace (by id, the tensor kept alive beside its
    summary) to their summaries.
    """
    hit = cache.get(id(x))
    if hit is not None and hit[0] is x:
        return hit[1]
    parts = context.adapter.concat_parts(x, axes)
    if parts is not None:
        summary = _concatenated([_summaries(part, axes, reduction, context, cache) for part in parts])
    else:
        summary = _reduce(x, axes, reduction, context)
    cache[id(x)] = (x, summary)
    return summary


def _reduce(x: Any, axes: tuple[int, ...], reduction: Reduction, context: _Context) -> _Summary:
    """The sums of one tensor: within each sample (the adapter's `sum_within_samples`), then over
    the batch (`_Context.total`).

    The reduction runs in float32 (float64 inputs stay float64): float16 sums of ~10^5 values per
    channel would lose the mean. One pass sums the values and their squares, read together; two
    passes the values, then the squared deviations from their batch mean, which needs a temporary
    copy of `x`. The variance of one pass is exact to about 1e-7 * (1 + mean^2 / variance) where
    it sums float32 squares, of two passes to ~1e-7; a (batch, channels) input is squared in
    float64 where the backend has it, which leaves one pass exact (a Dense head after global
    pooling often has |mean| > 30 std). For 32x112x112x96 values around 3 +- 2 on TensorFlow, one
    pass took 19 ms and two 44 ms, where tf.nn.moments took 72 ms (and missed NumPy's variance by
    2e-5; at 1e4 +- 1 it was wrong by 60x, two passes by 2e-7).
    """
    from keras import backend, ops

    if backend.standardize_dtype(x.dtype) != "float64":
        x = ops.cast(x, "float32")
    rank = len(x.shape)
    inner = sorted((a for a in range(1, rank) if a not in axes), reverse=True)
    channels = 1
    for a in axes:
        channels *= int(x.shape[a])
    adapter = context.adapter

    def per_sample(values: Any, squared: bool = False) -> Any:
        if inner:
            values = adapter.sum_within_samples(values, inner, squared)
        elif squared:
            # Nothing to sum within a sample: square in the accumulator's precision.
            values = ops.square(ops.cast(values, context.accumulator))
        return ops.reshape(values, (-1, channels))

    center_shape = [int(x.shape[a]) if a in axes else 1 for a in range(rank)]
    zeros = ops.zeros((channels,), context.accumulator)
    if reduction is Reduction.ONE_PASS:
        count_host, count = context.total(_inner_counts(x, inner, channels))
        s1_host, s1 = context.total(per_sample(x))
        s2_host, s2 = context.total(per_sample(x, squared=True))
        mean = s1 / count
        variance = ops.maximum(s2 / count - mean * mean, 0.0)
        return _Summary(count_host, s1_host, s2_host, zeros, zeros, mean, variance)
    # Two passes: the batch mean first (the center), then the deviations from it, summed and
    # squared: the mean is then exact to float32's rounding of the deviations, not of the values
    # (|mean| can be 500 std in a real backbone).
    finite = ops.isfinite(x) if reduction is Reduction.MASKED else None
    if finite is None:
        count_host, count = context.total(_inner_counts(x, inner, channels))
        _, total = context.total(per_sample(x))
    else:
        count_host, count = context.total(per_sample(ops.cast(finite, x.dtype)))
        _, total = context.total(per_sample(ops.where(finite, x, ops.zeros_like(x))))
    center = total / ops.maximum(count, 1.0)
    deviation = x - ops.cast(ops.reshape(center, center_shape), x.dtype)
    if finite is not None:
        deviation = ops.where(finite, deviation, ops.zeros_like(x))
    s1_host, s1 = context.total(per_sample(deviation))
    s2_host, s2 = context.total(per_sample(deviation, squared=True))
    if finite is not None:
        bad_host, _ = context.total(per_sample(ops.cast(ops.logical_not(finite), x.dtype)))
        return _Summary(count_host, s1_host, s2_host, center, bad_host)
    offset = s1 / count
    return _Summary(count_host, s1_host, s2_host, center, zeros, center + offset,
                    ops.maximum(s2 / count - offset * offset, 0.0))


def _inner_counts(x: Any, inner: list[int], channels: int) -> Any:
    """(batch, channels): how many values of each sample a channel has (the product of the inner axes)."""
    from keras import ops

    per_channel = 1
    for axis in inner:
        per_channel = per_channel * ops.shape(x)[axis]
    batch = ops.shape(x)[0]
    return ops.ones((batch, channels), "float32") * ops.cast(per_channel, "float32")


def host_sums(packed: tuple[Any, ...], valid: int) -> tuple[np.ndarray, ...]:
    """The packed sums of a step as float64 (channels,) vectors on the host: per-sample sums of
    the first `valid` rows added up in float64, batch totals as they are."""
    fields = []
    for value in packed:
        array = np.asarray(value, np.float64)
        fields.append(array[:valid].sum(axis=0) if array.ndim == 2 else array)
    return tuple(fields)


def _switchable(layer: Any) -> bool:
    """Keras 3's own BN without renorm: its training-mode output is its inference formula with the
    batch's mean and variance in place of the moving ones, which the step can choose by a tensor."""
    cls = type(layer)
    return (cls.__name__ == "BatchNormalization" and cls.__module__.split(".")[0] == "keras"
            and not getattr(layer, "renorm", False))


def _normalise(layer: Any, inputs: Any, use_batch_statistics: Any, summary: _Summary) -> Any:
    """Keras 3 BatchNormalization.call, with the statistics chosen by a boolean tensor (or always the
    batch's when `use_batch_statistics` is True: how `recalibrate` runs).

    Mirrors keras.layers.BatchNormalization.call: float16/bfloat16 inputs are upcast to float32,
    the variables cast to that dtype. Batch statistics come from the summary already computed for
    the layer's input (population variance, as Keras uses in training); the moving statistics are
    not updated (the probe would restore them anyway). A frozen layer (trainable=False) runs in
    inference mode even when asked for training, as in Keras.
    """
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    x = ops.cast(inputs, compute_dtype)
    mean = ops.cast(layer.moving_mean, compute_dtype)
    variance = ops.cast(layer.moving_variance, compute_dtype)
    if layer.trainable and use_batch_statistics is True:
        mean, variance = ops.cast(summary.mean, compute_dtype), ops.cast(summary.variance, compute_dtype)
    elif layer.trainable and use_batch_statistics is not False:
        mean = ops.where(use_batch_statistics, ops.cast(summary.mean, compute_dtype), mean)
        variance = ops.where(use_batch_statistics, ops.cast(summary.variance, compute_dtype), variance)
    gamma = ops.cast(layer.gamma, compute_dtype) if layer.scale else None
    beta = ops.cast(layer.beta, compute_dtype) if layer.center else None
    outputs = ops.batch_normalization(x, mean, variance, axis=layer.axis, offset=beta, scale=gamma,
                                      epsilon=layer.epsilon)
    return ops.cast(outputs, layer.compute_dtype)


class Instrumentation:
    """Context manager: wraps every BN layer's `call` on entry, restores it on exit."""

    def __init__(self, taps: tuple[BNTap, ...], adapter: Any, batch_statistics: bool = False):
        """adapter: the backend's (`probes.backends`). batch_statistics: while recording, the layers
        normalise with the batch's own statistics (how `recalibrate` sees what each layer gets in
        training)."""
        self.taps = taps
        self.adapter = adapter
        self.record_with_batch_statistics = batch_statistics
        self.mode = Mode.OFF
        self._reduction = Reduction.ONE_PASS
        self._switch: Any = None
        self._context = _Context(adapter, None)
        self._cache: dict[int, tuple[Any, _Summary]] = {}
        self._records: list[tuple[Entry, _Summary]] = []
        self._saved: list[tuple[Any, bool, Any]] = []

    def __enter__(self) -> "Instrumentation":
        for tap in self.taps:
            instance_dict = tap.layer.__dict__
            had_own = "call" in instance_dict
            self._saved.append((tap.layer, had_own, instance_dict.get("call")))
            # Through __dict__: Keras' __setattr__ would try to track the function as state.
            instance_dict["call"] = self._wrap(tap, tap.layer.call)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for layer, had_own, original in reversed(self._saved):
            if had_own:
                layer.__dict__["call"] = original
            else:
                layer.__dict__.pop("call", None)
        self._saved.clear()

    @property
    def switchable(self) -> bool:
        """Every tap can be switched to batch statistics inside the recording step (`start_recording`)."""
        return all(_switchable(tap.layer) for tap in self.taps)

    def _wrap(self, tap: BNTap, original_call: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            mode = self.mode
            if mode is Mode.BATCH_STATS or (mode is Mode.RECORD and self.record_with_batch_statistics):
                if len(args) > 1:
                    args = (args[0], True, *args[2:])
                else:
                    kwargs["training"] = True
            if mode is not Mode.RECORD:
                return original_call(*args, **kwargs)
            inputs = args[0] if args else kwargs["inputs"]
            training = args[1] if len(args) > 1 else kwargs.get("training")
            # A tensor or True: this call may use batch statistics, the affine map does not hold.
            forced_training = training is not None and training is not False
            mask = args[2] if len(args) > 2 else kwargs.get("mask")
            recalibrating = self.record_with_batch_statistics
            # Masked summaries carry no batch variance: those batches take Keras' own call.
            switch = True if recalibrating and self._reduction is not Reduction.MASKED else self._switch
            if switch is not None and (recalibrating or not forced_training) and mask is None and _switchable(tap.layer):
                # The batch statistics come from the input's summary: Keras' own training call
                # would reduce the input a second time and update the moving statistics.
                summary = self._record(tap, inputs, None, measure_output=False)
                return _normalise(tap.layer, inputs, switch, summary)
            outputs = original_call(*args, **kwargs)
            # Recalibration reads the inputs only.
            measure_output = not recalibrating and (forced_training or not _is_stock(tap.layer))
            self._record(tap, inputs, outputs, measure_output=measure_output)
            return outputs

        return self.adapter.plain_python(call)

    def _record(self, tap: BNTap, inputs: Any, outputs: Any, measure_output: bool) -> _Summary:
        """Record the input's (and maybe the output's) summaries; returns the input's."""
        rank = len(inputs.shape)
        axes = layer_axes(tap.layer, rank)
        sides = (("input", inputs), ("output", outputs)) if measure_output else (("input", inputs),)
        recorded = []
        for side, tensor in sides:
            summary = _summaries(tensor, axes, self._reduction, self._context, self._cache)
            channels = 1
            for a in axes:
                channels *= int(tensor.shape[a])
            float32_squares = rank - len(axes) > 1 or not self.adapter.float64_on_device
            self._records.append((Entry(tap.index, side, channels, axes, rank, float32_squares), summary))
            recorded.append(summary)
        return recorded[0]

    def start_recording(self, reduction: Reduction = Reduction.ONE_PASS, batch_statistics: Any = None,
                        valid: Any = None) -> None:
        """Record from now on (inside the function being traced).

        batch_statistics: a scalar boolean tensor of that function, a Python bool, or None. With
        a tensor, the switchable layers (`_switchable`) normalise with the batch's own statistics
        where it is true and with the moving statistics where it is false, so one trace serves
        both the pass and the train/inference gap. It is ignored while masked (the gap never uses
        the masked step) and by layers that already run on batch statistics.
        valid: how many rows of the batch are real when the backend pads batches to one size.
        """
        self._records = []
        self._cache = {}
        self._context = _Context(self.adapter, valid)
        self._reduction = reduction
        self._switch = None if reduction is Reduction.MASKED else batch_statistics
        self.mode = Mode.RECORD

    def stop_recording(self) -> tuple[tuple[Entry, ...], tuple[Any, ...]]:
        """The layout of what was recorded and the packed sums (`_Summary.packed`, each field
        concatenated over the records along its channel axis)."""
        from keras import ops

        self.mode = Mode.OFF
        self._switch = None
        self._cache = {}
        layout = tuple(entry for entry, _ in self._records)
        if not self._records:
            empty = ops.zeros((0,), "float32")
            return layout, (empty,) * PACKED_FIELDS
        packed = tuple(ops.concatenate([summary.packed()[i] for _, summary in self._records], axis=-1)
                       for i in range(PACKED_FIELDS))
        self._records = []
        return layout, packed

    def batch_statistics(self) -> "_ModeScope":
        return _ModeScope(self, Mode.BATCH_STATS)


class _ModeScope:
    def __init__(self, instrumentation: Instrumentation, mode: Mode):
        self._instrumentation = instrumentation
        self._mode = mode

    def __enter__(self) -> None:
        self._instrumentation.mode = self._mode

    def __exit__(self, *exc_info: Any) -> None:
        self._instrumentation.mode = Mode.OFF


def variables_of(taps: tuple[BNTap, ...]) -> Iterator[Any]:
    for tap in taps:
        yield from tap.layer.weights
