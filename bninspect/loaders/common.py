"""Pieces every static loader shares: bounded JSON, BN layers from config + arrays, HDF5 reads.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from bninspect.loaders.graph import ConfigError, dtype_policy_name
from bninspect.loaders.hdf5_input import chunk_size, expand_chunk, storage_outside_file
from bninspect.loaders.remote import LaterVectors
from bninspect.model import CODE, Architecture, BNLayer

# A real model config is a few MB at most; a bigger one is hostile or broken, and parsing it would
# cost unbounded time and memory.
MAX_CONFIG_BYTES = 64 * 1024 * 1024
# One BN layer with more channels than this is not a real model: refuse rather than allocate.
MAX_CHANNELS = 1 << 24
# What one model's BN arrays may declare in all, counted from their shapes before a byte is read:
# a file of a few KB can declare 2^24 channels in every layer and be all fill value. The largest
# real CNNs hold well under 10^6 BN values and under 1,000 BN layers (4 arrays each); a hostile
# file within these bounds is read in seconds and under 1 GiB.
MAX_BN_VALUES = 1 << 24
MAX_BN_ARRAYS = 16_000
# An HDF5 chunk is read whole, whatever part of it the dataset covers; each chunk costs a look-up.
MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_CHUNKS = 65_536

BN_ARRAY_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def parse_json_config(raw: bytes | str, what: str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} is {len(raw)} bytes, more than the {MAX_CONFIG_BYTES} bytes a model config may have")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} is not valid JSON ({error.msg} at line {error.lineno})") from None


def attr_text(value: Any) -> str | None:
    """An HDF5 string attribute, which h5py returns as str or bytes depending on who wrote it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == () and isinstance(value.item(), bytes):
        return value.item().decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def attr_text_list(value: Any) -> list[str]:
    """A list-of-strings HDF5 attribute (`layer_names`, `weight_names`)."""
    if value is None:
        return []
    items = value.tolist() if isinstance(value, np.ndarray) else value
    if not isinstance(items, (list, tuple)):
        items = [items]
    texts = [attr_text(item) for item in items]
    return [text for text in texts if text]


# Stored type (H5Tencode bytes) -> (numpy dtype, its name). h5py's dataset.dtype converts the HDF5
# type afresh for each dataset (~15 us) and str(dtype) takes ~10 us more; a file with thousands of BN
# arrays has one or two types.
_DTYPES: dict[bytes, tuple[np.dtype, str]] = {}
_MAX_DTYPES = 64


def _dataset_dtype(dataset: Any) -> tuple[np.dtype, str]:
    try:
        key = dataset.get_type().encode()
    except Exception:  # a type HDF5 cannot serialise: no caching, h5py's conversion as before
        dtype = dataset.dtype
        return dtype, str(dtype)
    known = _DTYPES.get(key)
    if known is None:
        dtype = dataset.dtype
        known = (dtype, str(dtype))
        if len(_DTYPES) < _MAX_DTYPES:
            _DTYPES[key] = known
    return known


class ReadBudget:
    """What is left for one model's BN arrays (see MAX_BN_VALUES); charged before each read."""

    def __init__(self, values: int = MAX_BN_VALUES, arrays: int = MAX_BN_ARRAYS):
        self.values = values
        self.arrays = arrays

    def charge(self, values: int, what: str) -> None:
        self.values -= values
        self.arrays -= 1
        if self.values < 0:
            raise ConfigError(f"{what}: the BN arrays declare more than {MAX_BN_VALUES:,} values in all, "
                              "more than any real model: refusing to read them")
        if self.arrays < 0:
            raise ConfigError(f"{what}: the file holds more than {MAX_BN_ARRAYS:,} BN arrays, more than any real "
                              "model: refusing to read them")


_BUDGET: ContextVar[ReadBudget | None] = ContextVar("bninspect_read_budget", default=None)


@contextmanager
def read_budget() -> Iterator[ReadBudget]:
    """One budget for the BN arrays read inside the block (one model), whatever reader reads them."""
    budget = ReadBudget()
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _charge(values: int, what: str) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(values, what)


def _read_filtered_chunks(dataset: Any, plist: Any, count: int, dtype: np.dtype, chunk_bytes: int,
                          what: str) -> np.ndarray:
    """The values of a 1-D chunked dataset with filters, each chunk expanded to at most its size
    (hdf5_input.expand_chunk: HDF5's own deflate filter has no limit)."""
    filters = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
    chunk_values = chunk_bytes // dtype.itemsize
    out = np.empty(count, dtype=dtype)
    for start in range(0, count, chunk_values):
        mask, raw = dataset.read_direct_chunk((start,))
        raw = expand_chunk(raw, mask, filters, chunk_bytes, dtype.itemsize, what)
        wanted = min(chunk_values, count - start)
        piece = np.frombuffer(raw[:wanted * dtype.itemsize], dtype=dtype)
        if piece.size != wanted:
            raise ConfigError(f"{what} has a chunk of {len(raw)} bytes, too short for its values")
        out[start:start + wanted] = piece
    return out


