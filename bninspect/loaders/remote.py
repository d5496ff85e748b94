"""Models at a URL (`https://`, `s3://`, `gs://`, `hf://`, any installed fsspec protocol), read in place.

The format readers need two things from a file: a file object for h5py and zipfile, and the bytes
of the BN arrays, which are contiguous datasets at offsets h5py reports. `RemoteFile` gives both
over range requests, so that a 1 GB model costs a few MB and a few dozen requests:

- HDF5 reads its metadata in many small, dependent pieces. They are served from a block cache;
  a miss fetches a run of blocks that doubles while the reads move forward (read-ahead), so a
  scan through a metadata region costs a handful of requests, not one per piece.
- The BN arrays are not read one by one: `later_vector` hands the loader an array that is filled
  when the file is closed, by one `cat_ranges` call for the whole file (concurrent requests where
  the backend is asynchronous: HTTP, S3, GCS).

Whole-file downloads happen only where a reader needs a local directory (SavedModel, TF
checkpoints, running a model on data) or when the user asks with `--download` (a server without
range support). fsspec and its backends are imported only here, and only for a URL.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from bninspect.errors import UsageProblem
from bninspect.loaders.graph import ConfigError
from bninspect.untrusted import redact

INSTALL_HINT = "pip install 'bninspect[remote]'"
# `s3://`, `hf://`, `https://`; not `C:\` (a Windows drive) and not a plain path.
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")

# HDF5 metadata of a Keras file sits in a few regions of some hundred KB between the weights;
# 64 KB blocks with read-ahead up to 4 MB read such a region in a few requests.
BLOCK_SIZE = 64 * 1024
MAX_READ_AHEAD_BLOCKS = 64
# BN arrays closer than this are fetched as one range: a request costs more than 64 KB of bytes.
MERGE_GAP = 64 * 1024


def is_url(location: str | os.PathLike) -> bool:
    return isinstance(location, str) and URL.match(location) is not None


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach URLs: fsspec storage options (beyond the backend's environment variables and
    profiles), and whether a server without range support may be downloaded whole."""

    storage_options: tuple[tuple[str, Any], ...] = ()
    download: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.storage_options)


NO_OPTIONS = RemoteOptions()


def parse_storage_options(pairs: list[str] | None) -> tuple[tuple[str, Any], ...]:
    """`KEY=VALUE` strings; VALUE is JSON when it parses (`true`, `3`, `{"a": 1}`), else text."""
    import json

    options = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageProblem(f"--storage-option {pair!r}: expected KEY=VALUE")
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.append((key.strip(), parsed))
    return tuple(options)


def _remote_errors() -> tuple[type[BaseException], ...]:
    """What fsspec backends raise for an unreachable host, a refused or missing object, a bad
    endpoint: OSError (FileNotFoundError, PermissionError, aiohttp's connection errors), aiohttp's
    HTTP errors, botocore's errors, and fsspec's ValueError for a server without range support."""
    errors: list[type[BaseException]] = [OSError, ValueError, TimeoutError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors.extend((botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError))
    except ImportError:
        pass
    try:
        import huggingface_hub.errors

        errors.append(huggingface_hub.errors.HfHubHTTPError)
    except ImportError:
        pass
    return tuple(errors)


def remote_reason(error: BaseException, size: int | None = None) -> str:
    """One line for what went wrong talking to the server. The backend's own text names the URL,
    password and signature included (aiohttp, botocore): it is redacted here, where it enters."""
    status = getattr(error, "status", None)
    text = redact(" ".join(str(error).split())) or type(error).__name__
    if isinstance(error, FileNotFoundError):
        # fsspec's HTTP backend reports any failure to stat a URL (403, a refused connection) so.
        cause = error.__cause__
        if cause is not None and getattr(cause, "status", None) != 404 and not isinstance(cause, FileNotFoundError):
            return remote_reason(cause, size)
        return "not found (no such file or object at this URL)"
    if isinstance(error, PermissionError) or status == 403:
        return f"access denied (HTTP 403 or missing credentials: {text[:200]})"
    if isinstance(status, int):
        return f"the server answered HTTP {status} ({text[:200]})"
    if isinstance(error, ValueError) and "range requests" in text:
        whole = f"{size:,} bytes" if size is not None else "all of it"
        return (f"the server does not support range requests (HTTP Range); pass --download to fetch the "
                f"whole file ({whole})")
    name = type(error).__name__
    if "Connect" in name or "Timeout" in name or isinstance(error, (ConnectionError, TimeoutError)):
        return f"cannot reach the server ({text[:200]})"
    return f"cannot be read from the URL ({name}: {text[:200]})"


def filesystem(url: str, options: RemoteOptions) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it). Raises UsageProblem without fsspec, ConfigError for a
    protocol whose backend is not installed."""
    try:
        import fsspec.core
    except ImportError:
        raise UsageProblem(f"{url}: reading models from URLs needs fsspec: {INSTALL_HINT}") from None
    try:
        return fsspec.core.url_to_fs(url, **options.as_dict())
    except ImportError as error:
        raise ConfigError(f"the backend for this URL is not installed ({error}); {INSTALL_HINT}") from None
    except ValueError as error:  # "Protocol not known"
        raise ConfigError(f"unsupported URL ({error})") from None
    except TypeError as error:  # a storage option the backend does not take
        raise ConfigError(f"bad --storage-option for this backend ({error})") from None


@contextmanager
def translated_errors(size: int | None = None) -> Iterator[None]:
    """The backend's errors as ConfigError with a one-line reason (a read error of the model)."""
    try:
        yield
    except ConfigError:
        raise
    except _remote_errors() as error:
        reason = remote_reason(error, size)
        no_ranges = isinstance(error, ValueError) and "range requests" in str(error)
        raise (NoRangeSupport if no_ranges else ConfigError)(reason) from error


