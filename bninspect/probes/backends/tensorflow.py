"""The TensorFlow adapter: one `tf.function` per step, traced once for any batch size.

Without autograph by default: Keras' own layers have no Python control flow on tensors, and
converting every call made tracing 2x slower; the step is traced again with autograph for custom
layers that need it. After tracing and before running, the largest tensor of the graph is checked
against the batch bound (`budget`). A concatenation along the channel axis is summarised from its
parts (`concat_parts`). Names TensorFlow cannot open as graph scopes are refused before the model
runs (`refuse_names`), as Keras' own `predict` would fail on them.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bninspect.data import Batch
from bninspect.errors import ModelRefused
from bninspect.probes import budget
from bninspect.probes.instrument import host_sums
from bninspect.probes.run_errors import layer_of_node, nchw_hint, tracing_errors


class TensorFlowAdapter:
    name = "tensorflow"
    float64_on_device = True

    def plain_python(self, function: Callable) -> Callable:
        import tensorflow as tf

        return tf.autograph.experimental.do_not_convert(function)

    def sum_within_samples(self, values: Any, axes: list[int], squared: bool) -> Any:
        """Sums (of squares) over `axes` (innermost first), kept as size-1 axes. One axis at a
        time: Eigen reduces one inner axis near memory speed, but several outer axes at once ~3x
        slower, and short partial sums keep float32's rounding small. The Euclidean norm squares
        as it reads: no temporary tensor of squares."""
        import tensorflow as tf

        remaining = list(axes)
        if squared:
            values = tf.square(tf.math.reduce_euclidean_norm(values, remaining[0], keepdims=True))
            remaining = remaining[1:]
        for axis in remaining:
            values = tf.reduce_sum(values, axis, keepdims=True)
        return values

    def concat_parts(self, x: Any, axes: tuple[int, ...]) -> list[Any] | None:
        """The inputs of `x` when `x` is a channel-axis concatenation in the traced graph, else None.

        A channel's statistics do not depend on the other channels, so the summaries of a
        concatenation are those of its parts, side by side. DenseNet feeds each BN the
        concatenation of every earlier feature map of its block: summarising each part once, where
        it is produced, instead of every concatenation again, cut the instrumented pass from 1.4x
        to ~1.1x the plain forward pass there.
        """
        import tensorflow as tf

        op = getattr(x, "op", None)
        rank = getattr(getattr(x, "shape", None), "rank", None)
        if op is None or not hasattr(op, "type") or op.type != "ConcatV2" or rank is None or axes != (rank - 1,):
            return None
        parts = list(op.inputs[:-1])
        axis = tf.get_static_value(op.inputs[-1])
        if axis is None or int(axis) % rank != rank - 1:
            return None
        if any(part.shape.rank != rank or part.dtype != x.dtype for part in parts):
            return None
        return parts

    def compile(self, source: str, model: Any, function: Callable, first: Batch, rows: int) -> "_TensorFlowStep":
        import tensorflow as tf

        step = self._traced(function, first, autograph=False)
        try:
            with self.tracing():
                traced = step.get_concrete_function()
        except tf.errors.OperatorNotAllowedInGraphError:
            step = self._traced(function, first, autograph=True)
            with self.tracing():
                traced = step.get_concrete_function()
        _check_graph(source, model, traced.graph, rows)
        return _TensorFlowStep(step)

    @staticmethod
    def _traced(function: Callable, first: Batch, autograph: bool) -> Any:
        import tensorflow as tf

        def step(batch_statistics, *arrays):
            return function(batch_statistics, None, arrays)

        # A batch axis of None: the last, shorter batch and single samples reuse the one trace.
        signature = [tf.TensorSpec((), tf.bool),
                     *(tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype)) for array in first.arrays)]
        return tf.function(step, input_signature=signature, autograph=autograph)

    def runtime_errors(self) -> tuple[type[BaseException], ...]:
        import tensorflow as tf

        return (tf.errors.OpError,)

    @contextmanager
    def tracing(self) -> Iterator[None]:
        """OperatorNotAllowedInGraphError, a TypeError that asks for autograph, passes through for
        `compile` to trace again."""
        import tensorflow as tf

        with tracing_errors(passthrough=(tf.errors.OperatorNotAllowedInGraphError,)):
            yield

    def refuse_names(self, source: str, model: Any) -> None:
        refuse_names_tensorflow_rejects(source, model)

    def hint(self, reason: str) -> str | None:
        return nchw_hint(reason)


class _TensorFlowStep:
    def __init__(self, function: Any):
        self._function = function

    def __call__(self, batch_statistics: bool, arrays: Sequence[np.ndarray]
                 ) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
        outputs, packed = self._function(bool(batch_statistics), *arrays)
        return [output.numpy() for output in outputs], host_sums(tuple(p.numpy() for p in packed),
                                                                 int(arrays[0].shape[0]))


def _check_graph(source: str, model: Any, graph: Any, batch_size: int) -> None:
    """The largest tensor of the traced `graph` (a tf.Graph whose batch axis is None) against the bound."""
    largest, where = 0, None
    for operation in graph.get_operations():
        for tensor in operation.outputs:
            dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
            if not dims or dims[0] is not None or any(size is None for size in dims[1:]):
                continue  # weights, scalars, shapes only known at run time
            dtype = tensor.dtype
            if not (dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex):
                continue
            per_sample = int(np.prod(dims[1:], dtype=np.int64)) * dtype.size
            if per_sample > largest:
                largest, where = per_sample, (operation.name, dims[1:])
    if where is not None:
        node, shape = where
        budget.check_tensor(source, largest, layer_of_node(model, node) or f"op {node}", shape, batch_size)


# TensorFlow's rules for the names of graph scopes (`_VALID_SCOPE_NAME_REGEX` and
# `_VALID_OP_NAME_REGEX` in tensorflow/python/framework/ops.py). Keras opens a scope named after
# every layer it calls while TensorFlow traces the model (in `predict` as in the probes' step), and
# the model's own scope is a root scope, which cannot start with `_`, `-`, `\`, `/` or `>`. Keras
# itself accepts any name without `/`. Matched whole: TensorFlow's `$` lets a final newline through.
_TF_ROOT_SCOPE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
_TF_SCOPE = re.compile(r"[A-Za-z0-9_.\\/>-]*")


def refuse_names_tensorflow_rejects(source: str, model: Any) -> None:
    """Raise ModelRefused when TensorFlow would refuse to trace `model` for the names in it.

    A refusal, not a renaming: Keras' own `predict` fails on the same model, and the names are
    how every output of bninspect refers to the layers."""
    rejected = [] if _TF_ROOT_SCOPE.fullmatch(str(model.name)) else [f"'{model.name}' (the model itself)"]
    rejected += [f"'{path}' ({type(layer).__name__})" for path, layer in _called_layers(model)
                 if not _TF_SCOPE.fullmatch(str(layer.name))]
    if rejected:
        shown = ", ".join(rejected[:3]) + (f" and {len(rejected) - 3} more" if len(rejected) > 3 else "")
        raise ModelRefused(
            f"{source}: refused: TensorFlow cannot run a model with the names {shown}: names in its graphs hold "
            "only ASCII letters, digits and _ . - \\ / > (the model's own name starts with a letter, digit or '.'), "
            "and Keras' predict fails on this model too; rename them and save the model again")


def _called_layers(container: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) of every layer a forward pass calls, through nested models; input layers are
    not called."""
    for layer in list(getattr(container, "layers", None) or ()):
        if type(layer).__name__ == "InputLayer":
            continue
        path = prefix + str(layer.name)
        yield path, layer
        yield from _called_layers(layer, path + "/")
