"""Read a model file of any supported format into a `ModelDescription`.

The format is told by the bytes, not the file name: HDF5 signature, zip signature, or a directory
with `saved_model.pb`. Only SavedModel reading imports TensorFlow (the `tensorflow` extra: without
it, such a file is a ModelReadError that says how to install it).

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from bninspect.errors import MissingExtra
from bninspect.loaders.graph import ConfigError
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


def _read_hdf5(source: str) -> ModelDescription:
    import h5py

    from bninspect.loaders import h5_legacy, keras_v3
    from bninspect.loaders.hdf5_input import open_hdf5

    # h5py reads through a guard against the HDF5 hangs of damaged files (see hdf5_input).
    with open_hdf5(source) as (guarded, raw), h5py.File(guarded, "r") as handle:
        if "model_config" in handle.attrs:
            return h5_legacy.read_full_model(source, handle, raw)
        if "layer_names" in handle.attrs:
            return h5_legacy.read_weights_only(source, handle, raw)
        if "layers" in handle or "vars" in handle:
            return keras_v3.read_weights_tree(source, handle, None, "weights-v3", raw=raw)
    raise ConfigError("HDF5 file holds no Keras model or weights (no model_config, layer_names or layers group)")


def load(path: str | os.PathLike) -> ModelDescription:
    """Read one model file or SavedModel directory. Raises ModelReadError with a one-line reason."""
    source = str(path)
    try:
        target = Path(source)
        if target.is_dir():
            if (target / "saved_model.pb").is_file():
                from bninspect.loaders import savedmodel

                return savedmodel.read_savedmodel(source)
            raise ConfigError("is a directory without saved_model.pb, not a SavedModel")
        if not target.exists():
            raise ConfigError("no such file or directory")
        with open(target, "rb") as handle:
            head = handle.read(2056)
        if not head:
            raise ConfigError("file is empty")
        if head.startswith(ZIP_SIGNATURE):
            from bninspect.loaders import keras_v3

            return keras_v3.read_keras_archive(source)
        if _hdf5_at(head):
            return _read_hdf5(source)
        raise ConfigError("not an HDF5 file (.h5) or a zip archive (.keras)")
    except READ_ERRORS as error:
        raise ModelReadError(source, _reason(error)) from error
    except MissingExtra as error:
        # A SavedModel or TF checkpoint without TensorFlow installed: this file cannot be read
        # here (`check` still reads the others), and the reason says how to install the extra.
        raise ModelReadError(source, str(error)) from None


def discover(paths: list[str | os.PathLike]) -> list[str]:
    """Model files and SavedModel directories under the given paths, in a stable order.

    Named files are kept whatever their suffix (the user asked for them); directories are searched
    recursively for `.h5`, `.hdf5`, `.keras` files and SavedModel directories.
    """
    found: list[str] = []
    for path in paths:
        target = Path(path)
        if not target.is_dir() or (target / "saved_model.pb").is_file():
            found.append(str(target))
            continue
        for root, dirs, files in os.walk(target):
            root_path = Path(root)
            saved = sorted(d for d in dirs if (root_path / d / "saved_model.pb").is_file())
            found.extend(str(root_path / d) for d in saved)
            dirs[:] = sorted(d for d in dirs if d not in saved and not d.startswith("."))
            found.extend(str(root_path / f) for f in sorted(files) if f.lower().endswith(MODEL_SUFFIXES))
    return list(dict.fromkeys(found))
