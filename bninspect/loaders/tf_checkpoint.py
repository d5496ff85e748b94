"""TensorFlow-format checkpoints: tf-keras `model.save_weights("ckpt/name")` (no `.h5` suffix),
`ModelCheckpoint(save_weights_only=True)` without `.h5`, `tf.train.Checkpoint(...).save/.write`.

On disk: `name.index`, `name.data-00000-of-00001`, and usually a `checkpoint` text file in the
directory naming the latest one (`model_checkpoint_path: "name"`). Accepted as the `.index` file,
a `.data-*` shard, the prefix `name` itself (which does not exist as a file), or the directory
(its `checkpoint` file's latest entry, else its newest `.index`). The name may be empty: TF1's
`saver.save(session, "run_17/")` writes `run_17/.index`. Only checkpoints inside the directory are
read, whatever its `checkpoint` file names (a copied directory names the author's machine).

Weights only: no layer config, no graph. BN layers are the objects of the checkpoint's object graph
with `moving_mean` and `moving_variance` variable children (`loaders.tf_objects`), outside the
optimizer's subtree. Their path is the chain of edge names from the root: subclassed models keep
their attribute names (`block/bn`). Functional and Sequential models track layers as
`layer_with_weights-3` / `layer-5` (tf-keras) or `_operations/2` (Keras 3); the last such step is
replaced by the BN layer's own name, which its variables carry (`bn1/moving_mean`), so a flat
Functional model gets the same paths as its `.h5`. Nested models' names are not in the file; their
steps stay edge names, and a note says so.

A TF1 `tf.compat.v1.train.Saver` checkpoint has no object graph: BN layers are then the variable
scopes holding `moving_mean` and `moving_variance` (`tf.compat.v1.layers`, contrib/slim `BatchNorm`,
hand-written), like a SavedModel without Keras metadata, and `global_step` is the step count. Graph
code made them, not layer objects: there is no layer config to save (`ModelDescription.tf1_graph`),
so BN015 does not send the user to `model.save`. ExponentialMovingAverage shadows are not read: a
note names them.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
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
# The prefix may be empty: TF1 `saver.save(session, "dir/")` writes `dir/.data-00000-of-00001`.
DATA_SHARD = re.compile(r"^(?P<prefix>.*)\.data-\d{5}-of-\d{5}$")
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
# The default name of tf.compat.v1.train.ExponentialMovingAverage: its shadow of `v` is `v/ExponentialMovingAverage`.
_EMA_SHADOW = "ExponentialMovingAverage"

NOTE_EDGE_PATHS = ("TF checkpoint of a Functional/Sequential model: it stores no names of nested models, so their "
                   "steps in the BN paths are the object graph's edges (tf-keras layer_with_weights-N / layer-N, "
                   "Keras 3 _operations/N)")
NOTE_TF1 = ("TF checkpoint without an object graph (TF1 Saver): BN layers are the variable scopes holding moving_mean "
            "and moving_variance; their momentum (decay), axis and epsilon are not stored (epsilon 1e-3 assumed)")


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
    """The checkpoint `source` points at, reported under `source` as the user gave it."""
    prefix = checkpoint_prefix(Path(source))
    if not prefix.index.is_file():
        raise ConfigError(f"no checkpoint index {prefix.index.name} for prefix {prefix}")
    shards = prefix.data_shards()
    if not shards:
        raise ConfigError(f"checkpoint data file {prefix.name}.data-00000-of-00001 is missing")
    for shard in shards:
        if not shard.is_file():  # TensorFlow would block on a FIFO and read a device forever
            raise ConfigError(f"checkpoint data file {shard.name} is not a regular file: refusing to read it")
    reader = open_reader(str(prefix), WHAT)
    with checkpoint_errors(WHAT):
        objects = has_object_graph(reader)
    if not objects:
        return _read_by_variable_names(source, reader)
    return _read_object_graph(source, CheckpointObjects(reader, WHAT))


# --- which checkpoint ------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointPrefix:
    """A checkpoint prefix split the way TensorFlow names the files: `directory/name.index` and
    `directory/name.data-*`. The name may be empty: TF1's `saver.save(session, "run_17/")` writes
    `run_17/.index` and `run_17/.data-00000-of-00001`, which a `Path` cannot hold as one path
    (it drops the trailing `/`). `str()` gives the prefix TensorFlow's reader takes."""

    directory: Path
    name: str

    def __str__(self) -> str:
        return str(self.directory / self.name) if self.name else os.path.join(str(self.directory), "")

    @property
    def index(self) -> Path:
        return self.directory / (self.name + INDEX_SUFFIX)

    def data_shards(self) -> list[Path]:
        """This prefix's `name.data-NNNNN-of-NNNNN` shards in its directory."""
        return sorted(path for path in self.directory.iterdir() if self._is_shard(path.name))

    def _is_shard(self, file_name: str) -> bool:
        shard = DATA_SHARD.match(file_name)
        return shard is not None and shard.group("prefix") == self.name


