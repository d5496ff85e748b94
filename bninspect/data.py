"""Input data for the dynamic analysis: `.npy`, `.npz` or a directory of images, read lazily.

Memory stays flat however many samples the file holds: `.npy` files are memory-mapped, `.npz`
members are streamed row by row (compressed or not), and images are decoded one batch at a time.
Nothing here imports TensorFlow: image files are decoded by the `decoder` the caller passes
(`bninspect.probes.images.decode_images` when the probes open data).

Layer: readers, beside the loaders; it imports only `bninspect.errors`.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, Union

import numpy as np

from bninspect.errors import UsageProblem, one_line

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# decode(paths, height, width, channels) -> float array (n, height, width, channels), values 0-255
ImageDecoder = Callable[[Sequence[str], int, int, int], np.ndarray]


class DataError(UsageProblem):
    """The data cannot be fed to the model. `str()` is one line naming the file and the reason."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, its shape without the batch axis (None = any size), its dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def describe(self) -> str:
        return f"{self.name!r} expects {_shape_text((None, *self.shape))}"


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if size is None else str(size) for size in shape) + ("," if len(shape) == 1 else "") + ")"


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RESCALE = re.compile(rf"\s*({_NUMBER})\s*(?:/\s*({_NUMBER})\s*)?")


def parse_rescale(text: str | None) -> float | None:
    """`1/255`, `0.5`, `2e-3` -> a float. Parsed by pattern, never evaluated."""
    if text is None:
        return None
    match = _RESCALE.fullmatch(text)
    if match is None:
        raise UsageProblem(f"--rescale {text!r}: expected a number or a fraction such as 1/255")
    numerator = float(match.group(1))
    denominator = float(match.group(2)) if match.group(2) is not None else 1.0
    if denominator == 0:
        raise UsageProblem(f"--rescale {text!r}: division by zero")
    value = numerator / denominator
    if not math.isfinite(value) or value == 0:
        raise UsageProblem(f"--rescale {text!r}: the factor must be a finite, non-zero number")
    return value


def _fits(data_shape: tuple[int, ...], spec: InputSpec) -> bool:
    return len(data_shape) == len(spec.shape) and all(
        want is None or want == have for have, want in zip(data_shape, spec.shape))


def _check_shape(source: str, array_name: str | None, shape: tuple[int, ...], spec: InputSpec) -> None:
    """`shape` includes the batch axis."""
    if len(shape) >= 1 and _fits(shape[1:], spec):
        return
    what = f"{source}" + (f" (array {array_name!r})" if array_name else "")
    reason = f"samples have shape {_shape_text(shape[1:])} (array shape {_shape_text(shape)}), but the model input {spec.describe()}"
    if _fits(shape, spec):
        reason += "; the array looks like one sample without the batch axis (add one: x[None])"
    elif len(shape) == len(spec.shape) + 1 and None not in spec.shape and sorted(shape[1:]) == sorted(spec.shape):
        reason += "; the axes are in another order (channels first vs channels last?)"
    raise DataError(f"{what}: {reason}")


