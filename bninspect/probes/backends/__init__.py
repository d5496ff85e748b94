"""One small adapter per Keras backend, for what the probes cannot write backend-neutrally.

The probes (`instrument`, `runner`, `recalibrate`) are written on `keras.ops`, as Keras' own
layers are; what differs per backend is here, as in Keras' own `keras/src/backend/`:

- the compiled step: `compile(source, model, function, first, rows)` turns
  `function(batch_statistics, valid, arrays) -> (outputs, packed sums)` into a `Step` that takes
  numpy arrays and returns numpy outputs and host float64 sums (`instrument.host_sums`), after
  checking what a batch of `rows` samples (the largest it will get) allocates (`budget`): a `tf.function` traced once for any batch
  size (TensorFlow), a `jax.jit` over the model's variables in a `StatelessScope`, compiled once
  for a fixed batch shape with short batches padded and their padding masked out (JAX), eager
  calls under `torch.no_grad` (PyTorch, as Keras' own `predict` runs there);
- `float64_on_device`: whether the batch axis is summed in float64 on the device (TensorFlow,
  PyTorch, JAX with x64) or per sample in float32 and added up in float64 on the host (JAX);
- `sum_within_samples`, `concat_parts`, `plain_python`: the per-sample sums, TensorFlow's concatenation
  shortcut, and keeping autograph away from the wrapped BN calls;
- `runtime_errors`, `tracing`, `hint`: the backend's errors while a model runs, for `run_errors`.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from bninspect.errors import UsageProblem


class Step(Protocol):
    def __call__(self, batch_statistics: bool, arrays: Sequence[np.ndarray]
                 ) -> tuple[list[np.ndarray], tuple[np.ndarray, ...]]:
        """(outputs, one row per sample of `arrays`; the packed sums as float64 host vectors)."""


def is_tf_keras(model: Any) -> bool:
    return any(cls.__module__.startswith("tf_keras") for cls in type(model).__mro__)


def backend_name() -> str:
    import keras

    return str(keras.config.backend())


def for_model(source: str, model: Any) -> Any:
    """The adapter that runs `model`: a tf-keras model runs on TensorFlow whatever Keras runs on;
    a Keras 3 model on Keras' backend."""
    backend = backend_name()
    if is_tf_keras(model):
        if backend != "tensorflow":
            raise UsageProblem(f"{source}: a tf-keras model runs on TensorFlow, but Keras runs on {backend} in this "
                               "process: use --backend tensorflow (or KERAS_BACKEND=tensorflow)")
        backend = "tensorflow"
    return adapter(backend)


def adapter(backend: str) -> Any:
    if backend == "tensorflow":
        from bninspect.probes.backends.tensorflow import TensorFlowAdapter

        return TensorFlowAdapter()
    if backend == "jax":
        from bninspect.probes.backends.jax import JaxAdapter

        return JaxAdapter()
    if backend == "torch":
        from bninspect.probes.backends.torch import TorchAdapter

        return TorchAdapter()
    raise UsageProblem(f"Keras runs on the {backend!r} backend; bninspect runs models on tensorflow, jax or torch")


def load_errors(backend: str) -> tuple[type[BaseException], ...]:
    """What the backend raises while Keras builds a model's variables (a variable larger than it
    can allocate), beside Keras' own load errors."""
    return adapter(backend).runtime_errors()
