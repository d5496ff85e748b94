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
- `check_graph`: the largest tensor of the traced step (every layer's output, the BN inputs among
  them), after TensorFlow traced the step and before it runs; the batch axis is the one axis the
  trace leaves free.

A real backbone stays far below: ResNet50 at 224x224 with a batch of 32 has 19 MB of input and
103 MB in its largest tensor. Where a legitimate model exceeds the bound, the message says which
`--batch-size` fits.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from typing import Any

from bninspect.data import DataSource
from bninspect.errors import UsageProblem
from bninspect.model import ModelDescription
from bninspect.probes.run_errors import layer_of_node

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


def check_graph(source: str, model: Any, graph: Any, batch_size: int) -> None:
    """Refuse when a tensor of the traced `graph` (a tf.Graph whose batch axis is None) holds
    more than MAX_BATCH_BYTES for a batch of `batch_size` samples."""
    largest, where = 0, None
    for operation in graph.get_operations():
        for tensor in operation.outputs:
            per_sample = _bytes_per_sample(tensor)
            if per_sample is not None and per_sample > largest:
                largest, where = per_sample, (operation.name, tensor.shape.as_list()[1:])
    if where is not None and largest * batch_size > MAX_BATCH_BYTES:
        node, shape = where
        place = layer_of_node(model, node) or f"op {node}"
        raise _too_large(source, f"a tensor of {place}, {_shape_text(shape)} per sample,", largest * batch_size,
                         batch_size)


def _bytes_per_sample(tensor: Any) -> int | None:
    """Bytes per sample of a tensor whose first axis is the batch (None) and whose other axes are
    known; None for any other tensor (weights, scalars, shapes only known at run time)."""
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if not dims or dims[0] is not None or any(size is None for size in dims[1:]):
        return None
    dtype = tensor.dtype
    if not (dtype.is_floating or dtype.is_integer or dtype.is_bool or dtype.is_complex):
        return None
    return math.prod(dims[1:]) * dtype.size


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