class RemoteFile:
    """One remote file read by ranges: `read_at` for h5py and zipfile (block cache with
    read-ahead), `later_vector` for BN arrays (fetched together by `fetch_later`)."""

    def __init__(self, url: str, fs: Any, path: str, size: int, handle: Any):
        self.url = url
        self.size = size
        self._fs = fs
        self._path = path
        self._handle = handle
        self._blocks: dict[int, bytes] = {}
        self._read_ahead = 1
        self._next_block = -1
        self._later: list[tuple[int, int, np.dtype, np.ndarray]] = []
        # The first error of a read that h5py or zipfile saw: they may re-raise it in their own
        # words, which would lose the server's reason.
        self.failure: ConfigError | None = None
        self.requests = 0
        self.bytes_fetched = 0

    def read_at(self, count: int, offset: int) -> bytes:
        """os.pread's contract: up to `count` bytes at `offset`, fewer at the end of the file."""
        end = min(offset + count, self.size)
        if count <= 0 or offset >= end:
            return b""
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if first == last:
            block = self._blocks.get(first)
            if block is None:
                block = self._fetch_blocks(first, last)
            start = offset - first * BLOCK_SIZE
            return block[start:start + end - offset]
        self._fetch_blocks(first, last)
        data = b"".join(self._blocks[index] for index in range(first, last + 1))
        start = offset - first * BLOCK_SIZE
        return data[start:start + end - offset]

    def _fetch_blocks(self, first: int, last: int) -> bytes:
        """Fetch the missing blocks of [first, last] (one request per missing run), plus read-ahead
        when the reads continue where the previous fetch ended. Returns block `first`."""
        self._read_ahead = min(self._read_ahead * 2, MAX_READ_AHEAD_BLOCKS) if first == self._next_block else 1
        blocks_in_file = (self.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        stop = min(max(last + 1, first + self._read_ahead), blocks_in_file)
        index = first
        while index < stop:
            if index in self._blocks:
                index += 1
                continue
            run_end = index
            while run_end < stop and run_end not in self._blocks:
                run_end += 1
            data = self._range(index * BLOCK_SIZE, min(run_end * BLOCK_SIZE, self.size))
            for position, block in enumerate(range(index, run_end)):
                self._blocks[block] = data[position * BLOCK_SIZE:(position + 1) * BLOCK_SIZE]
            index = run_end
        self._next_block = stop
        return self._blocks[first]

    def _range(self, start: int, end: int) -> bytes:
        try:
            with translated_errors(self.size):
                self._handle.seek(start)
                data = self._handle.read(end - start)
                if len(data) != end - start:
                    raise ConfigError(f"the server returned {len(data)} bytes for a range of {end - start} "
                                      f"at byte {start}")
        except ConfigError as error:
            self.failure = self.failure or error
            raise OSError(str(error)) from error  # what h5py and zipfile expect from a file object
        self.requests += 1
        self.bytes_fetched += len(data)
        return data

    def later_vector(self, offset: int, count: int, dtype: np.dtype, what: str) -> np.ndarray:
        """A float64 array for `count` values of `dtype` at `offset`, filled by `fetch_later`."""
        if offset + count * dtype.itemsize > self.size:
            raise ConfigError(f"{what} points past the end of the file")
        values = np.empty(count, dtype=np.float64)
        self._later.append((offset, count * dtype.itemsize, dtype, values))
        return values

    def fetch_later(self) -> None:
        """Fill every array `later_vector` handed out: from cached blocks where they are, the rest
        with one `cat_ranges` call (near arrays merged into one range)."""
        later, self._later = sorted(self._later, key=lambda entry: entry[0]), []
        missing = []
        for entry in later:
            offset, nbytes = entry[0], entry[1]
            if all(index in self._blocks for index in range(offset // BLOCK_SIZE,
                                                               (offset + max(nbytes, 1) - 1) // BLOCK_SIZE + 1)):
                _fill(entry, self.read_at(nbytes, offset))
            else:
                missing.append(entry)
        ranges: list[list] = []  # [start, end, entries]
        for entry in missing:
            offset, nbytes = entry[0], entry[1]
            if ranges and offset - ranges[-1][1] <= MERGE_GAP:
                ranges[-1][1] = max(ranges[-1][1], offset + nbytes)
                ranges[-1][2].append(entry)
            else:
                ranges.append([offset, offset + nbytes, [entry]])
        if not ranges:
            return
        with translated_errors(self.size):
            results = self._fs.cat_ranges([self._path] * len(ranges), [r[0] for r in ranges],
                                          [r[1] for r in ranges], on_error="return")
        for (start, end, entries), data in zip(ranges, results):
            if isinstance(data, BaseException):
                with translated_errors(self.size):
                    raise data
            if len(data) != end - start:
                raise ConfigError(f"the server returned {len(data)} bytes for a range of {end - start} at byte {start}")
            self.requests += 1
            self.bytes_fetched += len(data)
            for entry in entries:
                _fill(entry, data[entry[0] - start:entry[0] - start + entry[1]])

    def close(self) -> None:
        self._handle.close()


def _fill(entry: tuple[int, int, np.dtype, np.ndarray], data: bytes) -> None:
    _, _, dtype, values = entry
    values[:] = np.frombuffer(data, dtype=dtype)


class LaterVectors:
    """The `raw` argument of `common.read_vector` for a remote file: offsets of datasets (relative
    to `base`, the start of the HDF5 bytes in the file) become arrays filled by one fetch."""

    def __init__(self, remote: RemoteFile, base: int = 0):
        self.remote = remote
        self.base = base

    def vector(self, offset: int, count: int, dtype: np.dtype, what: str) -> np.ndarray:
        return self.remote.later_vector(self.base + offset, count, dtype, what)


@contextmanager
def open_remote(url: str, options: RemoteOptions) -> Iterator[RemoteFile]:
    """A RemoteFile, closed at the end; a read error h5py or zipfile reworded is raised as the
    server's reason."""
    fs, path = filesystem(url, options)
    with translated_errors():
        size = fs.size(path)
        if size is None:
            raise NoRangeSupport("the server does not say the file's size, so it cannot be read by ranges; "
                              "pass --download to fetch the whole file")
        # No fsspec cache: RemoteFile caches, and each read here is exactly one request.
        handle = fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="none", size=size) \
            if _takes_size(fs) else fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="none")
    remote = RemoteFile(url, fs, path, size, handle)
    try:
        if size:
            # The last block first: a zip directory is there, HDF5 often keeps metadata there, and a
            # server without range support fails here, before h5py (which may crash at exit when
            # its file object failed) ever reads.
            remote.read_at(1, size - 1)
        yield remote
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile):
        if remote.failure is not None:
            raise remote.failure from None
        raise
    finally:
        remote.close()


