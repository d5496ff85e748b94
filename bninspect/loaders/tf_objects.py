"""TensorFlow object-based checkpoints (`name.index` + `name.data-*`), read as data.

Shared by the two readers that meet such a checkpoint: a SavedModel's `variables/variables` and a
TF-format checkpoint of its own (`save_weights("ckpt/name")`, `tf.train.Checkpoint`). TensorFlow's
checkpoint reader only reads tensors; the checkpoint's object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`,
a `TrackableObjectGraph` proto) says which object each tensor belongs to: nodes with children
named by the attribute or list index that tracked them (`layer_with_weights-2`, `bn1`, `gamma`),
and on variable nodes the checkpoint key and the variable's own name (`full_name`). Keys cannot be
guessed from names: a variable is stored under the first path that reaches it, which for Keras 3
models is often the optimizer's list of trainable variables.

TensorFlow is imported (lazily, through `bninspect.tf_runtime`), which SPEC allows for these
formats only. Nothing from the checkpoint is executed.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from bninspect.errors import one_line
from bninspect.loaders.common import BN_ARRAY_NAMES, MAX_CHANNELS, step_count_value
from bninspect.loaders.graph import ConfigError

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_ATTRIBUTE = "VARIABLE_VALUE"
# The optimizer's step counter as a child of the optimizer object: tf.keras 2.11+ and Keras 3
# `_iterations`, the legacy tf.keras optimizers `iter`, older ones `iterations`.
STEP_COUNT_CHILDREN = ("_iterations", "iter", "iterations")
OPTIMIZER_EDGE = "optimizer"
# The path of BN variables named without a scope (`moving_mean`), as TensorFlow names the root object.
ROOT_SCOPE = "root"


def import_tensorflow(what: str) -> Any:
    """TensorFlow, imported without its start-up lines and with oneDNN on unless the user set
    TF_ENABLE_ONEDNN_OPTS (`bninspect.tf_runtime`). Keras is not needed to read a checkpoint.
    Without TensorFlow installed, MissingExtra names `what` was being read; in a process that runs
    models on JAX or PyTorch, BackendConflict."""
    from bninspect.keras_runtime import refuse_tensorflow_beside_another_backend
    from bninspect.tf_runtime import import_tensorflow as _import

    refuse_tensorflow_beside_another_backend(f"reading {what}")
    return _import(quiet=True, keras=False, needed_for=f"reading {what}")


@contextmanager
def checkpoint_errors(what: str) -> Iterator[None]:
    """Missing, truncated or corrupt checkpoint files as one ConfigError naming `what`.

    TensorFlow raises OpError subclasses (NotFound, DataLoss, and the plain OpError of "not an
    sstable"); a data file shorter than its index says comes back as IndexError ("Read less bytes
    than requested"), some damage as ValueError or RuntimeError.
    """
    tf = import_tensorflow(what)
    try:
        yield
    except (tf.errors.OpError, IndexError, RuntimeError, ValueError) as error:
        raise ConfigError(f"{what} cannot be read ({one_line(error)})") from None


def open_reader(prefix: str, what: str) -> Any:
    """TensorFlow's reader of the checkpoint `prefix` (`dir/name`, or `dir/` for the empty name),
    its errors as one ConfigError.

    Not `tf.train.load_checkpoint`: given a path that is a directory, which the empty prefix
    `dir/` is, it opens whatever the directory's `checkpoint` state file names, anywhere on this
    machine. The reader below opens `prefix.index` and its shards, nothing else."""
    tf = import_tensorflow(what)
    with checkpoint_errors(what):
        return tf.compat.v1.train.NewCheckpointReader(prefix)


def breadth_first(children: Callable[[int], Iterable[tuple[str, int]]], size: int,
                  skip: frozenset[str] = frozenset()) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(node id, edge names from the root) of every node reachable from node 0, breadth first, the
    way TensorFlow assigns checkpoint keys: the first path to a node wins. Edges named in `skip`
    are not followed. `children(node_id)` gives (local name, node id) pairs; ids outside
    0..size-1 (a damaged graph) are ignored."""
    seen = {0}
    queue: list[tuple[int, tuple[str, ...]]] = [(0, ())]
    for node_id, edges in queue:
        yield node_id, edges
        for local_name, child_id in children(node_id):
            if local_name not in skip and child_id not in seen and 0 <= child_id < size:
                seen.add(child_id)
                queue.append((child_id, edges + (local_name,)))


def has_object_graph(reader: Any) -> bool:
    return reader.has_tensor(OBJECT_GRAPH_KEY)


def read_channels(reader: Any, key: str, what: str) -> tuple[np.ndarray, str]:
    """One per-channel array as a float64 copy and its stored dtype name."""
    shape = reader.get_variable_to_shape_map().get(key)
    if shape is None:
        raise ConfigError(f"checkpoint has no tensor {key!r} for {what}")
    if len(shape) != 1:
        raise ConfigError(f"{what} has shape {tuple(shape)}, expected one value per channel")
    if shape[0] > MAX_CHANNELS:
        raise ConfigError(f"{what} has {shape[0]} channels, more than {MAX_CHANNELS}")
    value = np.asarray(reader.get_tensor(key))
    if value.dtype.kind not in "fiu":
        raise ConfigError(f"{what} has dtype {value.dtype}, expected floating point")
    return value.astype(np.float64), str(value.dtype)


def bn_variable_groups(named_keys: Iterable[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """{owner scope: {array name: checkpoint key}} of the variables named `owner/moving_mean`,
    `owner/moving_variance` (and `owner/gamma`, `owner/beta`), for checkpoints whose objects say
    nothing about layers. Owners without both moving statistics are not BN layers. Variables
    outside any scope (hand-written TF1 code) are the owner `root`, unless a scope has that name."""
    owners: dict[str, dict[str, str]] = {}
    for name, key in named_keys:
        stripped = name[:-2] if name.endswith(":0") else name
        owner, _, leaf = stripped.rpartition("/")
        if leaf in BN_ARRAY_NAMES:
            owners.setdefault(owner, {}).setdefault(leaf, key)
    if "" in owners and ROOT_SCOPE not in owners:
        owners[ROOT_SCOPE] = owners.pop("")
    return {owner: keys for owner, keys in sorted(owners.items())
            if owner and {"moving_mean", "moving_variance"} <= keys.keys()}


class CheckpointObjects:
    """The checkpoint's object graph: walk it by local names, read a variable child's value.

    `what` names the checkpoint in error messages ("SavedModel checkpoint", "TF checkpoint").
    """

    def __init__(self, reader: Any, what: str):
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        self._reader = reader
        self._what = what
        if not has_object_graph(reader):
            raise ConfigError(f"{what}: no object graph ({OBJECT_GRAPH_KEY})")
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        serialized = self._tensor(OBJECT_GRAPH_KEY)
        try:
            graph.ParseFromString(serialized)
        except Exception as error:  # protobuf's DecodeError has no stable import path
            raise ConfigError(f"{what}: object graph is malformed ({one_line(error)})") from None
        self._nodes = graph.nodes
        if not self._nodes:
            raise ConfigError(f"{what}: object graph is empty")

    def find(self, node_path: str) -> int | None:
        """The node id at `root.a.b`, or None."""
        node_id = 0
        for local_name in node_path.split(".")[1:]:
            children = {child.local_name: child.node_id for child in self._nodes[node_id].children}
            node_id = children.get(local_name, -1)
            if not 0 <= node_id < len(self._nodes):
                return None
        return node_id

    def walk(self, skip: frozenset[str] = frozenset()) -> Iterator[tuple[int, tuple[str, ...]]]:
        """(node id, edge names from the root) of every reachable node, first path wins."""
        return breadth_first(self._children, len(self._nodes), skip)

    def child_ids(self, node_id: int) -> dict[str, int]:
        return {child.local_name: child.node_id for child in self._nodes[node_id].children
                if 0 <= child.node_id < len(self._nodes)}

    def variable_children(self, node_id: int) -> dict[str, tuple[np.ndarray, str]]:
        """The values of the node's children that are saved variables, by local name."""
        values = {}
        for local_name, child_id in self.child_ids(node_id).items():
            if local_name in BN_ARRAY_NAMES:
                key = self.variable_key(child_id)
                if key is not None:
                    values[local_name] = self.read(key, local_name)
        return values

    def variables(self) -> Iterator[tuple[str, str]]:
        """(full variable name, checkpoint key) of every saved variable."""
        for node in self._nodes:
            for attribute in node.attributes:
                if attribute.name == VARIABLE_ATTRIBUTE and attribute.full_name:
                    yield attribute.full_name, attribute.checkpoint_key

    def read(self, key: str, what: str) -> tuple[np.ndarray, str]:
        with checkpoint_errors(f"{self._what} tensor for {what}"):
            return read_channels(self._reader, key, what)

    def step_count(self) -> int | None:
        """The optimizer's step counter, from the first object tracked as `optimizer` (the root's
        for `model.save_weights` and `tf.train.Checkpoint(optimizer=...)`, the model's for
        `tf.train.Checkpoint(model=...)`). None without an optimizer or with an odd counter."""
        for node_id, edges in self.walk():
            if not edges or edges[-1] != OPTIMIZER_EDGE:
                continue
            children = self.child_ids(node_id)
            for local_name in STEP_COUNT_CHILDREN:
                key = self.variable_key(children[local_name]) if local_name in children else None
                if key is not None and self._reader.has_tensor(key):
                    try:
                        return step_count_value(self._tensor(key))
                    except ConfigError:
                        return None  # a damaged counter is no reason to refuse the model's BN layers
        return None

    def variable_key(self, node_id: int) -> str | None:
        for attribute in self._nodes[node_id].attributes:
            if attribute.name == VARIABLE_ATTRIBUTE:
                return attribute.checkpoint_key
        return None

    def variable_name(self, node_id: int) -> str | None:
        """The variable's own name (`bn1/moving_mean`, Keras 3 `model/bn/moving_mean`), if saved."""
        for attribute in self._nodes[node_id].attributes:
            if attribute.name == VARIABLE_ATTRIBUTE and attribute.full_name:
                return attribute.full_name
        return None

    def _children(self, node_id: int) -> Iterator[tuple[str, int]]:
        return ((child.local_name, child.node_id) for child in self._nodes[node_id].children)

    def _tensor(self, key: str) -> Any:
        with checkpoint_errors(self._what):
            return self._reader.get_tensor(key)
