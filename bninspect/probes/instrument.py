"""Instrument the BatchNormalization layers of a live Keras model.

Each BN layer's `call` is wrapped on the instance (Keras 3 and tf-keras both look `self.call` up at
call time). While the model is traced inside one `tf.function`, the wrapper reduces the layer's
input to per-channel (count, mean, M2, non-finite count) tensors, so one forward pass yields the
model outputs plus a few small vectors per batch: the activations never leave the graph.

The output of a stock Keras BN layer in inference mode is the per-channel affine map
gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta of its input, so its statistics
follow exactly from the input's (`derive_output`). Reducing the output tensor in the graph as well
cost ~30% of the model's run time on the benchmark CNN (it keeps TF from fusing BN with what
follows), so the output is only measured where that map is not guaranteed: BN subclasses and
layers that run with training=True although the model was called in inference mode.

Three things keep the pass near the cost of `predict` on real backbones. Each input is reduced in
one pass, one axis at a time (`_moments`; the caller redoes a batch in two passes where one pass
is not precise enough). A concatenation along the channel axis is summarised from the summaries
of its parts, so DenseNet's ever-growing concatenations are not reduced again at every BN layer
(`_concat_parts`). And Keras 3's own BN
layers are switched between moving and batch statistics by a boolean tensor of the traced step
(`start_recording`), so BN102's train/inference gap runs through the same trace as the pass: no
second trace, and no eager call (an eager Keras 3 functional call keeps every intermediate tensor
until it returns: 7.3 GB for DenseNet121 on 32 images at 224x224, against 1.5 GB for `predict`).

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

    @property
    def squares_in_float32(self) -> bool:
        """Whether one pass over this tensor sums float32 squares (`_moments`): it reduces axes
        besides the batch axis. Only those sums lose the variance when |mean| >> std."""
        return self.rank - len(self.axes) > 1


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
    """Per-channel summaries of one tensor in one batch, flat over the channel axes.

    All float64: count, mean, m2 and non_finite leave the graph and are merged on the host.
    `variance` (m2 / count; None when masked) is the batch's population variance, for a BN layer
    switched to batch statistics inside the traced step.
    """

    count: Any
    mean: Any
    m2: Any
    non_finite: Any
    variance: Any = None

    def packed(self) -> tuple[Any, Any, Any, Any]:
        return self.count, self.mean, self.m2, self.non_finite


def _concatenated(parts: list[_Summary]) -> _Summary:
    import tensorflow as tf

    def join(values: list[Any]) -> Any:
        return None if any(value is None for value in values) else tf.concat(values, axis=0)

    return _Summary(*(join([getattr(part, name) for part in parts])
                      for name in ("count", "mean", "m2", "non_finite", "variance")))


def _concat_parts(x: Any, axes: tuple[int, ...]) -> list[Any] | None:
    """The inputs of `x` when `x` is a channel-axis concatenation in the traced graph, else None.

    A channel's statistics do not depend on the other channels, so the summaries of a concatenation
    are those of its parts, side by side. DenseNet feeds each BN the concatenation of every earlier
    feature map of its block: summarising each part once, where it is produced, instead of every
    concatenation again, cut the instrumented pass from 1.4x to ~1.1x the plain forward pass there.
    """
    import tensorflow as tf

    op = getattr(x, "op", None)
    rank = x.shape.rank
    if op is None or op.type != "ConcatV2" or rank is None or axes != (rank - 1,):
        return None
    parts = list(op.inputs[:-1])
    axis = tf.get_static_value(op.inputs[-1])
    if axis is None or int(axis) % rank != rank - 1:
        return None
    if any(part.shape.rank != rank or part.dtype != x.dtype for part in parts):
        return None
    return parts


def _summaries(x: Any, axes: tuple[int, ...], reduction: Reduction,
               cache: dict[Any, _Summary] | None = None) -> _Summary:
    """Per-channel (count, mean, M2, non-finite count) of `x` (see `_Summary`).

    Unmasked, a NaN/Inf makes that channel's mean non-finite, which the caller sees, and then runs
    the batch again masked: the NaN/Inf are left out and counted. Likewise the caller runs a batch
    again in two passes when one pass was not precise enough. (A tf.cond choosing inside the
    graph made tracing 6x slower.)
    `cache` maps tensors (their `ref()`) summarised in this trace to their summaries.
    """
    key = x.ref() if cache is not None and hasattr(x, "ref") else None
    if key is not None and key in cache:
        return cache[key]
    parts = _concat_parts(x, axes) if key is not None else None
    if parts is not None:
        summary = _concatenated([_summaries(part, axes, reduction, cache) for part in parts])
    else:
        summary = _reduce(x, axes, reduction)
    if key is not None:
        cache[key] = summary
    return summary


def _reduce(x: Any, axes: tuple[int, ...], reduction: Reduction) -> _Summary:
    import tensorflow as tf

    # The reduction runs in float32 (float64 inputs stay float64): float16 sums of ~10^5 values
    # per channel would lose the mean; only the per-channel results are cast to float64.
    if x.dtype != tf.float64:
        x = tf.cast(x, tf.float32)
    reduce_axes = [a for a in range(x.shape.rank) if a not in axes]
    channels = 1
    for a in axes:
        channels *= int(x.shape[a])
    if reduction is not Reduction.MASKED:
        per_channel = tf.cast(tf.size(x), tf.float64) / channels
        mean, variance = _moments(x, reduce_axes, per_channel, two_pass=reduction is Reduction.TWO_PASS)
        # m2 as computed, which the caller checks; the variance BN normalises with cannot be negative.
        return _Summary(tf.fill([channels], per_channel), mean, variance * per_channel,
                        tf.zeros([channels], tf.float64), tf.maximum(variance, 0.0))
    finite = tf.math.is_finite(x)
    count = tf.reduce_sum(tf.cast(finite, x.dtype), reduce_axes, keepdims=True)
    kept = tf.where(finite, x, tf.zeros_like(x))
    masked_mean = tf.reduce_sum(kept, reduce_axes, keepdims=True) / tf.maximum(count, 1)
    deviation = tf.where(finite, x - masked_mean, tf.zeros_like(x))
    m2 = tf.reduce_sum(deviation * deviation, reduce_axes)
    bad = tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float64), reduce_axes)
    return _Summary(tf.reshape(tf.cast(count, tf.float64), [-1]), tf.reshape(tf.cast(masked_mean, tf.float64), [-1]),
                    tf.reshape(tf.cast(m2, tf.float64), [-1]), tf.reshape(bad, [-1]))


def _moments(x: Any, reduce_axes: list[int], per_channel: Any, two_pass: bool) -> tuple[Any, Any]:
    """Flat per-channel float64 mean and population variance of `x` (`per_channel` values each).

    One pass: the sums and the sums of squares, read from `x` together. Two passes: the mean, then
    the squared deviations from it, which needs a temporary copy of `x`. The variance of one pass
    is exact to about 1e-7 * (1 + mean^2 / variance) where it sums float32 squares (any axis but
    the batch axis to reduce), of two passes to ~1e-7; a (batch, channels) input is squared in
    float64, which one pass leaves exact (a Dense head after global pooling often has
    |mean| > 30 std).
    Each sum reduces one axis at a time, the innermost first, and the batch axis last in float64:
    Eigen reduces one inner axis near memory speed, but several outer axes at once ~3x slower, and
    short partial sums keep float32's rounding small. For 32x112x112x96 values around 3 +- 2, one
    pass took 19 ms and two 44 ms, where tf.nn.moments took 72 ms (and missed NumPy's variance by
    2e-5; at 1e4 +- 1 it was wrong by 60x, two passes by 2e-7).
    """
    import tensorflow as tf

    def total(values: Any, squared: bool = False) -> Any:
        inner = sorted((a for a in reduce_axes if a != 0), reverse=True)
        square_in_float64 = squared and not inner
        if squared and inner:
            # The Euclidean norm squares as it reads: no temporary tensor of squares.
            values = tf.square(tf.math.reduce_euclidean_norm(values, inner[0], keepdims=True))
            inner = inner[1:]
        for axis in inner:
            values = tf.reduce_sum(values, axis, keepdims=True)
        values = tf.cast(values, tf.float64)
        if square_in_float64:
            values = tf.square(values)
        if 0 in reduce_axes:
            values = tf.reduce_sum(values, 0, keepdims=True)
        return values

    mean = total(x) / per_channel
    if two_pass:
        variance = total(x - tf.cast(mean, x.dtype), squared=True) / per_channel
    else:
        variance = total(x, squared=True) / per_channel - mean * mean
    return tf.reshape(mean, [-1]), tf.reshape(variance, [-1])


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
    import tensorflow as tf
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    x = ops.cast(inputs, compute_dtype)
    mean = ops.cast(layer.moving_mean, compute_dtype)
    variance = ops.cast(layer.moving_variance, compute_dtype)
    if layer.trainable and use_batch_statistics is True:
        mean, variance = tf.cast(summary.mean, compute_dtype), tf.cast(summary.variance, compute_dtype)
    elif layer.trainable:
        mean = tf.where(use_batch_statistics, tf.cast(summary.mean, compute_dtype), mean)
        variance = tf.where(use_batch_statistics, tf.cast(summary.variance, compute_dtype), variance)
    gamma = ops.cast(layer.gamma, compute_dtype) if layer.scale else None
    beta = ops.cast(layer.beta, compute_dtype) if layer.center else None
    outputs = ops.batch_normalization(x, mean, variance, axis=layer.axis, offset=beta, scale=gamma,
                                      epsilon=layer.epsilon)
    return ops.cast(outputs, layer.compute_dtype)


class Instrumentation:
    """Context manager: wraps every BN layer's `call` on entry, restores it on exit."""

    def __init__(self, taps: tuple[BNTap, ...], batch_statistics: bool = False):
        """batch_statistics: while recording, the layers normalise with the batch's own statistics
        (how `recalibrate` sees what each layer gets in training)."""
        self.taps = taps
        self.record_with_batch_statistics = batch_statistics
        self.mode = Mode.OFF
        self._reduction = Reduction.ONE_PASS
        self._switch: Any = None
        self._cache: dict[Any, _Summary] = {}
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
        import tensorflow as tf

        @tf.autograph.experimental.do_not_convert
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

        return call

    def _record(self, tap: BNTap, inputs: Any, outputs: Any, measure_output: bool) -> _Summary:
        """Record the input's (and maybe the output's) summaries; returns the input's."""
        rank = inputs.shape.rank
        axes = layer_axes(tap.layer, rank)
        sides = (("input", inputs), ("output", outputs)) if measure_output else (("input", inputs),)
        recorded = []
        for side, tensor in sides:
            summary = _summaries(tensor, axes, self._reduction, self._cache)
            channels = 1
            for a in axes:
                channels *= int(tensor.shape[a])
            self._records.append((Entry(tap.index, side, channels, axes, rank), summary))
            recorded.append(summary)
        return recorded[0]

    def start_recording(self, reduction: Reduction = Reduction.ONE_PASS, batch_statistics: Any = None) -> None:
        """Record from now on (inside the function being traced).

        batch_statistics: a scalar boolean tensor of that function, or None. With a tensor, the
        switchable layers (`_switchable`) normalise with the batch's own statistics where it is
        true and with the moving statistics where it is false, so one trace serves both the pass
        and the train/inference gap. The tensor is ignored while masked (the gap never uses the
        masked step) and by layers that already run on batch statistics.
        """
        self._records = []
        self._cache = {}
        self._reduction = reduction
        self._switch = None if reduction is Reduction.MASKED else batch_statistics
        self.mode = Mode.RECORD

    def stop_recording(self) -> tuple[tuple[Entry, ...], tuple[Any, Any, Any, Any]]:
        """The layout of what was recorded and four flat float64 tensors (count, mean, M2, non-finite)."""
        import tensorflow as tf

        self.mode = Mode.OFF
        self._switch = None
        self._cache = {}
        layout = tuple(entry for entry, _ in self._records)
        if not self._records:
            empty = tf.zeros([0], tf.float64)
            return layout, (empty, empty, empty, empty)
        packed = tuple(tf.concat([summary.packed()[i] for _, summary in self._records], axis=0) for i in range(4))
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