def _takes_size(fs: Any) -> bool:
    # HTTP's open would ask the server for the size a second time without it.
    return type(fs).__name__ == "HTTPFileSystem"


def kind(url: str, options: RemoteOptions) -> str:
    """"file" or "directory" (a prefix, or a URL ending in /)."""
    fs, path = filesystem(url, options)
    if url.endswith("/"):
        return "directory"
    with translated_errors():
        info = fs.info(path)
    return "directory" if info.get("type") == "directory" else "file"


def exists(url: str, options: RemoteOptions) -> bool:
    fs, path = filesystem(url, options)
    with translated_errors():
        return bool(fs.exists(path))


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def read_small(url: str, options: RemoteOptions, limit: int) -> bytes:
    """A small file whole (a JSON config): at most `limit` + 1 bytes."""
    fs, path = filesystem(url, options)
    with translated_errors():
        with fs.open(path, "rb", cache_type="none") as handle:
            return handle.read(limit + 1)


def find_files(url: str, options: RemoteOptions) -> list[str]:
    """Every file below a prefix, as URLs, sorted."""
    fs, path = filesystem(url, options)
    with translated_errors():
        found = fs.find(path, withdirs=False)
    return sorted(fs.unstrip_protocol(item) for item in found)


# A download may write at most this many files and bytes: a hostile listing of a million names or
# an endless object must not fill the disk. The SavedModels and checkpoints of models with BN
# layers are far below (a ResNet-152 SavedModel is some 250 MB in a handful of files).
MAX_DOWNLOAD_FILES = 10_000
MAX_DOWNLOAD_BYTES = 10 * 1024 ** 3
COPY_CHUNK = 1024 * 1024
# `C:`, the start of a Windows drive path.
_DRIVE = re.compile(r"^[A-Za-z]:")


