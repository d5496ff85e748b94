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

import functools
import io
import os
import shutil
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from typing import BinaryIO, Callable, Iterator

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


@contextmanager
def open_hdf5(path: str) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(file object for h5py, the plain file for direct reads of contiguous datasets)."""
    with open(path, "rb") as raw:
        yield GuardedReader(file_reader(raw), 0, os.fstat(raw.fileno()).st_size), raw


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


@contextmanager
def open_member(archive: zipfile.ZipFile, source: str, name: str) -> Iterator[BinaryIO]:
    """A member of a zip archive as a file object for h5py."""
    info = archive.getinfo(name)
    stored = stored_member(archive, name)
    if stored is not None:
        with open(source, "rb") as raw:
            read_at = file_reader(raw)
            yield GuardedReader(read_at, data_offset(read_at, stored), stored.file_size)
        return
    if info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
        raise ConfigError(f"{name} would expand {info.file_size // max(info.compress_size, 1)}x: refusing a zip bomb")
    with tempfile.TemporaryFile() as expanded:
        with archive.open(info) as member:
            shutil.copyfileobj(member, expanded, 1024 * 1024)
        expanded.flush()
        yield GuardedReader(file_reader(expanded), 0, expanded.tell())
