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

The same wrapper can also force a BN layer into batch-statistics mode (training=True) while every
other layer stays in inference mode, which is how the train/inference gap is measured.

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


def _summaries(x: Any, axes: tuple[int, ...], masked: bool) -> tuple[Any, Any, Any, Any]:
    """Per-channel (count, mean, M2, non-finite count) of `x` as flat float64 tensors.

    Unmasked: two passes (tf.nn.moments); a NaN/Inf makes that channel's mean non-finite, which
    the caller sees, and then runs the batch again masked. Masked: the NaN/Inf are left out and
    counted. (A tf.cond choosing between both inside the graph made tracing 6x slower.)
    """
    import tensorflow as tf

    if x.dtype != tf.float64:
        x = tf.cast(x, tf.float32)
    reduce_axes = [a for a in range(x.shape.rank) if a not in axes]
    channels = 1
    for a in axes:
        channels *= int(x.shape[a])
    if not masked:
        per_channel = tf.cast(tf.size(x), tf.float64) / channels
        mean, variance = tf.nn.moments(x, reduce_axes)
        return (tf.fill([channels], per_channel), tf.reshape(tf.cast(mean, tf.float64), [-1]),
                tf.reshape(tf.cast(variance, tf.float64), [-1]) * per_channel, tf.zeros([channels], tf.float64))
    finite = tf.math.is_finite(x)
    count = tf.reduce_sum(tf.cast(finite, x.dtype), reduce_axes, keepdims=True)
    kept = tf.where(finite, x, tf.zeros_like(x))
    masked_mean = tf.reduce_sum(kept, reduce_axes, keepdims=True) / tf.maximum(count, 1)
    deviation = tf.where(finite, x - masked_mean, tf.zeros_like(x))
    m2 = tf.reduce_sum(deviation * deviation, reduce_axes)
    bad = tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.float64), reduce_axes)
    return (tf.reshape(tf.cast(count, tf.float64), [-1]), tf.reshape(tf.cast(masked_mean, tf.float64), [-1]),
            tf.reshape(tf.cast(m2, tf.float64), [-1]), tf.reshape(bad, [-1]))


class Instrumentation:
    """Context manager: wraps every BN layer's `call` on entry, restores it on exit."""

    def __init__(self, taps: tuple[BNTap, ...], batch_statistics: bool = False):
        """batch_statistics: while recording, the layers normalise with the batch's own statistics
        (how `recalibrate` sees what each layer gets in training)."""
        self.taps = taps
        self.record_with_batch_statistics = batch_statistics
        self.mode = Mode.OFF
        self._masked = False
        self._records: list[tuple[Entry, tuple[Any, Any, Any, Any]]] = []
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
            outputs = original_call(*args, **kwargs)
            if mode is Mode.RECORD:
                inputs = args[0] if args else kwargs["inputs"]
                training = args[1] if len(args) > 1 else kwargs.get("training")
                # A tensor or True: this call may use batch statistics, the affine map does not hold.
                forced_training = training is not None and training is not False
                self._record(tap, inputs, outputs, measure_output=forced_training or not _is_stock(tap.layer))
            return outputs

        return call

    def _record(self, tap: BNTap, inputs: Any, outputs: Any, measure_output: bool) -> None:
        rank = inputs.shape.rank
        axes = layer_axes(tap.layer, rank)
        sides = (("input", inputs), ("output", outputs)) if measure_output else (("input", inputs),)
        for side, tensor in sides:
            summary = _summaries(tensor, axes, self._masked)
            channels = 1
            for a in axes:
                channels *= int(tensor.shape[a])
            self._records.append((Entry(tap.index, side, channels, axes), summary))

    def start_recording(self, masked: bool = False) -> None:
        self._records = []
        self._masked = masked
        self.mode = Mode.RECORD

    def stop_recording(self) -> tuple[tuple[Entry, ...], tuple[Any, Any, Any, Any]]:
        """The layout of what was recorded and four flat float64 tensors (count, mean, M2, non-finite)."""
        import tensorflow as tf

        self.mode = Mode.OFF
        layout = tuple(entry for entry, _ in self._records)
        if not self._records:
            empty = tf.zeros([0], tf.float64)
            return layout, (empty, empty, empty, empty)
        packed = tuple(tf.concat([summary[i] for _, summary in self._records], axis=0) for i in range(4))
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
