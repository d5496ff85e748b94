"""The files on disk an input model is made of, so that no output of a command overwrites one
(SPEC: "writes only where it is told ... no output may name an input").

A model is more than the path the user typed: a SavedModel or a KerasHub preset is a directory of
files, a TF checkpoint a prefix with `.index` and `.data-*` files next to it (and a checkpoint
directory names its prefix in its `checkpoint` state file), a directory given to `check` holds
the models found in it. And a path names a file in many spellings: `./m.h5`, `../dir/m.h5`, a
symbolic link, a hard link. So paths are compared as files (`os.path.samefile`) and as resolved
paths (links followed), never as text.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bninspect.loaders.remote import is_url

if TYPE_CHECKING:
    from bninspect.loaders.tf_checkpoint import CheckpointPrefix


def overwritten_input(output: str | os.PathLike, model: str | os.PathLike) -> str | None:
    """Why writing the file `output` would overwrite the input model `model` (a model file, a model
    directory, a TF checkpoint, or a directory searched for models) or a part of it, as a phrase
    for an error message; None when it would not. A URL is no local file: None."""
    if is_url(str(model)) or is_url(str(output)):
        return None
    target, source = Path(output), Path(model)
    if same_file(target, source):
        return f"it is the input {'directory' if source.is_dir() else 'model'} {model}"
    resolved = Path(os.path.realpath(target))
    prefix = _checkpoint_prefix(source)
    if prefix is not None and _names_checkpoint_part(resolved, prefix):
        return f"it is a file of the input TF checkpoint {model}"
    if not source.is_dir() or not _below(resolved, source):
        return None
    if _is_model_directory(source):
        return f"it is inside the input model directory {model}"
    if _looks_like_a_model(resolved):
        # A directory searched for models (`check models/`): a report next to the models is fine
        # (`check . -o bninspect.sarif`), one named like a model would be read as one next time.
        # The models found in it are inputs of their own, compared one by one.
        return f"it would be a new model file in the input directory {model}, which is searched for models"
    return None


def overwritten_file(output: str | os.PathLike, path: str | os.PathLike, option: str) -> str | None:
    """Why writing `output` would overwrite the file `path` given to `option` (`--data`,
    `--config`), or write into the directory `path` (a directory of images); None when it would not."""
    if is_url(str(output)) or is_url(str(path)):
        return None
    target, source = Path(output), Path(path)
    if same_file(target, source):
        return f"it is the {option} input {path}"
    if source.is_dir() and _below(Path(os.path.realpath(target)), source):
        return f"it is inside the {option} directory {path}"
    return None


def same_file(a: Path, b: Path) -> bool:
    """The same file or directory: by inode when both exist (hard and symbolic links), else by the
    path with every link resolved (`./x` and `x` of a file not written yet)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _below(resolved: Path, directory: Path) -> bool:
    base = os.path.realpath(directory)
    return str(resolved) != base and os.path.commonpath([base, str(resolved)]) == base


def _is_model_directory(directory: Path) -> bool:
    from bninspect.loaders import _is_model_directory as is_saved_model_or_preset
    from bninspect.loaders.tf_checkpoint import is_checkpoint_directory

    return is_saved_model_or_preset(directory) or is_checkpoint_directory(directory)


def _checkpoint_prefix(source: Path) -> CheckpointPrefix | None:
    """The prefix (`dir/name`, the name possibly empty) of the TF checkpoint `source` names: a
    prefix, its `.index` or `.data-*` file, or a directory (the checkpoint in it that would be
    read). None for anything else, and for a state file that cannot be read (reading the model will
    say why)."""
    from bninspect.loaders.graph import ConfigError
    from bninspect.loaders.tf_checkpoint import (checkpoint_prefix, is_checkpoint_directory, is_checkpoint_prefix,
                                                 names_checkpoint_file)

    if source.is_dir() and not is_checkpoint_directory(source):
        return None
    if not source.is_dir() and not (names_checkpoint_file(source) or is_checkpoint_prefix(source)):
        return None
    try:
        return checkpoint_prefix(source)
    except (ConfigError, OSError, ValueError):
        return None


def _names_checkpoint_part(resolved: Path, prefix: CheckpointPrefix) -> bool:
    """`resolved` is the prefix itself, its `.index` or one of its `.data-*` shards (written or not)."""
    return resolved.parent == Path(os.path.realpath(prefix.directory)) and (
        resolved.name in (prefix.name, prefix.index.name) or resolved.name.startswith(prefix.name + ".data-"))


def _looks_like_a_model(path: Path) -> bool:
    from bninspect.loaders import MODEL_SUFFIXES
    from bninspect.loaders.tf_checkpoint import names_checkpoint_file

    return path.name.lower().endswith(MODEL_SUFFIXES) or names_checkpoint_file(path) or path.name == "saved_model.pb"