def checkpoint_prefix(target: Path) -> CheckpointPrefix:
    """The checkpoint a user's path points at: a directory, a `.index` or `.data-*` file (whose
    prefix may be empty: a file named `.index`), or the prefix itself."""
    if target.is_dir():
        return _prefix_in_directory(target)
    if target.name.endswith(INDEX_SUFFIX):
        return CheckpointPrefix(target.parent, target.name[:-len(INDEX_SUFFIX)])
    shard = DATA_SHARD.match(target.name)
    if shard is not None:
        return CheckpointPrefix(target.parent, shard.group("prefix"))
    return CheckpointPrefix(target.parent, target.name)


def _prefix_in_directory(directory: Path) -> CheckpointPrefix:
    """The checkpoint the directory's state file names; without a state file the newest checkpoint
    in the directory, as TensorFlow would find it.

    Only a checkpoint inside the directory is ever read: the state file comes with the model and
    may name any path on this machine (`/home/.../other`, `../../x`). A directory copied from
    another machine keeps the paths of where it was saved (`/home/author/run_17/`): a checkpoint
    named outside is looked for here by its name, else the newest one here is read. One named
    inside that is missing is an error, not another checkpoint read in its place."""
    written = _latest_in_state_file(directory / STATE_FILE) if (directory / STATE_FILE).is_file() else None
    named = _prefix_named(directory, written) if written is not None else None
    if named is not None and _inside(directory, named.index):
        if not named.index.is_file():
            raise ConfigError(f"{STATE_FILE} file names {written!r}, but {named.index.name} does not exist")
        return named
    if named is not None and CheckpointPrefix(directory, named.name).index.is_file():
        return CheckpointPrefix(directory, named.name)
    indexes = sorted(_index_files(directory), key=lambda path: (path.stat().st_mtime, path.name))
    if indexes:
        return checkpoint_prefix(indexes[-1])
    if named is None:
        raise ConfigError("directory holds no TF checkpoint (.index files)")
    raise ConfigError(f"{STATE_FILE} file names {written!r}, outside the checkpoint directory, and the directory "
                      "holds no .index file")


def _prefix_named(directory: Path, written: str) -> CheckpointPrefix:
    """The prefix a state file's `model_checkpoint_path` names, a relative one taken from
    `directory` as TensorFlow takes it. A path ending in `/` names the empty prefix of that folder;
    so does one ending in `.` or `..`, which name folders too (TF1 writes `.` for the empty prefix
    of its own folder when it saves relative paths)."""
    head, name = os.path.split(written)
    if name in (os.curdir, os.pardir):
        head, name = written, ""
    return CheckpointPrefix(Path(head) if os.path.isabs(head) else directory / head, name)


def _inside(directory: Path, path: Path) -> bool:
    root = os.path.realpath(directory)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _index_files(directory: Path):
    return (path for path in directory.iterdir() if path.name.endswith(INDEX_SUFFIX) and path.is_file())


def _latest_in_state_file(state: Path) -> str:
    """The latest `model_checkpoint_path` of a state file."""
    raw = read_regular(state, MAX_STATE_BYTES)
    if len(raw) > MAX_STATE_BYTES:
        raise ConfigError(f"{STATE_FILE} file is more than {MAX_STATE_BYTES} bytes, not a checkpoint state")
    text = raw.decode("utf-8", errors="replace")
    found = _LATEST_LINE.search(text)
    # Text-format protobuf strings use C escapes (\", \\, octal for non-ASCII bytes).
    latest = codecs.escape_decode(found.group("path").encode("utf-8"))[0] if found else b""
    if not latest:
        raise ConfigError(f"{STATE_FILE} file names no model_checkpoint_path")
    return latest.decode("utf-8", errors="replace")


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
    """A TF1 `Saver` checkpoint: BN layers are the scopes holding `moving_mean` and `moving_variance`
    (`tf.compat.v1.layers.batch_normalization`'s `batch_normalization/`, contrib and slim's
    `BatchNorm/`, hand-written ones), their `gamma` and `beta` where the layer has them. Optimizer
    slots (`gamma/Adam`) and moving-average shadows (`moving_mean/ExponentialMovingAverage`) are
    variables of their own below a BN variable's name, not arrays of the layer: left out."""
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
    shadowed = [key for keys in groups.values() for key in keys.values() if f"{key}/{_EMA_SHADOW}" in shapes]
    notes = (NOTE_TF1,) + ((_ema_note(shadowed),) if shadowed else ())
    return ModelDescription(source=source, format=FORMAT, bn_layers=tuple(bn_layers), has_config=False,
                            training_steps=steps, notes=notes, tf1_graph=True)


def _ema_note(shadowed: list[str]) -> str:
    """Why the BN variables are reported and not their moving averages, which a TF1 evaluation
    often restores in their place (`saver = Saver(ema.variables_to_restore())`)."""
    return (f"the checkpoint also holds ExponentialMovingAverage shadows of {len(shadowed)} BN variables "
            f"({shadowed[0]}/{_EMA_SHADOW}, ...): reported are the variables themselves, which the graph "
            "uses unless its Saver restores the averages in their place (ema.variables_to_restore())")