class _ArrayInput:
    """One array of a data file, readable in consecutive row ranges."""

    def __init__(self, name: str | None, shape: tuple[int, ...], dtype: np.dtype):
        self.name = name
        self.shape = shape
        self.dtype = dtype

    def read_batches(self, batch_size: int, samples: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _NpyInput(_ArrayInput):
    def __init__(self, path: str):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise DataError(f"{path}: not a readable .npy array ({one_line(error, 200)})") from None
        except OSError as error:
            raise DataError(f"{path}: cannot read ({error.strerror or one_line(error, 200)})") from None
        super().__init__(None, tuple(array.shape), array.dtype)
        self._array = array

    def read_batches(self, batch_size: int, samples: int) -> Iterator[np.ndarray]:
        release = _PageReleaser(self._array)
        for start in range(0, samples, batch_size):
            stop = min(start + batch_size, samples)
            yield self._array[start:stop]
            release.before_row(stop)


class _PageReleaser:
    """Drops the pages of a memory-mapped .npy that the pass has gone past.

    The kernel would keep every page read resident in this process (and counted in its RSS) until
    memory gets tight; a pass reads each row once, so there is no reason to keep them. The data
    stays correct: a page touched again is read back from the file.
    """

    def __init__(self, array: np.ndarray):
        self._mapping = getattr(array, "_mmap", None)
        offset = getattr(array, "offset", None)
        usable = (self._mapping is not None and offset is not None and hasattr(self._mapping, "madvise")
                  and hasattr(mmap, "MADV_DONTNEED") and array.flags.c_contiguous)
        if not usable:
            self._mapping = None
            return
        # numpy maps from the allocation-granularity boundary below the data offset.
        self._data_start = offset % mmap.ALLOCATIONGRANULARITY
        self._row_bytes = array.dtype.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
        self._released = 0

    def before_row(self, row: int) -> None:
        if self._mapping is None:
            return
        end = self._data_start + row * self._row_bytes
        end -= end % mmap.PAGESIZE
        if end > self._released:
            try:
                self._mapping.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            except (OSError, ValueError):
                self._mapping = None  # an advice, not a requirement
                return
            self._released = end


class _NpzMemberInput(_ArrayInput):
    """One `.npy` member of an `.npz` zip, streamed: only one batch of rows is ever in memory."""

    def __init__(self, path: str, member: str):
        self._path = path
        self._member = member
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            shape, fortran_order, dtype = _read_npy_header(stream, f"{path}:{member}")
        if dtype.hasobject:
            raise DataError(f"{path}: array {member[:-4]!r} holds Python objects; only numeric arrays are read (no pickle)")
        super().__init__(member[:-4], shape, dtype)
        self._fortran_order = fortran_order

    def read_batches(self, batch_size: int, samples: int) -> Iterator[np.ndarray]:
        row_shape = self.shape[1:]
        row_bytes = self.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        with zipfile.ZipFile(self._path) as archive, archive.open(self._member) as stream:
            _read_npy_header(stream, self._member)
            if self._fortran_order:
                # Column-major rows are not contiguous: this rare layout is read whole.
                with archive.open(self._member) as whole_stream:
                    whole = np.lib.format.read_array(whole_stream, allow_pickle=False)
                for start in range(0, samples, batch_size):
                    yield whole[start:min(start + batch_size, samples)]
                return
            for start in range(0, samples, batch_size):
                rows = min(batch_size, samples - start)
                buffer = stream.read(rows * row_bytes)
                if len(buffer) != rows * row_bytes:
                    raise DataError(f"{self._path}: array {self.name!r} is truncated")
                yield np.frombuffer(buffer, dtype=self.dtype).reshape((rows, *row_shape))


class _MemoryInput(_ArrayInput):
    """An array the caller already holds (Python API: `run_probe(model, x)`)."""

    def __init__(self, name: str | None, array: np.ndarray):
        super().__init__(name, tuple(array.shape), array.dtype)
        self._array = array

    def read_batches(self, batch_size: int, samples: int) -> Iterator[np.ndarray]:
        for start in range(0, samples, batch_size):
            yield self._array[start:min(start + batch_size, samples)]


def _read_npy_header(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)
    except ValueError as error:
        raise DataError(f"{where}: not a readable .npy array ({one_line(error, 200)})") from None


@dataclass(frozen=True)
class Batch:
    """One batch: one array per model input, in the model's input order."""

    arrays: tuple[np.ndarray, ...]

    @property
    def size(self) -> int:
        return int(self.arrays[0].shape[0])


class DataSource:
    """Samples for the model, read lazily. `batches()` can be called again for a second pass."""

    def __init__(self, path: str, specs: tuple[InputSpec, ...], samples: int, rescale: float | None):
        self.path = path
        self.specs = specs
        self.samples = samples
        self.rescale = rescale

    def batches(self, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError

    def batch_count(self, batch_size: int) -> int:
        return -(-self.samples // batch_size)

    def sample_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of one sample of each input, as the model receives it: known before any batch is read."""
        raise NotImplementedError

    def batch_bytes(self, batch_size: int) -> int:
        """The bytes of one batch of every input, as the model receives it (in the inputs' dtypes)."""
        per_sample = sum(math.prod(shape) * np.dtype(spec.dtype).itemsize
                         for shape, spec in zip(self.sample_shapes(), self.specs))
        return min(batch_size, self.samples) * per_sample

    def _prepare(self, raw: np.ndarray, spec: InputSpec) -> np.ndarray:
        dtype = np.dtype(spec.dtype)
        if self.rescale is None:
            # A copy: the batch must not alias a memory-mapped file whose pages get released.
            return np.array(raw, dtype=dtype)
        return np.asarray(np.asarray(raw, dtype=np.float64 if dtype.itemsize > 4 else np.float32) * self.rescale, dtype=dtype)


class ArraySource(DataSource):
    def __init__(self, path: str, specs: tuple[InputSpec, ...], inputs: tuple[_ArrayInput, ...], samples: int,
                 rescale: float | None):
        super().__init__(path, specs, samples, rescale)
        self._inputs = inputs

    def sample_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(array.shape[1:]) for array in self._inputs)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        streams = [array.read_batches(batch_size, self.samples) for array in self._inputs]
        for raws in zip(*streams):
            yield Batch(tuple(self._prepare(raw, spec) for raw, spec in zip(raws, self.specs)))


class ImageSource(DataSource):
    def __init__(self, path: str, spec: InputSpec, files: tuple[str, ...], rescale: float | None,
                 decoder: ImageDecoder):
        super().__init__(path, (spec,), len(files), rescale)
        self.files = files
        self._decoder = decoder
        shape = spec.shape
        # Channels first when the first axis looks like channels and the last does not.
        self._channels_first = shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
        self._height, self._width, self._channels = (shape[1], shape[2], shape[0]) if self._channels_first else shape

    def sample_shapes(self) -> tuple[tuple[int, ...], ...]:
        return (tuple(self.specs[0].shape),)  # every image is resized to the input's fixed size

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self.samples, batch_size):
            images = self._decoder(self.files[start:start + batch_size], self._height, self._width, self._channels)
            if self._channels_first:
                images = np.transpose(images, (0, 3, 1, 2))
            yield Batch((self._prepare(images, self.specs[0]),))


def _magic(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or one_line(error, 200)})") from None


def _npz_inputs(path: str, specs: tuple[InputSpec, ...]) -> tuple[_ArrayInput, ...]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [name for name in archive.namelist() if name.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{path}: not a readable .npz archive ({one_line(error, 200)})") from None
    if not members:
        raise DataError(f"{path}: the .npz archive holds no arrays")
    by_name = {member[:-4]: member for member in members}
    if len(members) == 1 and len(specs) == 1:
        chosen = [members[0]]
    elif all(spec.name in by_name for spec in specs):
        chosen = [by_name[spec.name] for spec in specs]
    else:
        missing = [spec.name for spec in specs if spec.name not in by_name]
        raise DataError(f"{path}: holds arrays {', '.join(sorted(by_name))}, but the model inputs are named "
                        f"{', '.join(spec.name for spec in specs)} (missing: {', '.join(missing)}); "
                        "name one array per model input")
    try:
        return tuple(_NpzMemberInput(path, member) for member in chosen)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable .npz archive ({one_line(error, 200)})") from None


def _image_files(path: str) -> tuple[str, ...]:
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, name) for name in sorted(names)
                     if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."))
    return tuple(files)


# In-memory data for the Python API: one array, a list of arrays in input order, or a dict by input name.
ArrayData = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]


