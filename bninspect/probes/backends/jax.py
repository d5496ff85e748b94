"""The JAX adapter: one `jax.jit` per step over the model's variables, for one batch shape.

The step runs the model in a `keras.StatelessScope` with the variables' values as arguments, as
Keras' own JAX `predict` does (`stateless_call`), so the weights are not baked into the compiled
program. It is traced once (`jit(...).trace`), its jaxpr checked against the batch bound, and
compiled once for the first batch's shape: a shorter batch (the last one, a single sample of the
consistency check) is padded to that shape with copies of its own rows, and the padding is left
out of every sum (`valid`) and of the outputs, so nothing recompiles; a single sample (the
consistency check) gets its own compilation, cheaper than a padded batch per sample. JAX computes in float32
unless x64 is enabled: then the per-sample sums come to the host in float32 and are added up there
in float64 (`float64_on_device`).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from bninspect.data import Batch
from bninspect.probes import budget
from bninspect.probes.backends.defaults import AdapterDefaults
from bninspect.probes.instrument import host_sums
from bninspect.probes.run_errors import layer_of_node


class JaxAdapter(AdapterDefaults):
    name = "jax"

    def __init__(self) -> None:
        import jax

        self.float64_on_device = bool(jax.config.jax_enable_x64)

    def sum_within_samples(self, values: Any, axes: list[int], squared: bool) -> Any:
        """Sums (of squares) over `axes` at once, kept as size-1 axes: XLA fuses the square into
        the reduction, and the sums of one tensor into one pass over it."""
        from keras import ops

        return ops.sum(ops.square(values) if squared else values, axis=tuple(axes), keepdims=True)

    def compile(self, source: str, model: Any, function: Callable, first: Batch, rows: int) -> "_JaxStep":
        import jax
        import keras

        variables = list(model.variables)

        def pure(values, batch_statistics, valid, *arrays):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(batch_statistics, valid, arrays)

        jitted = jax.jit(pure)
        step = _JaxStep(jitted, variables, rows, self)
        with self.tracing():
            traced = jitted.trace(*step.arguments(False, first.arrays, rows))
        _check_jaxpr(source, model, traced.jaxpr, rows)
        with self.tracing():
            step.compiled[rows] = traced.lower().compile()
        return step

    def runtime_errors(self) -> tuple[type[BaseException], ...]:
        import jax

        return (jax.errors.JaxRuntimeError,)


class _JaxStep:
    """Compiled for the batch size, and for single samples when the consistency check asks: four
    single samples padded to a batch of 32 cost four batches (15 s on MobileNetV2), a second
    compilation for one sample ~3 s."""

    def __init__(self, jitted: Any, variables: list[Any], size: int, adapter: JaxAdapter):
        self._jitted = jitted
        self._variables = variables
        self._size = size
        self._adapter = adapter
        self.compiled: dict[int, Any] = {}

    def arguments(self, batch_statistics: bool, arrays: Sequence[np.ndarray], size: int) -> tuple[Any, ...]:
        rows = int(arrays[0].shape[0])
        if rows > size:
            raise ValueError(f"a batch of {rows} rows for a step compiled for {size}")
        padded = [array if rows == size else np.take(array, np.arange(size) % rows, axis=0) for array in arrays]
        values = [variable.value for variable in self._variables]
        return (values, np.bool_(batch_statistics), np.int32(rows), *padded)

    def _executable(self, size: int, arguments: tuple[Any, ...]) -> Any:
        if size not in self.compiled:
            with self._adapter.tracing():
                self.compiled[size] = self._jitted.lower(*arguments).compile()
        return self.compiled[size]

    def __call__(self, batch_statistics: bool, arrays: Sequence[np.ndarray]
                 ) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
        rows = int(arrays[0].shape[0])
        size = 1 if rows == 1 else self._size
        arguments = self.arguments(batch_statistics, arrays, size)
        outputs, packed = self._executable(size, arguments)(*arguments)
        return ([np.asarray(output)[:rows] for output in outputs],
                host_sums(tuple(np.asarray(p) for p in packed), rows))


def _check_jaxpr(source: str, model: Any, closed: Any, batch_size: int) -> None:
    """The largest value the traced program makes per sample (its leading axis the batch) against the bound."""
    largest, where = 0, None
    for equation in _equations(closed.jaxpr):
        for variable in equation.outvars:
            aval = getattr(variable, "aval", None)
            shape = tuple(getattr(aval, "shape", ()) or ())
            if len(shape) < 1 or shape[0] != batch_size:
                continue
            per_sample = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(aval.dtype).itemsize
            if per_sample > largest:
                largest, where = per_sample, (str(equation.source_info.name_stack), shape[1:])
    if where is not None:
        scope, shape = where
        place = layer_of_node(model, scope + "/op") if scope else None
        budget.check_tensor(source, largest, place or "the model", shape, batch_size)


def _equations(jaxpr: Any) -> Iterator[Any]:
    """Every equation of a jaxpr and of the jaxprs inside it (jit calls, control flow)."""
    stack = [jaxpr]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for equation in current.eqns:
            yield equation
            for value in equation.params.values():
                for item in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(item, "jaxpr", None)
                    if inner is not None and hasattr(inner, "eqns"):
                        stack.append(inner)
                    elif hasattr(item, "eqns"):
                        stack.append(item)