@contextmanager
def downloaded(url: str, options: RemoteOptions, directory_files: list[str] | None = None) -> Iterator[str]:
    """A local copy of a file (or of the files `directory_files` below a prefix), in a temporary
    directory removed afterwards, also on error: for readers that need a local path (SavedModel,
    TF checkpoints, Keras running a model).

    The names come from the server's listing, so they are checked before anything is written
    (`local_target`: nothing lands outside the temporary directory) and the download is bounded
    (MAX_DOWNLOAD_FILES, MAX_DOWNLOAD_BYTES): a hostile server can neither write elsewhere nor
    fill the disk. Raises ConfigError with the reason."""
    fs, path = filesystem(url, options)
    with tempfile.TemporaryDirectory(prefix="bninspect-") as scratch:
        local = local_target(scratch, local_name(path))
        if directory_files is None:
            plan = [(path, local)]
        else:
            plan = _directory_plan(fs, path, directory_files, local)
        written = _WrittenBytes()
        with translated_errors():
            for remote_path, target in plan:
                _copy(fs, remote_path, target, written)
        yield local


def local_target(directory: str, name: str) -> str:
    """Where `name`, a `/`-separated name from a server (relative to what is downloaded), is
    written below `directory`: normalised (empty and `.` segments dropped). Raises ConfigError for
    a name that could land anywhere else: `..`, an absolute or drive path, a backslash (a separator
    on Windows), a NUL, no name at all, or a path through a link out of `directory`."""
    why = _unsafe_name(name)
    if why is None:
        target = os.path.join(directory, *_segments(name))
        if _inside(target, directory):
            return target
        why = "it resolves to a path outside through a link"
    raise ConfigError(f"the server lists {name!r}, a name that could be written outside the download directory "
                      f"({why}); refused, nothing was downloaded")


def _segments(name: str) -> list[str]:
    return [segment for segment in name.split("/") if segment not in ("", ".")]


def _unsafe_name(name: str) -> str | None:
    if "\x00" in name:
        return "a NUL character"
    if "\\" in name:
        return "a backslash, a path separator on Windows"
    if name.startswith("/"):
        return "an absolute path"
    if _DRIVE.match(name):
        return "a drive letter"
    if ".." in name.split("/"):
        return "a '..' segment"
    if not _segments(name):
        return "no file name"
    return None


def _inside(target: str, directory: str) -> bool:
    """Whether `target`, with every link on its way resolved, lies strictly below `directory`."""
    base, resolved = os.path.realpath(directory), os.path.realpath(target)
    return resolved != base and os.path.commonpath([base, resolved]) == base


def local_name(path: str) -> str:
    """The name to download `path` (a URL, or a path in its filesystem) as, or to write what is
    uploaded to it: its last segment, without a URL's query (which can hold a signature), never
    empty, `.` or `..`."""
    if is_url(path):
        from urllib.parse import urlsplit

        path = urlsplit(path).path
    segment = path.rstrip("/").rsplit("/", 1)[-1]
    return segment if segment not in ("", ".", "..") else "model"


