"""The bytes h5py reads, served by us: a guard against hangs in HDF5 and fast `.keras` members.

Every HDF5 file bninspect opens goes through `GuardedReader`, a read-only file object over a
byte range of an open file:

- HDF5 1.14 loops forever on a global heap collection (where variable-length strings such as
  Keras 3's `name` attributes live) whose free-space entry has size 0: a single flipped byte in
  a `.keras` file hangs the process inside C code, where no timeout can reach. Each read that
  returns a collection (signature `GCOL`) is checked the way HDF5 walks it; a collection HDF5
  would loop on, or one that does not add up, fails the read, which h5py raises as OSError.
- A `zipfile` member can only seek by re-reading from the member's start, which made `.keras`
  archives with 1,000 BN layers take seconds. Keras stores `model.weights.h5` uncompressed, so
  the member is a plain run of bytes inside the archive and is read in place. A compressed
  member (a re-zipped archive) is expanded once into a temporary file instead.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from typing import Any, BinaryIO, Callable, Iterator

from bninspect.loaders.graph import ConfigError

LOCAL_HEADER = struct.Struct("<4s5H3I2H")
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
# HDF5 weights compress by a few percent; a member that expands 100x is a zip bomb, not a model.
MAX_EXPANSION = 100

HEAP_SIGNATURE = b"GCOL"
HEAP_HEADER = struct.Struct("<4sB3xQ")  # signature, version, reserved, collection size
HEAP_OBJECT = struct.Struct("<HH4xQ")  # heap object index, reference count, reserved, size
# Collections hold strings of a few bytes to a few MB (a model config); refuse to read more.
MAX_HEAP_BYTES = 256 * 1024 * 1024


ReadAt = Callable[[int, int], bytes]  # (count, offset) -> bytes, os.pread's contract


def file_reader(raw: BinaryIO) -> ReadAt:
    return functools.partial(os.pread, raw.fileno())


class GuardedReader(io.RawIOBase):
    """Bytes [start, start + size) of a file as a read-only file object for h5py. `read_at` reads
    the file: os.pread on a local file, range requests on a remote one (loaders.remote)."""

    def __init__(self, read_at: ReadAt, start: int, size: int):
        super().__init__()
        self._read_at = read_at
        self._start = start
        self._size = size
        self._position = 0
        self._checked_heaps: set[int] = set()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    # seek and readinto run for every read HDF5 makes (tens of thousands for a file with thousands
    # of BN layers): kept to a few operations each.
    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise KeyError(whence)
        if position < 0:
            raise OSError("seek before the start of the file")
        self._position = position
        return position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._position)
        if count <= 0:
            return 0
        data = self._read_at(count, self._start + self._position)
        buffer[:len(data)] = data
        at = data.find(HEAP_SIGNATURE)
        while at != -1:
            self._check_heap(self._position + at)
            at = data.find(HEAP_SIGNATURE, at + 1)
        self._position += len(data)
        return len(data)

    def _pread(self, count: int, position: int) -> bytes:
        return self._read_at(count, self._start + position) if count > 0 else b""

    def _check_heap(self, address: int) -> None:
        """Walk a global heap collection as HDF5's H5HG__cache_heap_deserialize does."""
        if address in self._checked_heaps:
            return
        header = self._pread(HEAP_HEADER.size, address)
        if len(header) < HEAP_HEADER.size:
            return
        signature, version, size = HEAP_HEADER.unpack(header)
        if version != 1:
            return  # not a collection header, just these four bytes somewhere in the data
        if not HEAP_HEADER.size <= size <= min(MAX_HEAP_BYTES, self._size - address):
            raise OSError(f"damaged HDF5 global heap at byte {address} (size {size})")
        chunk = self._pread(size, address)
        position = HEAP_HEADER.size
        while position < size:
            if position + HEAP_OBJECT.size > size:
                break  # a tail too small for an object header is free space
            index, _, object_size = HEAP_OBJECT.unpack_from(chunk, position)
            # HDF5 advances by the free-space entry's own size: 0 would never end.
            step = object_size if index == 0 else HEAP_OBJECT.size + (object_size + 7) // 8 * 8
            if step <= 0 or position + step > size:
                raise OSError(f"damaged HDF5 global heap at byte {address} (object {index} "
                              f"of {object_size} bytes does not fit)")
            position += step
        self._checked_heaps.add(address)


NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def not_regular_reason(mode: int) -> str:
    kind = next((name for test, name in NOT_REGULAR if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file: refusing to read it"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading when it is a regular file. Opened without blocking: opening a FIFO
    for reading waits for a writer that may never come, and a device may never end."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(not_regular_reason(mode))
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a regular file (one past the limit tells the caller it is over)."""
    with open_regular(path) as handle:
        return handle.read(limit + 1)


# A model directory (SavedModel, TF checkpoint, KerasHub preset) holds a few dozen files.
MAX_DIRECTORY_ENTRIES = 100_000


def refuse_irregular_tree(directory: str | os.PathLike) -> None:
    """Refuse a model directory holding anything but regular files and directories inside it: a
    FIFO or device hangs whatever reads it (TensorFlow included), and a symbolic link may lead
    out of the model to any file on the machine."""
    root = os.path.realpath(directory)
    seen = 0
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            seen += 1
            if seen > MAX_DIRECTORY_ENTRIES:
                raise ConfigError(f"holds more than {MAX_DIRECTORY_ENTRIES:,} files and directories: not a model directory")
            path = os.path.join(current, name)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([root, target]) != root:
                    raise ConfigError(f"{relative} is a symbolic link out of the model directory: refusing to read it")
            mode = os.stat(path).st_mode if os.path.exists(path) else 0
            if name in files and not stat.S_ISREG(mode):
                raise ConfigError(f"{relative} {not_regular_reason(mode) if mode else 'is a broken link'}")


class FileRegion:
    """The HDF5 bytes of a local file, from `base` on (a `.keras` member starts past its zip
    header), for direct reads of contiguous datasets at the offsets h5py reports."""

    def __init__(self, raw: BinaryIO, base: int = 0):
        self._fd = raw.fileno()
        self.base = base

    def pread(self, count: int, offset: int) -> bytes:
        return os.pread(self._fd, count, self.base + offset)


@contextmanager
def open_hdf5(path: str) -> Iterator[tuple[BinaryIO, FileRegion]]:
    """(file object for h5py, the same bytes for direct reads of contiguous datasets)."""
    with open_regular(path) as raw:
        yield GuardedReader(file_reader(raw), 0, os.fstat(raw.fileno()).st_size), FileRegion(raw)


def data_offset(read_at: ReadAt, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local header, whose name and extra field lengths
    may differ from the central directory's."""
    header = read_at(LOCAL_HEADER.size, info.header_offset)
    if len(header) != LOCAL_HEADER.size:
        raise ConfigError(f"the zip entry of {info.filename} points past the end of the file")
    fields = LOCAL_HEADER.unpack(header)
    if fields[0] != LOCAL_HEADER_SIGNATURE:
        raise ConfigError(f"the zip entry of {info.filename} is damaged (no local header)")
    name_length, extra_length = fields[-2], fields[-1]
    return info.header_offset + LOCAL_HEADER.size + name_length + extra_length


def stored_member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo | None:
    """The zip entry of `name` when it is stored uncompressed (readable in place), else None."""
    info = archive.getinfo(name)
    if info.flag_bits & 0x1:
        raise ConfigError(f"{name} in the archive is encrypted")
    return info if info.compress_type == zipfile.ZIP_STORED else None


class RangeFile(io.RawIOBase):
    """A read-only, seekable file object over a `ReadAt` (zipfile reads a remote archive so)."""

    def __init__(self, read_at: ReadAt, size: int):
        super().__init__()
        self._read_at = read_at
        self._size = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self._position = base + offset
        return self._position

    def readinto(self, buffer) -> int:
        data = self._read_at(min(len(buffer), max(self._size - self._position, 0)), self._position)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def archive_reader(archive: zipfile.ZipFile) -> ReadAt:
    """A `ReadAt` over the file an open archive reads (on disk or a remote RangeFile)."""
    def read_at(count: int, offset: int) -> bytes:
        archive.fp.seek(offset)
        return archive.fp.read(count)
    return read_at


class _Inflater:
    """A decompressor with an output limit per call, the same for every zip method: zipfile's own
    readers expand a bzip2 or LZMA block whole, gigabytes from a few bytes."""

    def __init__(self, info: zipfile.ZipInfo):
        method = info.compress_type
        self._tail = b""
        if method == zipfile.ZIP_DEFLATED:
            self._zlib = zlib.decompressobj(-15)
            self._other = None
        elif method == zipfile.ZIP_BZIP2:
            self._zlib, self._other = None, bz2.BZ2Decompressor()
        elif method == zipfile.ZIP_LZMA:
            self._zlib, self._other = None, None
            self._lzma_header = b""
        else:
            raise ConfigError(f"{info.filename} in the archive uses zip compression method {method}, "
                              "which bninspect does not expand")
        self._method = method

    def _start_lzma(self, data: bytes) -> bytes:
        # A zip LZMA member starts with a 4-byte version and properties size, then the properties.
        self._lzma_header += data
        if len(self._lzma_header) < 4:
            return b""
        size = struct.unpack("<H", self._lzma_header[2:4])[0]
        if len(self._lzma_header) < 4 + size:
            return b""
        properties, rest = self._lzma_header[4:4 + size], self._lzma_header[4 + size:]
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, properties)]  # zipfile does the same
        self._other = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
        return rest

    def needs_input(self) -> bool:
        if self._zlib is not None:
            return not self._zlib.unconsumed_tail
        return self._other is None or self._other.needs_input

    def finished(self) -> bool:
        return self._zlib.eof if self._zlib is not None else self._other is not None and self._other.eof

    def expand(self, data: bytes, limit: int) -> bytes:
        if self._zlib is not None:
            pending = self._zlib.unconsumed_tail + data
            return self._zlib.decompress(pending, limit)
        if self._other is None:
            data = self._start_lzma(data)
            if self._other is None:
                return b""
        return self._other.decompress(data, limit)


