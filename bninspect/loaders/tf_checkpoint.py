"""TensorFlow-format checkpoints: tf-keras `model.save_weights("ckpt/name")` (no `.h5` suffix),
`ModelCheckpoint(save_weights_only=True)` without `.h5`, `tf.train.Checkpoint(...).save/.write`.

On disk: `name.index`, `name.data-00000-of-00001`, and usually a `checkpoint` text file in the
directory naming the latest one (`model_checkpoint_path: "name"`). Accepted as the `.index` file,
a `.data-*` shard, the prefix `name` itself (which does not exist as a file), or the directory
(its `checkpoint` file's latest entry, else its newest `.index`).

Weights only: no layer config, no graph. BN layers are the objects of the checkpoint's object graph
with `moving_mean` and `moving_variance` variable children (`loaders.tf_objects`), outside the
optimizer's subtree. Their path is the chain of edge names from the root: subclassed models keep
their attribute names (`block/bn`). Functional and Sequential models track layers as
`layer_with_weights-3` / `layer-5` (tf-keras) or `_operations/2` (Keras 3); the last such step is
replaced by the BN layer's own name, which its variables carry (`bn1/moving_mean`), so a flat
Functional model gets the same paths as its `.h5`. Nested models' names are not in the file; their
steps stay edge names, and a note says so.

A TF1 `tf.compat.v1.train.Saver` checkpoint has no object graph: BN layers are then the variable
scopes holding `moving_mean` and `moving_variance`, like a SavedModel without Keras metadata.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import codecs
import glob
import os
import re
from pathlib import Path

from bninspect.loaders.common import bn_layer, step_count_value
from bninspect.loaders.graph import ConfigError
from bninspect.loaders.hdf5_input import read_regular
from bninspect.loaders.tf_objects import (OPTIMIZER_EDGE, CheckpointObjects, bn_variable_groups, checkpoint_errors,
                                          has_object_graph, open_reader, read_channels)
from bninspect.model import BNLayer, ModelDescription

FORMAT = "tf-checkpoint"
WHAT = "TF checkpoint"
STATE_FILE = "checkpoint"
INDEX_SUFFIX = ".index"
DATA_SHARD = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
# `model_checkpoint_path: "name"` in the text-format CheckpointState proto; the first one is the latest.
_LATEST_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"(?P<path>(?:[^"\\]|\\.)*)"\s*$', re.MULTILINE)
# The `checkpoint` file lists a few paths; a bigger one is not a CheckpointState.
MAX_STATE_BYTES = 1 << 20

# Object-graph edges that are containers, not layers: Keras 3 Sequential's inner Functional, and the
# lists Keras keeps layers in (followed by the list index).
_WRAPPER_EDGES = frozenset({"_functional"})
_LAYER_LISTS = frozenset({"_operations", "_layers", "_self_tracked_trackables"})
_NUMBERED_LAYER_EDGE = re.compile(r"^layer(_with_weights)?-\d+$")
# Edges into objects that hold no BN layers of the model: the optimizer (its slot variables of
# gamma and beta), tf-keras' traced train function, tf.train.Checkpoint's own counter.
_SKIPPED_EDGES = frozenset({OPTIMIZER_EDGE, "train_tf_function", "save_counter"})
# A TF1 graph's step counter.
_TF1_STEP_COUNTER = "global_step"

NOTE_EDGE_PATHS = ("TF checkpoint of a Functional/Sequential model: it stores no names of nested models, so their "
                   "steps in the BN paths are the object graph's edges (tf-keras layer_with_weights-N / layer-N, "
                   "Keras 3 _operations/N)")
NOTE_TF1 = "TF checkpoint without an object graph (TF1 Saver): BN layers found by variable name, paths are variable scopes"


def is_checkpoint_directory(directory: Path) -> bool:
    """A directory holding a TF checkpoint: a `checkpoint` state file, or `.index` files."""
    try:
        return (directory / STATE_FILE).is_file() or any(_index_files(directory))
    except OSError:
        return False


def is_checkpoint_prefix(target: Path) -> bool:
    """A path that is not itself a file but names a checkpoint: `prefix.index` exists."""
    return not target.exists() and target.with_name(target.name + INDEX_SUFFIX).is_file()


def names_checkpoint_file(target: Path) -> bool:
    """`name.index` or `name.data-00000-of-00001`."""
    return target.name.endswith(INDEX_SUFFIX) or DATA_SHARD.match(target.name) is not None


def read_tf_checkpoint(source: str) -> ModelDescription:
    prefix = checkpoint_prefix(Path(source))
    index = Path(prefix + INDEX_SUFFIX)
    if not index.is_file():
        raise ConfigError(f"no checkpoint index {index.name} for prefix {prefix}")
    shards = list(index.parent.glob(f"{glob.escape(Path(prefix).name)}.data-*"))
    if not shards:
        raise ConfigError(f"checkpoint data file {Path(prefix).name}.data-00000-of-00001 is missing")
    for shard in shards:
        if not shard.is_file():  # TensorFlow would block on a FIFO and read a device forever
            raise ConfigError(f"checkpoint data file {shard.name} is not a regular file: refusing to read it")
    reader = open_reader(prefix, WHAT)
    with checkpoint_errors(WHAT):
        objects = has_object_graph(reader)
    if not objects:
        return _read_by_variable_names(source, reader)
    return _read_object_graph(source, CheckpointObjects(reader, WHAT))


# --- which checkpoint ------------------------------------------------------------------------


def checkpoint_prefix(target: Path) -> str:
    """The checkpoint prefix (`dir/name`) a user's path points at."""
    if target.is_dir():
        return _prefix_in_directory(target)
    if target.name.endswith(INDEX_SUFFIX):
        return str(target)[:-len(INDEX_SUFFIX)]
    shard = DATA_SHARD.match(target.name)
    if shard is not None:
        return str(target.with_name(shard.group("prefix")))
    return str(target)


