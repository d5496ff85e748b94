"""What one batch may cost: the probes refuse, before allocating it, a batch above MAX_BATCH_BYTES.

A model file is untrusted, and the shapes it declares decide what loading and running it allocate:
a Dense layer declared on a (None, 10^9) input makes Keras create a kernel of 10^9 x units floats
while loading, an input of (None, 100000, 100000, 3) makes every image of a `--data` directory a
120 GB array once resized, and an UpSampling2D of size 2000 turns a 16x16 image into 32000x32000
pixels per channel. SPEC bounds a hostile file at 1 GiB, so the probes check three times, each
before the memory is taken:

- `check_declared_shapes`: the input shape each layer of the config declares (one sample as
  float32), before Keras loads the model: TensorFlow takes 10 s to give up on a variable it
  cannot allocate, and allocates one it can. What is not bounded: a variable made large by the
  layer's own arguments on a modest input (Dense units, Conv filters); Keras refuses it after
  building it, when the file's weights do not fit;
- `check_inputs`: the batch itself (batch size x the bytes of one sample of every input), before
  any batch is read or decoded;
- `check_tensor`: the largest tensor of the compiled step (every layer's output, the BN inputs
  among them), after the backend traced the step and before it runs (the TensorFlow graph, the
  JAX jaxpr); on PyTorch, which runs eagerly, the largest layer output the functional model
  declares (`check_layer_outputs`).

A real backbone stays far below: ResNet50 at 224x224 with a batch of 32 has 19 MB of input and
103 MB in its largest tensor. Where a legitimate model exceeds the bound, the message says which
`--batch-size` fits.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bninspect.data import DataSource
from bninspect.errors import UsageProblem
from bninspect.model import ModelDescription
from bninspect.probes.run_errors import layers_with_paths

MAX_BATCH_BYTES = 1 << 30
_GIB = float(1 << 30)
_FLOAT32 = 4


class TooLarge(UsageProblem):
    """Loading or running the model would take more memory than bninspect allows a model file."""


def check_declared_shapes(source: str, description: ModelDescription) -> None:
    """Refuse a model whose config declares a layer input of more than MAX_BATCH_BYTES per sample
    (as float32): no batch of it fits the bound, and Keras builds variables on the declared shape."""
    for layer in description.layers:
        shape = layer.input_shape
        per_sample = math.prod(size for size in (shape or ())[1:] if size is not None) * _FLOAT32
        if per_sample > MAX_BATCH_BYTES:
            raise TooLarge(f"{source}: refused: layer {layer.path} ({layer.class_name}) declares an input of shape "
                           f"{_shape_text(shape)}, {per_sample / _GIB:.1f} GiB per sample as float32, above "
                           f"bninspect's bound of {MAX_BATCH_BYTES / _GIB:.0f} GiB per batch")


def check_inputs(source: str, samples: DataSource, batch_size: int) -> None:
    """Refuse when one batch of the data, as the model receives it, is above MAX_BATCH_BYTES."""
    needed = samples.batch_bytes(batch_size)
    if needed > MAX_BATCH_BYTES:
        shapes = ", ".join(_shape_text(shape) for shape in samples.sample_shapes())
        raise _too_large(source, f"the model's input, {shapes} per sample,", needed,
                         min(batch_size, samples.samples))


def check_tensor(source: str, per_sample: int, place: str, shape: Any, batch_size: int) -> None:
    """Refuse when the largest tensor of the step, `per_sample` bytes per sample (of `place`, with
    `shape` without the batch axis), holds more than MAX_BATCH_BYTES for a batch of `batch_size`.
    Each backend adapter finds that tensor in what it compiled."""
    if per_sample * batch_size > MAX_BATCH_BYTES:
        raise _too_large(source, f"a tensor of {place}, {_shape_text(shape)} per sample,", per_sample * batch_size,
                         batch_size)


def check_layer_outputs(source: str, model: Any, batch_size: int) -> None:
    """The largest output a layer of a functional model declares (Keras' symbolic shapes, nested
    models included) against the bound: for a backend that runs eagerly and has no graph to read
    before it allocates. A subclassed model declares none: its inputs' bound applies."""
    largest, where = 0, None
    for path, layer in layers_with_paths(model):
        for node in list(getattr(layer, "_inbound_nodes", None) or ()):
            for tensor in list(getattr(node, "outputs", None) or ()):
                shape = tuple(getattr(tensor, "shape", None) or ())
                if len(shape) < 1 or any(size is None for size in shape[1:]):
                    continue
                dtype = str(getattr(tensor, "dtype", "float32"))
                try:
                    itemsize = np.dtype(dtype).itemsize
                except TypeError:
                    itemsize = _FLOAT32  # bfloat16 and other names NumPy does not know
                per_sample = math.prod(shape[1:]) * itemsize
                if per_sample > largest:
                    largest, where = per_sample, (f"layer {path} ({type(layer).__name__})", shape[1:])
    if where is not None:
        check_tensor(source, largest, where[0], where[1], batch_size)


def _too_large(source: str, what: str, needed: int, batch: int) -> TooLarge:
    per_sample = needed / batch
    fits = int(MAX_BATCH_BYTES // per_sample)
    if fits >= 1:
        remedy = f"lower --batch-size to {fits} or less"
    else:
        remedy = "one sample alone is above it: the shapes the model declares are too large to run"
    return TooLarge(f"{source}: refused: {what} would take {needed / _GIB:.1f} GiB for a batch of {batch}, "
                    f"above bninspect's bound of {MAX_BATCH_BYTES / _GIB:.0f} GiB per batch; {remedy}")


def _shape_text(shape: Any) -> str:
    sizes = ", ".join("None" if size is None else str(size) for size in shape)
    return f"({sizes},)" if len(shape) == 1 else f"({sizes})"