def _memory_inputs(data, specs: tuple[InputSpec, ...]) -> tuple[_ArrayInput, ...]:
    if isinstance(data, np.ndarray):
        arrays = [("array", data)]
    elif isinstance(data, Mapping):
        missing = [spec.name for spec in specs if spec.name not in data]
        if missing and not (len(data) == 1 and len(specs) == 1):
            raise DataError(f"<arrays>: no array for model input(s) {', '.join(missing)} (got {', '.join(map(str, data))})")
        arrays = [(spec.name, data[spec.name]) for spec in specs] if not missing else list(data.items())
    else:
        arrays = [(f"array {i}", item) for i, item in enumerate(data)]
    if len(arrays) != len(specs):
        raise DataError(f"<arrays>: {len(arrays)} array(s) for a model with {len(specs)} input(s)")
    return tuple(_MemoryInput(str(name), np.asarray(array)) for name, array in arrays)


def open_data(data: str | os.PathLike | ArrayData, specs: Sequence[InputSpec], *, limit: int | None = None,
              rescale: float | None = None, decoder: ImageDecoder | None = None) -> DataSource:
    """Open `data` (a path, or arrays in memory) for a model with inputs `specs`.

    `decoder` turns image files into pixels; it is needed only when `data` is a directory.
    Shapes are checked before any batch is read. Raises DataError (a UsageProblem: one line, exit 2)
    for anything that cannot be fed to the model.
    """
    specs = tuple(specs)
    if limit is not None and limit < 1:
        raise DataError(f"--limit {limit}: must be at least 1")
    if not isinstance(data, (str, os.PathLike)):
        return _open_arrays("<arrays>", _memory_inputs(data, specs), specs, limit, rescale)
    source = str(data)
    target = Path(source)
    if target.is_dir():
        return _open_images(source, specs, limit, rescale, decoder)
    if not target.exists():
        raise DataError(f"{source}: no such file or directory")
    magic = _magic(source)
    if magic.startswith(NPY_MAGIC):
        if len(specs) != 1:
            raise DataError(f"{source}: one array, but the model has {len(specs)} inputs "
                            f"({', '.join(spec.name for spec in specs)}); give an .npz with one array per input name")
        inputs: tuple[_ArrayInput, ...] = (_NpyInput(source),)
    elif magic.startswith(ZIP_MAGIC):
        inputs = _npz_inputs(source, specs)
    else:
        raise DataError(f"{source}: not an .npy or .npz file, nor a directory of images")
    return _open_arrays(source, inputs, specs, limit, rescale)