INPUT_CHUNK = 64 * 1024
OUTPUT_CHUNK = 1024 * 1024


def expand_member(read_at: ReadAt, info: zipfile.ZipInfo, limit: int, write: Callable[[bytes], object]) -> int:
    """Decompress a zip member, streaming, into `write`; more than `limit` bytes of output is
    refused as a zip bomb, whatever the sizes the archive declares. Returns the bytes written."""
    if info.flag_bits & 0x1:
        raise ConfigError(f"{info.filename} in the archive is encrypted")
    start = data_offset(read_at, info)
    end = start + info.compress_size
    if info.compress_type == zipfile.ZIP_STORED:
        inflater = None
    else:
        inflater = _Inflater(info)
    position, written = start, 0
    while True:
        data = b""
        if inflater is None or inflater.needs_input():
            if position >= end:
                if inflater is None or inflater.finished() or inflater.needs_input():
                    break
            data = read_at(min(INPUT_CHUNK, end - position), position) if position < end else b""
            if not data and position < end:
                raise ConfigError(f"{info.filename} in the archive is truncated")
            position += len(data)
        chunk = data if inflater is None else inflater.expand(data, OUTPUT_CHUNK)
        written += len(chunk)
        if written > limit:
            raise ConfigError(f"{info.filename} in the archive expands to more than {limit:,} bytes "
                              f"from {info.compress_size:,}: refusing a zip bomb")
        if chunk:
            write(chunk)
        if inflater is not None and inflater.finished():
            break
    return written


@contextmanager
def open_member(archive: zipfile.ZipFile, source: str, name: str) -> Iterator[tuple[BinaryIO, FileRegion]]:
    """A member of a zip archive as open_hdf5 gives a file: (file object for h5py, its bytes for
    direct reads)."""
    info = archive.getinfo(name)
    stored = stored_member(archive, name)
    if stored is not None:
        with open_regular(source) as raw:
            read_at = file_reader(raw)
            start = data_offset(read_at, stored)
            yield GuardedReader(read_at, start, stored.file_size), FileRegion(raw, start)
        return
    with tempfile.TemporaryFile() as expanded:
        # HDF5 weights compress by a few percent: MAX_EXPANSION times the compressed size is ample.
        expand_member(archive_reader(archive), info, MAX_EXPANSION * max(info.compress_size, 1), expanded.write)
        expanded.flush()
        yield GuardedReader(file_reader(expanded), 0, expanded.tell()), FileRegion(expanded)


# HDF5 filters bninspect expands itself, by their ids: deflate (gzip), shuffle, fletcher32. HDF5's
# own deflate filter grows its output buffer for as long as the stream goes on: a chunk of a few
# hundred KB inflates to gigabytes. So filtered chunks are read raw and expanded here, with a limit.
FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_FLETCHER32 = 1, 2, 3
KNOWN_FILTERS = (FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_FLETCHER32)


def expand_chunk(raw: bytes, mask: int, filters: list[int], chunk_bytes: int, itemsize: int, what: str) -> bytes:
    """A chunk's stored bytes through its filters, in reverse order, to at most `chunk_bytes`."""
    unknown = [code for code in filters if code not in KNOWN_FILTERS]
    if unknown:
        raise ConfigError(f"{what} is stored with HDF5 filter {unknown[0]}, which bninspect does not read")
    for position in reversed(range(len(filters))):
        if mask & (1 << position):
            continue  # the filter was skipped for this chunk
        code = filters[position]
        if code == FILTER_FLETCHER32:
            raw = raw[:-4]
        elif code == FILTER_DEFLATE:
            inflater = zlib.decompressobj()
            expanded = inflater.decompress(raw, chunk_bytes)
            if inflater.unconsumed_tail:
                raise ConfigError(f"{what} has a compressed chunk that expands past its {chunk_bytes:,} bytes: "
                                  "refusing it")
            raw = expanded
        else:
            raw = _unshuffle(raw, itemsize)
    return raw


