"""Read a model file of any supported format into a `ModelDescription`.

The format is told by the bytes where it can be: HDF5 signature, zip signature, a directory with
`saved_model.pb`. A TF checkpoint has no signature at its start: it is a `.index`/`.data-*` file, a
prefix whose `.index` exists, or a directory with a `checkpoint` file or `.index` files. Only
SavedModel and TF checkpoint reading import TensorFlow (the `tensorflow` extra: without it, such a
file is a ModelReadError that says how to install it).

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path
from typing import Iterator

from bninspect.errors import MissingExtra
from bninspect.keras_runtime import BackendConflict
from bninspect.loaders.graph import ConfigError
from bninspect.loaders.hdf5_input import open_regular, refuse_irregular_tree
from bninspect.loaders.remote import NO_OPTIONS, RemoteOptions, is_url
from bninspect.model import ModelDescription, ModelReadError

MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"

# What reading a broken or hostile file can raise from h5py, zipfile, json and numpy. Each becomes
# a one-line ModelReadError; anything else is a bug in bninspect and should surface as one.
READ_ERRORS = (ConfigError, OSError, KeyError, ValueError, TypeError, IndexError, AttributeError,
               RuntimeError, RecursionError, EOFError, UnicodeDecodeError, NotImplementedError,
               LookupError, zipfile.BadZipFile, struct.error, MemoryError, OverflowError)


def _reason(error: BaseException) -> str:
    if isinstance(error, ConfigError):
        return str(error)
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, MemoryError):
        return "structure too large to read"
    text = " ".join(str(error).split()) or type(error).__name__
    if "too many links" in text:
        # HDF5's words for a link that leads out of the file and back (an external link, which
        # the reader opens on this same file) or a chain of soft links that never ends.
        return "an HDF5 external link or a cycle of soft links: refusing to follow it"
    if "truncated file" in text:
        return f"truncated HDF5 file ({text})"
    if isinstance(error, OSError) and "Unable to" in text:
        # h5py's own wording, e.g. "Unable to synchronously open file (bad byte number ...)".
        return f"corrupt HDF5 file ({text[:300]})"
    return f"cannot be read as a model ({text[:300]})"


def _hdf5_at(head: bytes) -> bool:
    # HDF5 allows a user block before the superblock, at 0, 512, 1024, 2048, ... bytes.
    return head.startswith(HDF5_SIGNATURE) or any(
        head[offset:offset + 8] == HDF5_SIGNATURE for offset in (512, 1024, 2048))


def _read_hdf5(source: str, opened=None) -> ModelDescription:
    """`opened`: (file object, raw) as hdf5_input.open_hdf5 gives them, for a remote file."""
    import h5py

    from bninspect.loaders import h5_legacy, keras_v3
    from bninspect.loaders.hdf5_input import open_hdf5

    # h5py reads through a guard against the HDF5 hangs of damaged files (see hdf5_input).
    with opened or open_hdf5(source) as (guarded, raw), h5py.File(guarded, "r") as handle:
        if "model_config" in handle.attrs:
            return h5_legacy.read_full_model(source, handle, raw)
        if "layer_names" in handle.attrs:
            return h5_legacy.read_weights_only(source, handle, raw)
        if "layers" in handle or "vars" in handle:
            return keras_v3.read_weights_tree(source, handle, None, "weights-v3", raw=raw)
    raise ConfigError("HDF5 file holds no Keras model or weights (no model_config, layer_names or layers group)")


def load(path: str | os.PathLike, remote: RemoteOptions | None = None) -> ModelDescription:
    """Read one model file, SavedModel directory or TF checkpoint, on disk or at a URL (`remote`:
    how to reach it). Raises ModelReadError with a one-line reason."""
    from bninspect.loaders.common import read_budget

    with read_budget():
        return _load(path, remote)


def _load(path: str | os.PathLike, remote: RemoteOptions | None) -> ModelDescription:
    from bninspect.loaders import tf_checkpoint

    source = str(path)
    if is_url(source):
        try:
            return _load_url(source, remote or NO_OPTIONS)
        except READ_ERRORS as error:
            raise ModelReadError(source, _reason(error)) from error
    try:
        target = Path(source)
        if target.is_dir():
            refuse_irregular_tree(target)
            if (target / "saved_model.pb").is_file():
                from bninspect.loaders import savedmodel

                return savedmodel.read_savedmodel(source)
            from bninspect.loaders import kerashub_preset

            if kerashub_preset.is_preset_directory(target):
                return kerashub_preset.read_preset(source)
            if tf_checkpoint.is_checkpoint_directory(target):
                return tf_checkpoint.read_tf_checkpoint(source)
            raise ConfigError("is a directory without saved_model.pb, config.json + model.weights.h5 or .index "
                              "files: not a SavedModel, a KerasHub preset or a TF checkpoint")
        if tf_checkpoint.is_checkpoint_prefix(target):
            return tf_checkpoint.read_tf_checkpoint(source)
        if not target.exists():
            raise ConfigError("no such file or directory")
        with open_regular(source) as handle:
            head = handle.read(2056)
        if not head:
            raise ConfigError("file is empty")
        if head.startswith(ZIP_SIGNATURE):
            from bninspect.loaders import keras_v3

            return keras_v3.read_keras_archive(source)
        if _hdf5_at(head):
            return _read_hdf5(source)
        if tf_checkpoint.names_checkpoint_file(target):
            return tf_checkpoint.read_tf_checkpoint(source)
        raise ConfigError("not an HDF5 file (.h5), a zip archive (.keras) or a TF checkpoint (.index)")
    except READ_ERRORS as error:
        raise ModelReadError(source, _reason(error)) from error
    except (MissingExtra, BackendConflict) as error:
        # A SavedModel or TF checkpoint without TensorFlow installed, or in a run on another
        # backend: this file cannot be read here (`check` still reads the others), and the reason
        # says what to do.
        raise ModelReadError(source, str(error)) from None


def refuse_outside_storage(path: str | os.PathLike) -> None:
    """Before Keras reads the whole of a local model file or directory: no object anywhere in it
    reads outside the file or expands without bounds (hdf5_input.refuse_outside_storage_anywhere).
    Raises ModelReadError with the one-line reason."""
    from bninspect.loaders.hdf5_input import refuse_outside_storage_anywhere

    source = str(path)
    try:
        refuse_outside_storage_anywhere(source)
    except READ_ERRORS as error:
        raise ModelReadError(source, _reason(error)) from error


def _load_url(url: str, options: RemoteOptions) -> ModelDescription:
    """A model at a URL: files read by ranges, a KerasHub preset on a prefix file by file;
    SavedModel directories and TF checkpoints downloaded to a temporary directory first."""
    from dataclasses import replace

    from bninspect.loaders import kerashub_preset, remote, tf_checkpoint

    if remote.kind(url, options) == "directory":
        if remote.exists(remote.join(url, "saved_model.pb"), options) or \
                remote.exists(remote.join(url, tf_checkpoint.STATE_FILE), options):
            files = remote.find_files(url, options)
            with remote.downloaded(url, options, files) as local:
                return replace(_load_copy(local, url), source=url)
        preset = remote.RemotePreset(url, options)
        if preset.has(kerashub_preset.BACKBONE_CONFIG) and preset.has(kerashub_preset.BACKBONE_WEIGHTS):
            return kerashub_preset.read_preset(url, preset)
        raise ConfigError("is a prefix without saved_model.pb, config.json + model.weights.h5 or a checkpoint "
                          "file: not a SavedModel, a KerasHub preset or a TF checkpoint")
    if url.endswith(tf_checkpoint.INDEX_SUFFIX):
        directory, _, name = url[:-len(tf_checkpoint.INDEX_SUFFIX)].rpartition("/")
        files = [file for file in remote.find_files(directory, options)
                 if file.rsplit("/", 1)[-1].startswith((name + ".index", name + ".data-"))]
        with remote.downloaded(directory, options, files) as local:
            return replace(_load_copy(local, directory, name + tf_checkpoint.INDEX_SUFFIX), source=url)
    try:
        with remote.open_remote(url, options) as file:
            head = file.read_at(2056, 0)
            if not head:
                raise ConfigError("file is empty")
            if head.startswith(ZIP_SIGNATURE):
                from bninspect.loaders import keras_v3

                return keras_v3.read_keras_archive(url, file)
            if _hdf5_at(head):
                return _read_hdf5(url, remote.hdf5_in(file))
            raise ConfigError("not an HDF5 file (.h5) or a zip archive (.keras)")
    except remote.NoRangeSupport:
        if not options.download:
            raise
        with remote.downloaded(url, options) as local:
            size = os.path.getsize(local)
            description = _load_copy(local, url)
        return replace(description, source=url, notes=description.notes + (
            f"the server does not support range requests: read from a download of the whole file ({size:,} bytes)",))


def _load_copy(local: str, url: str, name: str | None = None) -> ModelDescription:
    """`load` of a downloaded copy (`name` inside it, if given), whose errors name the URL: the
    temporary directory means nothing to the user and is gone when the error is shown."""
    try:
        return load(os.path.join(local, name) if name else local)
    except ModelReadError as error:
        raise ModelReadError(url, error.reason.replace(local, url.rstrip("/"))) from error


def discover(paths: list[str | os.PathLike], remote: RemoteOptions | None = None) -> list[str]:
    """Model files, SavedModel directories and TF checkpoints under the given paths, in a stable order.

    Named files are kept whatever their suffix (the user asked for them); directories are searched
    recursively for `.h5`, `.hdf5`, `.keras` files, SavedModel and KerasHub preset directories (one
    model each: their weights files are not listed apart) and TF checkpoints. A directory with a
    `checkpoint` state file is one model (its latest checkpoint), listed by the directory; a `.index`
    file elsewhere (with its `.data-*` shard) is a checkpoint of its own. A SavedModel's directory is
    not searched, so its `variables/variables.index` is not listed apart from it.

    A URL is a file, or a prefix (`s3://bucket/models/`) whose objects are listed the same way.
    """
    from bninspect.loaders.tf_checkpoint import INDEX_SUFFIX, STATE_FILE

    found: list[str] = []
    for path in paths:
        if is_url(str(path)):
            found.extend(_discover_url(str(path), remote or NO_OPTIONS))
            continue
        target = Path(path)
        if not target.is_dir() or _is_model_directory(target):
            found.append(str(target))
            continue
        for root, dirs, files in os.walk(target):
            root_path = Path(root)
            saved = sorted(d for d in dirs if _is_model_directory(root_path / d))
            found.extend(str(root_path / d) for d in saved)
            dirs[:] = sorted(d for d in dirs if d not in saved and not d.startswith("."))
            # Only an index with its data shard next to it: other tools write `.index` files too
            # (FAISS, search engines), and a stray one must not fail a model registry's check.
            shards = {f.rpartition(".data-")[0] for f in files if ".data-" in f}
            indexes = sorted(f for f in files if f.endswith(INDEX_SUFFIX) and f[:-len(INDEX_SUFFIX)] in shards)
            checkpoint_directory = STATE_FILE in files and bool(indexes)
            if checkpoint_directory:
                found.append(str(root_path))
            else:
                found.extend(str(root_path / f) for f in indexes)
            found.extend(str(root_path / f) for f in sorted(files) if f.lower().endswith(MODEL_SUFFIXES))
    return list(dict.fromkeys(found))


def _is_model_directory(path: Path) -> bool:
    from bninspect.loaders.kerashub_preset import is_preset_directory

    return (path / "saved_model.pb").is_file() or is_preset_directory(path)


def _discover_url(url: str, options: RemoteOptions) -> list[str]:
    """`discover` below a URL prefix: one listing of every object, grouped by directory as
    `os.walk` would see them."""
    from bninspect.loaders import kerashub_preset, remote
    from bninspect.loaders.tf_checkpoint import INDEX_SUFFIX, STATE_FILE

    try:
        if remote.kind(url, options) == "file":
            return [url]
        files = remote.find_files(url, options)
    except ConfigError as error:
        raise ModelReadError(url, str(error)) from error
    names_in: dict[str, set[str]] = {}
    for file in files:
        directory, _, name = file.rpartition("/")
        names_in.setdefault(directory, set()).add(name)

    def is_model_directory(names: set[str]) -> bool:
        return "saved_model.pb" in names or {kerashub_preset.BACKBONE_CONFIG,
                                             kerashub_preset.BACKBONE_WEIGHTS} <= names

    def has_checkpoint(names: set[str]) -> bool:
        shards = {name.rpartition(".data-")[0] for name in names if ".data-" in name}
        return STATE_FILE in names and any(n.endswith(INDEX_SUFFIX) and n[:-len(INDEX_SUFFIX)] in shards
                                           for n in names)

    model_directories = sorted(d for d, names in names_in.items() if is_model_directory(names) or has_checkpoint(names))
    # Linear in the listing, whatever a server lists: a set of model directories looked up by each
    # file's ancestors, and each directory's shards computed once.
    inside_model = set(model_directories)
    shards_in = {directory: {n.rpartition(".data-")[0] for n in names if ".data-" in n}
                 for directory, names in names_in.items()}
    found: list[str] = []
    for file in files:
        if any(ancestor in inside_model for ancestor in _ancestors(file)):
            continue
        directory, _, name = file.rpartition("/")
        if name.lower().endswith(MODEL_SUFFIXES) or \
                (name.endswith(INDEX_SUFFIX) and name[:-len(INDEX_SUFFIX)] in shards_in[directory]):
            found.append(file)
    return sorted(found + model_directories)


def _ancestors(path: str) -> Iterator[str]:
    """`a/b/c` -> `a/b`, `a`: the directories a listed file is in."""
    while "/" in path:
        path = path.rpartition("/")[0]
        yield path