def _open_arrays(source: str, inputs: tuple[_ArrayInput, ...], specs: tuple[InputSpec, ...], limit: int | None,
                 rescale: float | None) -> DataSource:
    for array, spec in zip(inputs, specs):
        if array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise DataError(f"{source}: array has dtype {array.dtype}; expected numbers")
        _check_shape(source, array.name if len(inputs) > 1 else None, array.shape, spec)
    counts = {array.shape[0] for array in inputs}
    if len(counts) > 1:
        listed = ", ".join(f"{array.name} {array.shape[0]}" for array in inputs)
        raise DataError(f"{source}: the arrays hold different numbers of samples ({listed})")
    samples = counts.pop()
    if samples == 0:
        raise DataError(f"{source}: holds no samples")
    _check_rescale(source, rescale, specs)
    return ArraySource(source, specs, inputs, min(samples, limit or samples), rescale)


def _check_rescale(source: str, rescale: float | None, specs: tuple[InputSpec, ...]) -> None:
    if rescale is not None and any(np.dtype(spec.dtype).kind != "f" for spec in specs):
        raise DataError(f"{source}: --rescale needs floating point model inputs, but an input is "
                        f"{next(spec.dtype for spec in specs if np.dtype(spec.dtype).kind != 'f')}")


def _open_images(source: str, specs: tuple[InputSpec, ...], limit: int | None, rescale: float | None,
                 decoder: ImageDecoder | None) -> DataSource:
    if len(specs) != 1 or len(specs[0].shape) != 3:
        wanted = ", ".join(spec.describe() for spec in specs)
        raise DataError(f"{source}: a directory of images feeds one image input (height, width, channels), "
                        f"but the model input {wanted}")
    spec = specs[0]
    if None in spec.shape:
        raise DataError(f"{source}: the model input {spec.describe()}; images need a fixed size to be resized to")
    files = _image_files(source)
    if not files:
        raise DataError(f"{source}: no .png or .jpg images in the directory")
    _check_rescale(source, rescale, specs)
    if decoder is None:
        raise TypeError("open_data needs an image decoder to read a directory of images")
    image_source = ImageSource(source, spec, files[:limit] if limit else files, rescale, decoder)
    if image_source._channels not in (1, 3, 4):
        raise DataError(f"{source}: the model input {spec.describe()}; images have 1, 3 or 4 channels")
    return image_source