def _prefix_in_directory(directory: Path) -> str:
    state = directory / STATE_FILE
    named_in_state = None
    if state.is_file():
        latest = _latest_in_state_file(state)
        if latest is None:
            raise ConfigError(f"{STATE_FILE} file names no model_checkpoint_path")
        named = Path(latest) if Path(latest).is_absolute() else directory / latest
        # Only a checkpoint inside the directory is read: the state file comes with the model and
        # may name any path on this machine (`/home/.../other`, `../../x`).
        if _inside(directory, named) and named.with_name(named.name + INDEX_SUFFIX).is_file():
            return str(named)
        # A directory copied or moved after saving keeps the absolute paths of where it was.
        moved = directory / named.name
        if named.name not in ("", ".", "..") and moved.with_name(moved.name + INDEX_SUFFIX).is_file():
            return str(moved)
        named_in_state = latest
    # Without a usable state file, the newest checkpoint in the directory, as TensorFlow would
    # find it if the state file were gone. The `.index` of an empty prefix is named `.index`.
    indexes = sorted(_index_files(directory), key=lambda path: (path.stat().st_mtime, path.name))
    if not indexes:
        if named_in_state is not None:
            named = Path(named_in_state) if Path(named_in_state).is_absolute() else directory / named_in_state
            if not _inside(directory, named):
                raise ConfigError(f"{STATE_FILE} file names {named_in_state!r}, outside the checkpoint directory, "
                                  "and the directory holds no .index file")
            raise ConfigError(f"{STATE_FILE} file names {named_in_state!r}, but {named.name}{INDEX_SUFFIX} does not "
                              "exist")
        raise ConfigError("directory holds no TF checkpoint (.index files)")
    return str(indexes[-1])[:-len(INDEX_SUFFIX)]


def _inside(directory: Path, path: Path) -> bool:
    root = os.path.realpath(directory)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _index_files(directory: Path):
    return (path for path in directory.iterdir() if path.name.endswith(INDEX_SUFFIX) and path.is_file())