def refuse_link_leaving(group: Any, name: str, what: str) -> None:
    """Refuse `name` (a path below `group`) when a link on the way is an external link: its target
    is another file. Soft links stay inside the file and are followed."""
    import h5py

    links = group.id.links
    # Most names are one component ("0", "vars"): one look-up, no splitting.
    paths = (name,) if "/" not in name else _prefixes(name)
    for path in paths:
        try:
            kind = links.get_info(path.encode("utf-8")).type
        except (KeyError, RuntimeError):  # h5py: "Unable to get link info (name doesn't exist)"
            return  # missing: the caller says so in its own words
        if kind == h5py.h5l.TYPE_EXTERNAL:
            raise ConfigError(f"{what} is an HDF5 external link to another file: refusing to follow it")
        if kind != h5py.h5l.TYPE_HARD and kind != h5py.h5l.TYPE_SOFT:
            raise ConfigError(f"{what} is a user-defined HDF5 link: refusing to follow it")


def _prefixes(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:depth + 1]) for depth in range(len(parts)) if parts[depth]]


def read_vector(group: Any, name: str, what: str, raw: BinaryIO | None = None,
                group_path: str | None = None) -> tuple[np.ndarray, str, str]:
    """A 1-D float array from dataset `name` of an HDF5 group, as float64, its stored dtype and
    the dataset's path in the file (where `recalibrate` writes new values).

    `raw` is the same bytes for plain reading (hdf5_input.FileRegion), when it is a file on disk:
    a contiguous dataset is then a run of bytes at a known offset, read directly. For a remote file `raw` is a
    `remote.LaterVectors`: the array comes back empty and is filled, with every other BN array of
    the file, by one fetch when the file is closed. That, and h5py's low-level
    API instead of `group[name][()]`, matter for files with thousands of BN arrays.
    `group_path` is `group.name` when the caller already has it (it costs an HDF5 call).
    """
    import h5py

    try:
        dataset = h5py.h5d.open(group.id, name.encode("utf-8"))
    except KeyError:
        refuse_link_leaving(group, name, what)  # an external link back into this file loops
        raise ConfigError(f"{what} is listed but missing") from None
    # An external link on the way opened another HDF5 file (under the reader bninspect gives
    # h5py, the same bytes opened again): the dataset is not in the group's file. Cheaper than
    # asking the type of each link on the way, and it sees every one of them.
    if dataset.fileno != group.id.fileno:
        raise ConfigError(f"{what} is an HDF5 external link to another file (or reached through one): refusing to follow it")
    shape = dataset.shape
    dtype, dtype_name = _dataset_dtype(dataset)
    if len(shape) != 1:
        raise ConfigError(f"{what} has shape {tuple(shape)}, expected one value per channel")
    if shape[0] > MAX_CHANNELS:
        raise ConfigError(f"{what} has {shape[0]} channels, more than {MAX_CHANNELS}")
    if dtype.kind not in "fiu":
        raise ConfigError(f"{what} has dtype {dtype}, expected floating point")
    _charge(shape[0], what)
    nbytes = shape[0] * dtype.itemsize
    # A contiguous dataset with an offset has its bytes in this file (external storage and virtual
    # datasets have none): read in place. Anything else is read by HDF5, once it is known to be
    # in the file and of a bounded size.
    offset = dataset.get_offset()
    if offset is not None and type(raw) is LaterVectors:  # a remote file: fetched with the others
        values = raw.vector(offset, shape[0], dtype, what)
        if group_path is None:
            group_path = group.name
        return values, dtype_name, f"{group_path.rstrip('/')}/{name}"
    if offset is not None and raw is not None:
        data = raw.pread(nbytes, offset)
        if len(data) != nbytes:
            raise ConfigError(f"{what} points past the end of the file")
        values = np.frombuffer(data, dtype=dtype)
    elif offset is not None:
        values = np.empty(shape, dtype=dtype)
        dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
    else:
        plist = dataset.get_create_plist()
        outside = storage_outside_file(plist)
        if outside is not None:
            raise ConfigError(f"{what} {outside}: refusing to read it")
        chunk_bytes = chunk_size(dataset, plist)
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise ConfigError(f"{what} is stored in chunks of more than {MAX_CHUNK_BYTES:,} bytes: refusing to read it")
        if chunk_bytes and -(-nbytes // chunk_bytes) > MAX_CHUNKS:
            raise ConfigError(f"{what} is stored in more than {MAX_CHUNKS:,} chunks: refusing to read it")
        if chunk_bytes and plist.get_nfilters():
            values = _read_filtered_chunks(dataset, plist, shape[0], dtype, chunk_bytes, what)
        else:
            values = np.empty(shape, dtype=dtype)
            dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
    if group_path is None:
        group_path = group.name
    return values.astype(np.float64), dtype_name, f"{group_path.rstrip('/')}/{name}"


def _axis(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _flag(value: Any, default: bool | None) -> bool | None:
    return value if isinstance(value, bool) else default


def bn_layer(path: str, class_name: str, config: Mapping[str, Any] | None,
             arrays: Mapping[str, tuple]) -> BNLayer:
    """Build a BNLayer from its config (None for weights-only files) and its named arrays:
    (values, stored dtype) or, from HDF5 files, (values, stored dtype, dataset path).

    Raises ConfigError when the moving statistics are missing or the arrays disagree in length.
    """
    for required in ("moving_mean", "moving_variance"):
        if required not in arrays:
            raise ConfigError(f"BN layer {path!r} has no {required}")
    sizes = {name: entry[0].size for name, entry in arrays.items()}
    if len(set(sizes.values())) != 1:
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ConfigError(f"BN layer {path!r} has arrays of different lengths ({listed})")
    config = config or None
    get = (lambda key: config.get(key)) if config else (lambda key: None)
    return BNLayer(
        path=path,
        class_name=class_name,
        gamma=arrays["gamma"][0] if "gamma" in arrays else None,
        beta=arrays["beta"][0] if "beta" in arrays else None,
        moving_mean=arrays["moving_mean"][0],
        moving_variance=arrays["moving_variance"][0],
        axis=_axis(get("axis")),
        epsilon=_number(get("epsilon")),
        momentum=_number(get("momentum")),
        center=_flag(get("center"), True if config else None),
        scale=_flag(get("scale"), True if config else None),
        trainable=_flag(get("trainable"), True if config else None),
        dtype_policy=dtype_policy_name(get("dtype")),
        stored_dtype=arrays["moving_mean"][1],
        locations=tuple((name, entry[2]) for name, entry in arrays.items() if len(entry) > 2),
        has_config=config is not None,
    )


def code_architecture(entry: Mapping[str, Any], class_name: str | None = None) -> Architecture:
    """The code architecture of a serialised model whose config is no layer graph: Keras 3's
    `{"module", "class_name", "config", "registered_name"}` (config.json, a preset's task.json)
    or tf-keras' metadata with only `class_name` (given as `class_name` when it is elsewhere)."""
    def text(key: str) -> str | None:
        value = entry.get(key)
        return value if isinstance(value, str) and value else None

    config = entry.get("config")
    return Architecture(CODE, class_name=class_name or text("class_name"), module=text("module"),
                        registered_name=text("registered_name"),
                        config=config if isinstance(config, dict) else {})


def architecture_notes(architecture: Architecture) -> tuple[str, ...]:
    """What a report should say about loading a code architecture: the library it needs."""
    from bninspect.keras_classes import LIBRARY_MODULE_ROOTS

    library = architecture.library
    if library in LIBRARY_MODULE_ROOTS:
        return (f"loading the model with Keras needs {library} installed (class {architecture.qualified_name})",)
    return ()


def may_hold_unlisted_bn(layer: Any) -> bool:
    """Whether a graph layer can hold BN layers the graph does not list: custom classes (their
    sublayers are saved as weights, not in the config) and TimeDistributed. Keras 3 configs name
    the module of built-in classes; Keras 2 configs and legacy .h5 files carry only the class name."""
    from bninspect.model import BN_CLASS_NAMES
    from bninspect.keras_classes import BUILTIN_LAYER_CLASSES

    if layer.class_name in BN_CLASS_NAMES or layer.is_container or layer.class_name == "TimeDistributed":
        return layer.class_name == "TimeDistributed"
    if isinstance(layer.module, str):
        return layer.module.split(".", 1)[0] not in ("keras", "tf_keras")
    return layer.class_name not in BUILTIN_LAYER_CLASSES


# Names of the optimizer's step counter: Keras 3 "iteration", tf.keras 2.x "iteration:0", the
# legacy optimizers "iter:0", Keras 1/2 "iterations:0".
STEP_COUNT_NAMES = frozenset({"iteration", "iterations", "iter"})


def is_step_count_name(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return (leaf[:-2] if leaf.endswith(":0") else leaf) in STEP_COUNT_NAMES


def step_count_value(value: Any) -> int | None:
    """A saved step counter's value as an int: a non-negative integer scalar, else None."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        return None
    steps = int(array.reshape(-1)[0])
    return steps if steps >= 0 else None


def read_step_count(root: Any, path: str) -> int | None:
    """The integer scalar dataset at `path` of an h5py group, or None. A missing or odd counter
    never makes a file unreadable: the step count is extra information, not the model."""
    import h5py

    try:
        refuse_link_leaving(root, path.strip("/"), path)
        item = root.get(path)
        if not isinstance(item, h5py.Dataset) or item.shape not in ((), (1,)):
            return None
        plist = item.id.get_create_plist()
        # Extra information only: a counter stored outside the file, or in a huge chunk, is not read.
        if storage_outside_file(plist) is not None or chunk_size(item.id, plist) > MAX_CHUNK_BYTES:
            return None
        return step_count_value(item[()])
    except (OSError, KeyError, ValueError, TypeError, RuntimeError):  # what h5py raises on damaged files
        return None