def _directory_plan(fs: Any, path: str, files: list[str], local: str) -> list[tuple[str, str]]:
    """(path in `fs`, local target) for every listed file below `path`, all checked before the
    first is downloaded."""
    if len(files) > MAX_DOWNLOAD_FILES:
        raise ConfigError(f"the server lists {len(files):,} files, more than the {MAX_DOWNLOAD_FILES:,} a download "
                          "may write; refused, nothing was downloaded")
    base = path.rstrip("/") + "/"
    plan, targets = [], set()
    for file_url in files:
        file_path = fs._strip_protocol(file_url)
        if not file_path.startswith(base):
            raise ConfigError(f"the server lists {file_url!r}, which is not below the directory; refused, nothing "
                              "was downloaded")
        target = local_target(local, file_path[len(base):])
        if target in targets:
            raise ConfigError(f"the server lists {file_path[len(base):]!r} twice; refused, nothing was downloaded")
        targets.add(target)
        plan.append((file_path, target))
    clashes = sorted(targets & {parent for target in targets for parent in _parents(target, local)})
    if clashes:
        raise ConfigError(f"the server lists {os.path.relpath(clashes[0], local)!r} both as a file and as a "
                          "directory; refused, nothing was downloaded")
    return plan


def _parents(target: str, top: str) -> Iterator[str]:
    """The directories between `top` and `target`, `target` below `top`."""
    parent = os.path.dirname(target)
    while parent != top and len(parent) > len(top):
        yield parent
        parent = os.path.dirname(parent)


class _WrittenBytes:
    """The bytes one download has written, refused beyond MAX_DOWNLOAD_BYTES."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, count: int) -> None:
        self.count += count
        if self.count > MAX_DOWNLOAD_BYTES:
            raise ConfigError(f"the download is more than {MAX_DOWNLOAD_BYTES:,} bytes, the most bninspect writes "
                              "for one model; stopped, and what was written is removed")


# Create the file, never open one that exists, never follow a link at its name.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _copy(fs: Any, remote_path: str, target: str, written: _WrittenBytes) -> None:
    """Stream one file to `target` (checked by local_target), counting its bytes as they come:
    the server's stated size is not trusted."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # HTTP: one streamed GET (block_size=0), which servers without range support answer too.
    extra = {"block_size": 0} if type(fs).__name__ == "HTTPFileSystem" else {}
    with fs.open(remote_path, "rb", **extra) as source, os.fdopen(os.open(target, _NEW_FILE, 0o600), "wb") as out:
        while True:
            chunk = source.read(COPY_CHUNK)
            if not chunk:
                break
            written.add(len(chunk))
            out.write(chunk)


def upload(local: str, url: str, options: RemoteOptions) -> None:
    """Copy a local file to a URL (`recalibrate -o s3://...`)."""
    fs, path = filesystem(url, options)
    with translated_errors():
        fs.put_file(local, path)



class NoRangeSupport(ConfigError):
    """The server cannot serve byte ranges: only a whole download (`--download`) reads the file."""


@contextmanager
def hdf5_in(remote: RemoteFile, start: int = 0, size: int | None = None) -> Iterator[tuple[Any, LaterVectors]]:
    """hdf5_input.open_hdf5 for bytes [start, start + size) of a remote file: (file object for
    h5py, the `raw` for read_vector). The BN arrays are fetched when the block ends without error."""
    from bninspect.loaders.hdf5_input import GuardedReader

    yield GuardedReader(remote.read_at, start, remote.size - start if size is None else size), \
        LaterVectors(remote, start)
    remote.fetch_later()


@contextmanager
def open_hdf5(url: str, options: RemoteOptions) -> Iterator[tuple[Any, LaterVectors]]:
    with open_remote(url, options) as remote, hdf5_in(remote) as opened:
        yield opened


class RemotePreset:
    """The files of a KerasHub preset directory at a URL prefix, for kerashub_preset.read_preset."""

    def __init__(self, url: str, options: RemoteOptions):
        self.url = url
        self.options = options

    def has(self, name: str) -> bool:
        return exists(join(self.url, name), self.options)

    def read(self, name: str, limit: int) -> bytes:
        return read_small(join(self.url, name), self.options, limit)

    def hdf5(self, name: str):
        return open_hdf5(join(self.url, name), self.options)


@contextmanager
def local_copy(location: str, options: RemoteOptions) -> Iterator[str]:
    """`location` itself when it is local, else a downloaded copy of the file or prefix (deleted
    afterwards): for what needs a local path, such as Keras loading a model to run it on data.
    Raises ModelReadError with the one-line reason."""
    from bninspect.errors import ModelReadError

    if not is_url(location):
        yield location
        return
    try:
        files = find_files(location, options) if kind(location, options) == "directory" else None
        copy = downloaded(location, options, files)
        local = copy.__enter__()
    except ConfigError as error:
        raise ModelReadError(location, str(error)) from error
    try:
        yield local
    finally:
        copy.__exit__(None, None, None)