def _unshuffle(raw: bytes, itemsize: int) -> bytes:
    """Undo HDF5's shuffle filter: byte k of every value was stored together, for each k."""
    import numpy as np

    whole = len(raw) // itemsize * itemsize
    return np.frombuffer(raw[:whole], np.uint8).reshape(itemsize, -1).T.tobytes() + raw[whole:]


# Keras reads every dataset whole; one chunk of a real layer's weights is far below this.
MAX_LOADED_CHUNK_BYTES = 256 * 1024 * 1024


def refuse_outside_storage_anywhere(source: str) -> None:
    """Before Keras reads a whole model file (to run it on data): what the static reading checks
    for the BN arrays it reads, checked for every object, since Keras reads them all with HDF5's
    own file driver, which opens whatever a dataset or link names: no external link, no external
    raw storage, no virtual dataset anywhere, and no archive member that expands past
    MAX_EXPANSION times its size. A model directory's HDF5 files are checked one by one.
    Raises ConfigError."""
    if os.path.isdir(source):
        for current, _, files in os.walk(source):
            for name in sorted(files):
                if name.endswith((".h5", ".hdf5", ".keras")):
                    refuse_outside_storage_anywhere(os.path.join(current, name))
        return
    with open_regular(source) as handle:
        head = handle.read(4)
    if head == LOCAL_HEADER_SIGNATURE:
        with open_regular(source) as raw, zipfile.ZipFile(raw) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    expand_member(archive_reader(archive), info, MAX_EXPANSION * max(info.compress_size, 1),
                                  lambda chunk: None)
                if info.filename.endswith(".h5"):
                    with open_member(archive, source, info.filename) as (member, _):
                        _refuse_outside_objects(member, info.filename)
        return
    with open_hdf5(source) as (guarded, _):
        _refuse_outside_objects(guarded, os.path.basename(source))


def _refuse_outside_objects(file_object: BinaryIO, where: str) -> None:
    import h5py

    with h5py.File(file_object, "r") as handle:
        def visit(name: bytes, info: Any) -> str | None:
            """The problem with this link, which stops the visit; None to go on."""
            text = f"{where}:/{name.decode('utf-8', errors='replace')}"
            if info.type == h5py.h5l.TYPE_EXTERNAL:
                return f"{text} is an HDF5 external link to another file"
            if info.type != h5py.h5l.TYPE_HARD:
                return None
            item = h5py.h5o.open(handle.id, name)
            if isinstance(item, h5py.h5d.DatasetID):
                return _dataset_problem(item, text)
            return None

        # H5Lvisit follows hard links only, and enters each group once.
        problem = handle.id.links.visit(visit, info=True)
    if problem is not None:
        raise ConfigError(f"{problem}: refusing to load the model")


def storage_outside_file(plist: Any) -> str | None:
    """Where a dataset's values live when it is not in its own file (external raw storage, a
    virtual dataset over other files), from its creation property list; None when they are in it.
    HDF5 would open those files, /etc/passwd or a FIFO as readily as any."""
    import h5py

    if plist.get_layout() == h5py.h5d.VIRTUAL:
        return "is a virtual dataset (its values live in other files)"
    if plist.get_external_count() > 0:
        name = plist.get_external(0)[0].decode("utf-8", errors="replace")
        return f"keeps its values in an external file ({name!r}), not in the model file"
    return None


def chunk_size(dataset: Any, plist: Any) -> int:
    """The bytes of one chunk of a chunked dataset (HDF5 reads a chunk whole); 0 when not chunked."""
    import h5py

    if plist.get_layout() != h5py.h5d.CHUNKED:
        return 0
    size = dataset.get_type().get_size()
    for extent in plist.get_chunk():
        size *= extent
    return size


def _dataset_problem(dataset: Any, text: str) -> str | None:
    """Why HDF5 reading this whole dataset would read outside the file or without bounds."""
    plist = dataset.get_create_plist()
    outside = storage_outside_file(plist)
    if outside is not None:
        return f"{text} {outside}"
    chunk_bytes = chunk_size(dataset, plist)
    if not chunk_bytes:
        return None
    if chunk_bytes > MAX_LOADED_CHUNK_BYTES:
        return f"{text} is stored in chunks of {chunk_bytes:,} bytes, each read whole"
    if not plist.get_nfilters():
        return None
    filters = [plist.get_filter(index)[0] for index in range(plist.get_nfilters())]
    try:
        for index in range(dataset.get_num_chunks()):
            chunk = dataset.get_chunk_info(index)
            mask, raw = dataset.read_direct_chunk(chunk.chunk_offset)
            expand_chunk(raw, mask, filters, chunk_bytes, dataset.get_type().get_size(), text)
    except ConfigError as error:
        return str(error)
    return None
