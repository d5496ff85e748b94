"""The PyTorch adapter: the model runs eagerly under `torch.no_grad()`, as Keras' own `predict`
does on torch, so any batch size runs without recompiling. Eager execution has no graph to read
before it allocates: the layer outputs a functional model declares are checked against the batch
bound before the first batch (`budget.check_layer_outputs`).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from bninspect.data import Batch
from bninspect.probes import budget
from bninspect.probes.backends.defaults import AdapterDefaults
from bninspect.probes.instrument import host_sums


class TorchAdapter(AdapterDefaults):
    name = "torch"
    float64_on_device = True

    def sum_within_samples(self, values: Any, axes: list[int], squared: bool) -> Any:
        """Sums (of squares) over `axes` at once, kept as size-1 axes; the norm squares as it
        reads: no temporary tensor of squares."""
        import torch

        if squared:
            return torch.square(torch.linalg.vector_norm(values, dim=tuple(axes), keepdim=True))
        return torch.sum(values, dim=tuple(axes), keepdim=True)

    def compile(self, source: str, model: Any, function: Callable, first: Batch, rows: int) -> "_TorchStep":
        budget.check_layer_outputs(source, model, rows)
        return _TorchStep(function, self)

    def runtime_errors(self) -> tuple[type[BaseException], ...]:
        return (RuntimeError,)


class _TorchStep:
    def __init__(self, function: Callable, adapter: TorchAdapter):
        self._function = function
        self._adapter = adapter

    def __call__(self, batch_statistics: bool, arrays: Sequence[np.ndarray]
                 ) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
        import torch
        from keras import ops

        with torch.no_grad(), self._adapter.tracing():
            tensors = tuple(ops.convert_to_tensor(array) for array in arrays)
            outputs, packed = self._function(bool(batch_statistics), None, tensors)
            return ([ops.convert_to_numpy(output) for output in outputs],
                    host_sums(tuple(ops.convert_to_numpy(p) for p in packed), int(arrays[0].shape[0])))