def _latest_in_state_file(state: Path) -> str | None:
    raw = read_regular(state, MAX_STATE_BYTES)
    if len(raw) > MAX_STATE_BYTES:
        raise ConfigError(f"{STATE_FILE} file is more than {MAX_STATE_BYTES} bytes, not a checkpoint state")
    text = raw.decode("utf-8", errors="replace")
    found = _LATEST_LINE.search(text)
    if found is None:
        return None
    # Text-format protobuf strings use C escapes (\", \\, octal for non-ASCII bytes).
    raw = codecs.escape_decode(found.group("path").encode("utf-8"))[0]
    return raw.decode("utf-8", errors="replace") or None


# --- BN layers -------------------------------------------------------------------------------


def _read_object_graph(source: str, objects: CheckpointObjects) -> ModelDescription:
    found: list[tuple[int, list[tuple[str, bool]]]] = []
    for node_id, edges in objects.walk(skip=_SKIPPED_EDGES):
        children = objects.child_ids(node_id)
        if all(name in children and objects.variable_key(children[name]) is not None
               for name in ("moving_mean", "moving_variance")):
            steps = _path_steps(edges)
            own_name = _layer_name(objects.variable_name(children["moving_mean"]))
            if steps and steps[-1][1] and own_name:
                steps[-1] = (own_name, False)
            found.append((node_id, steps))
    paths = _unique_paths(objects, found)
    bn_layers = tuple(bn_layer(path, "BatchNormalization", None, objects.variable_children(node_id))
                      for (node_id, _), path in zip(found, paths))
    edge_steps_left = any(numbered for _, steps in found for _, numbered in steps)
    return ModelDescription(source=source, format=FORMAT, bn_layers=bn_layers, has_config=False,
                            training_steps=objects.step_count(),
                            notes=(NOTE_EDGE_PATHS,) if edge_steps_left else ())


def _path_steps(edges: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The edges as path steps: (text, whether it is a numbered layer slot rather than a name)."""
    steps: list[tuple[str, bool]] = []
    position = 0
    while position < len(edges):
        edge = edges[position]
        if edge in _WRAPPER_EDGES:
            position += 1
        elif edge in _LAYER_LISTS and position + 1 < len(edges) and edges[position + 1].isdigit():
            steps.append((f"{edge}/{edges[position + 1]}", True))
            position += 2
        else:
            steps.append((edge, _NUMBERED_LAYER_EDGE.match(edge) is not None))
            position += 1
    return steps


def _layer_name(variable_name: str | None) -> str | None:
    """`bn1` from the moving mean's own name `bn1/moving_mean` (`:0` and scopes around it allowed)."""
    if not variable_name:
        return None
    parts = variable_name.removesuffix(":0").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-1] == "moving_mean" and parts[-2] else None


def _unique_paths(objects: CheckpointObjects, found: list[tuple[int, list[tuple[str, bool]]]]) -> list[str]:
    """Each BN layer's path; where two would be the same (the same name in different nested models
    whose edges were dropped), those keep the plain edge chain, which is unique."""
    paths = ["/".join(text for text, _ in steps) for _, steps in found]
    counts = {path: paths.count(path) for path in paths}
    if all(count == 1 and path for path, count in counts.items()):
        return paths
    edge_paths = {node_id: "/".join(edges) or "root" for node_id, edges in objects.walk(skip=_SKIPPED_EDGES)}
    return [path if path and counts[path] == 1 else edge_paths[node_id]
            for (node_id, _), path in zip(found, paths)]


def _read_by_variable_names(source: str, reader) -> ModelDescription:
    with checkpoint_errors(WHAT):
        shapes = reader.get_variable_to_shape_map()
        groups = bn_variable_groups((name, name) for name in shapes)
        bn_layers: list[BNLayer] = [
            bn_layer(owner, "BatchNormalization", None,
                     {leaf: read_channels(reader, key, f"{owner}/{leaf}") for leaf, key in keys.items()})
            for owner, keys in groups.items()]
        steps = None
        if _TF1_STEP_COUNTER in shapes and list(shapes[_TF1_STEP_COUNTER]) in ([], [1]):
            steps = step_count_value(reader.get_tensor(_TF1_STEP_COUNTER))
    return ModelDescription(source=source, format=FORMAT, bn_layers=tuple(bn_layers), has_config=False,
                            training_steps=steps, notes=(NOTE_TF1,))
