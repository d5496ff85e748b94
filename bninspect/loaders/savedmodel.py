"""TensorFlow SavedModel directories written by tf.keras / tf-keras `model.save(dir)`.

Read statically, like the other formats: nothing from the directory is executed.

- The model config comes from `keras_metadata.pb`, a `SavedMetadata` protobuf whose nodes carry
  one JSON document per tracked Keras object (the root node holds the model config). TF 2.0-2.4
  kept the same JSON in `saved_model.pb` instead (`SavedUserObject.metadata`); we read that when
  `keras_metadata.pb` is absent.
- The variables come from the checkpoint in `variables/` through TensorFlow's checkpoint reader,
  which only reads tensors. The checkpoint's own object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`) maps
  each Keras object, addressed by the metadata's `node_path` (`root.layer_with_weights-2.
  layer_with_weights-1`), to the checkpoint keys of its `gamma`, `beta`, `moving_mean` and
  `moving_variance` children. Keys cannot be guessed from names: a variable is stored under the
  first path that reaches it, which for nested models is often `variables/7`.

Loading with `tf_keras.models.load_model` would be simpler but would revive Lambda layers and
traced functions, needs tf-keras (not a runtime dependency), and is slow. TensorFlow itself is
imported, which SPEC allows for this format only.

A SavedModel without any Keras metadata (Keras 3 `model.export()`, `tf.saved_model.save`) is read
weights-only: BN layers are recognised by variables named `.../moving_mean` and `.../moving_variance`.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bninspect.loaders.common import (BN_ARRAY_NAMES, MAX_CHANNELS, MAX_CONFIG_BYTES, bn_layer, parse_json_config,
                                      step_count_value)
from bninspect.loaders.graph import ConfigError, NoGraphError, dtype_policy_name, parse_model_config
from bninspect.model import BN_CLASS_NAMES, BNLayer, ModelDescription

METADATA_FILE = "keras_metadata.pb"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# saved_model.pb of a real Keras model is a few MB of traced graphs; bigger is broken or hostile.
MAX_SAVED_MODEL_BYTES = 1 << 30


@dataclass(frozen=True)
class _KerasNode:
    """One Keras object of the SavedModel: where it sits in the object graph and its metadata."""

    node_path: str  # "root.layer_with_weights-2.layer_with_weights-1"
    identifier: str  # "_tf_keras_layer", "_tf_keras_network", ...
    metadata: dict


def read_savedmodel(source: str) -> ModelDescription:
    directory = Path(source)
    tf = _import_tensorflow()

    try:
        reader = tf.train.load_checkpoint(str(directory / "variables" / "variables"))
        checkpoint = _CheckpointObjects(reader)
        nodes = _keras_nodes(directory)
        if not nodes:
            return _read_without_metadata(source, checkpoint)
        return _read_with_metadata(source, nodes, checkpoint)
    except tf.errors.OpError as error:
        # Missing, truncated or corrupt checkpoint files (NotFound, DataLoss, ...).
        raise ConfigError(f"SavedModel variables cannot be read ({_first_line(error)})") from None


def _import_tensorflow() -> Any:
    """TensorFlow, imported without its start-up lines and with oneDNN on unless the user set
    TF_ENABLE_ONEDNN_OPTS (`bninspect.tf_runtime`). Keras is not needed to read the directory."""
    from bninspect.tf_runtime import import_tensorflow

    return import_tensorflow(quiet=True, keras=False, needed_for="reading a SavedModel directory")


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]


# --- Keras metadata ------------------------------------------------------------------------


def _keras_nodes(directory: Path) -> list[_KerasNode]:
    metadata_file = directory / METADATA_FILE
    if metadata_file.is_file():
        raw = _read_bounded(metadata_file, MAX_CONFIG_BYTES * 4)
        return _nodes_from_saved_metadata(raw)
    return _nodes_from_saved_model_pb(directory / "saved_model.pb")


def _read_bounded(path: Path, limit: int) -> bytes:
    if path.stat().st_size > limit:
        raise ConfigError(f"{path.name} is {path.stat().st_size} bytes, more than the {limit} bytes it may have")
    return path.read_bytes()


def _nodes_from_saved_metadata(raw: bytes) -> list[_KerasNode]:
    """Decode `SavedMetadata { repeated SavedObject nodes = 1; }` where
    `SavedObject { int32 node_id = 2; string node_path = 3; string identifier = 4; string metadata = 5; }`.

    Decoded by hand so that reading does not need tf-keras' generated protobuf module.
    """
    nodes = []
    for number, value in _protobuf_fields(raw, METADATA_FILE):
        if number != 1 or not isinstance(value, bytes):
            continue
        fields = {n: v for n, v in _protobuf_fields(value, METADATA_FILE) if isinstance(v, bytes)}
        node = _keras_node(_text(fields.get(3)), _text(fields.get(4)), fields.get(5, b""))
        if node is not None:
            nodes.append(node)
    return nodes


def _nodes_from_saved_model_pb(saved_model_file: Path) -> list[_KerasNode]:
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString(_read_bounded(saved_model_file, MAX_SAVED_MODEL_BYTES))
    except Exception as error:  # protobuf's DecodeError has no stable import path across versions
        raise ConfigError(f"saved_model.pb is not a SavedModel protobuf ({_first_line(error)})") from None
    if not saved_model.meta_graphs:
        raise ConfigError("saved_model.pb holds no meta graph")
    objects = saved_model.meta_graphs[0].object_graph_def.nodes
    nodes = []
    for node_id, node_path in _node_paths(objects):
        user_object = objects[node_id].user_object if objects[node_id].HasField("user_object") else None
        if user_object is not None and user_object.metadata:
            node = _keras_node(node_path, user_object.identifier, user_object.metadata.encode("utf-8"))
            if node is not None:
                nodes.append(node)
    return nodes


def _node_paths(objects: Any) -> Iterator[tuple[int, str]]:
    """Breadth first from the root, as TensorFlow assigns paths: the first path to a node wins."""
    seen = {0}
    queue = [(0, "root")]
    for node_id, path in queue:
        yield node_id, path
        for child in objects[node_id].children:
            if child.node_id not in seen and 0 <= child.node_id < len(objects):
                seen.add(child.node_id)
                queue.append((child.node_id, f"{path}.{child.local_name}"))


def _keras_node(node_path: str, identifier: str, metadata: bytes) -> _KerasNode | None:
    if not identifier.startswith("_tf_keras") or not metadata or not node_path:
        return None
    parsed = parse_json_config(metadata, f"Keras metadata of {node_path}")
    if not isinstance(parsed, dict):
        raise ConfigError(f"Keras metadata of {node_path} is not a JSON object")
    return _KerasNode(node_path, identifier, _plain_json(parsed))


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if value else ""


def _plain_json(value: Any) -> Any:
    """tf.keras' SavedModel JSON writes tuples and shapes as {"class_name": "__tuple__", "items": [...]}
    (or "TensorShape"); the config parser, like Keras' own .h5 config, expects plain lists."""
    if isinstance(value, dict):
        if value.get("class_name") in ("__tuple__", "TensorShape") and isinstance(value.get("items"), list):
            return [_plain_json(item) for item in value["items"]]
        return {key: _plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_json(item) for item in value]
    return value


def _protobuf_fields(data: bytes, what: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of one protobuf message: ints for varint/fixed fields, bytes for
    length-delimited ones (strings and sub-messages)."""
    position = 0
    end = len(data)
    while position < end:
        key, position = _varint(data, position, what)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position, what)
        elif wire_type == 1:
            value, position = int.from_bytes(data[position:position + 8], "little"), position + 8
        elif wire_type == 2:
            length, position = _varint(data, position, what)
            value, position = data[position:position + length], position + length
        elif wire_type == 5:
            value, position = int.from_bytes(data[position:position + 4], "little"), position + 4
        else:
            raise ConfigError(f"{what} is not a valid protobuf (wire type {wire_type})")
        if position > end:
            raise ConfigError(f"{what} is truncated")
        yield number, value


def _varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ConfigError(f"{what} is truncated or not a protobuf")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position


# --- checkpoint ----------------------------------------------------------------------------


STEP_COUNT_CHILDREN = ("_iterations", "iter", "iterations")


class _CheckpointObjects:
    """The checkpoint's object graph: walk it by local names, read a variable child's value."""

    def __init__(self, reader: Any):
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        self._reader = reader
        if not reader.has_tensor(OBJECT_GRAPH_KEY):
            raise ConfigError("SavedModel checkpoint has no object graph")
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        serialized = self._tensor(OBJECT_GRAPH_KEY)
        try:
            graph.ParseFromString(serialized)
        except Exception as error:  # protobuf's DecodeError has no stable import path
            raise ConfigError(f"SavedModel checkpoint object graph is malformed ({_first_line(error)})") from None
        self._nodes = graph.nodes
        if not self._nodes:
            raise ConfigError("SavedModel checkpoint object graph is empty")

    def find(self, node_path: str) -> int | None:
        """The node id at `root.a.b`, or None."""
        node_id = 0
        for local_name in node_path.split(".")[1:]:
            children = {child.local_name: child.node_id for child in self._nodes[node_id].children}
            node_id = children.get(local_name, -1)
            if not 0 <= node_id < len(self._nodes):
                return None
        return node_id

    def variable_children(self, node_id: int) -> dict[str, tuple[np.ndarray, str]]:
        """The values of the node's children that are saved variables, by local name."""
        values = {}
        for child in self._nodes[node_id].children:
            if child.local_name in BN_ARRAY_NAMES and 0 <= child.node_id < len(self._nodes):
                key = self._variable_key(child.node_id)
                if key is not None:
                    values[child.local_name] = self.read(key, child.local_name)
        return values

    def variables(self) -> Iterator[tuple[str, str]]:
        """(full variable name, checkpoint key) of every saved variable."""
        for node in self._nodes:
            for attribute in node.attributes:
                if attribute.name == "VARIABLE_VALUE" and attribute.full_name:
                    yield attribute.full_name, attribute.checkpoint_key

    def read(self, key: str, what: str) -> tuple[np.ndarray, str]:
        shape = self._reader.get_variable_to_shape_map().get(key)
        if shape is None:
            raise ConfigError(f"checkpoint has no tensor {key!r} for {what}")
        if len(shape) != 1:
            raise ConfigError(f"{what} has shape {tuple(shape)}, expected one value per channel")
        if shape[0] > MAX_CHANNELS:
            raise ConfigError(f"{what} has {shape[0]} channels, more than {MAX_CHANNELS}")
        value = np.asarray(self._tensor(key))
        if value.dtype.kind not in "fiu":
            raise ConfigError(f"{what} has dtype {value.dtype}, expected floating point")
        return value.astype(np.float64), str(value.dtype)

    def step_count(self) -> int | None:
        """The optimizer's step counter: tf.keras 2.11+ `optimizer._iterations`, the legacy
        optimizers' `optimizer.iter`. None without an optimizer (`include_optimizer=False`)."""
        for local_name in STEP_COUNT_CHILDREN:
            node_id = self.find(f"root.optimizer.{local_name}")
            key = None if node_id is None else self._variable_key(node_id)
            if key is not None and self._reader.has_tensor(key):
                try:
                    return step_count_value(self._tensor(key))
                except ConfigError:
                    return None  # a damaged counter is no reason to refuse the model's BN layers
        return None

    def _tensor(self, key: str) -> Any:
        try:
            return self._reader.get_tensor(key)
        except (IndexError, RuntimeError, ValueError) as error:
            # TensorFlow translates a damaged data file (DataLoss: "Read less bytes than
            # requested") to these; OpErrors reach read_savedmodel's handler.
            raise ConfigError(f"SavedModel variables cannot be read ({_first_line(error)})") from None

    def _variable_key(self, node_id: int) -> str | None:
        for attribute in self._nodes[node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                return attribute.checkpoint_key
        return None


# --- description ---------------------------------------------------------------------------


def _layer_paths(nodes: list[_KerasNode]) -> dict[str, _KerasNode]:
    """Layer path (`inner/bn`, top model excluded) -> node, from the names along each node path."""
    name_at = {node.node_path: node.metadata.get("name") for node in nodes}
    paths = {}
    for node in nodes:
        if node.node_path == "root":
            continue
        parts = node.node_path.split(".")
        # Every prefix that is itself a Keras object is an enclosing layer or model; other
        # prefixes (list wrappers, `keras_api`) contribute nothing to the layer path.
        names = [name_at.get(".".join(parts[:end])) for end in range(2, len(parts) + 1)]
        if isinstance(node.metadata.get("name"), str):
            paths.setdefault("/".join(name for name in names if isinstance(name, str)), node)
    return paths


def _root_config(root: _KerasNode) -> dict | None:
    model_config = root.metadata.get("model_config")
    if isinstance(model_config, dict) and isinstance(model_config.get("config"), dict):
        return model_config
    config = root.metadata.get("config")
    if isinstance(config, dict) and isinstance(config.get("layers"), list):
        return {"class_name": root.metadata.get("class_name"), "config": config}
    return None


def _own_config(node: _KerasNode) -> dict | None:
    config = node.metadata.get("config")
    return config if isinstance(config, dict) else None


def _bn_from_node(path: str, node: _KerasNode, config: dict | None, checkpoint: _CheckpointObjects) -> BNLayer:
    node_id = checkpoint.find(node.node_path)
    if node_id is None:
        raise ConfigError(f"checkpoint has no object for BN layer {path!r} ({node.node_path})")
    class_name = str(node.metadata.get("class_name", "BatchNormalization"))
    return bn_layer(path, class_name, config, checkpoint.variable_children(node_id))


def _read_with_metadata(source: str, nodes: list[_KerasNode], checkpoint: _CheckpointObjects) -> ModelDescription:
    root = next((node for node in nodes if node.node_path == "root"), None)
    if root is None:
        raise ConfigError("Keras metadata has no root object")
    by_path = _layer_paths(nodes)
    model_config = _root_config(root)
    version = root.metadata.get("keras_version")
    backend = root.metadata.get("backend")
    common = dict(source=source, format="savedmodel",
                  keras_version=version if isinstance(version, str) else None,
                  backend=backend if isinstance(backend, str) else None)
    graph = None
    if model_config is not None:
        try:
            graph = parse_model_config(model_config)
        except NoGraphError:
            graph = None
    if graph is not None:
        bn_layers = []
        for layer in graph.layers:
            if layer.class_name in BN_CLASS_NAMES:
                if layer.path not in by_path:
                    raise ConfigError(f"Keras metadata has no object for BN layer {layer.path!r}")
                bn_layers.append(_bn_from_node(layer.path, by_path[layer.path], layer.config, checkpoint))
        listed = {bn.path for bn in bn_layers}
        # BN layers inside wrappers (TimeDistributed) and custom layers are not in the graph.
        bn_layers.extend(_bn_from_node(path, node, _own_config(node), checkpoint) for path, node in by_path.items()
                         if node.metadata.get("class_name") in BN_CLASS_NAMES and path not in listed)
        return ModelDescription(bn_layers=tuple(bn_layers), has_config=True, layers=graph.layers,
                                outputs=graph.outputs, training_steps=checkpoint.step_count(),
                                dtype_policy=dtype_policy_name(model_config["config"].get("dtype")), **common)
    # A subclassed model: no graph, but every layer's own config is in its metadata.
    bn_layers = [_bn_from_node(path, node, _own_config(node), checkpoint)
                 for path, node in by_path.items() if node.metadata.get("class_name") in BN_CLASS_NAMES]
    return ModelDescription(bn_layers=tuple(bn_layers), has_config=False,
                            notes=("subclassed model: the SavedModel has layer configs but no layer graph",),
                            **common)


def _read_without_metadata(source: str, checkpoint: _CheckpointObjects) -> ModelDescription:
    owners: dict[str, dict[str, str]] = {}
    for full_name, key in checkpoint.variables():
        stripped = full_name[:-2] if full_name.endswith(":0") else full_name
        owner, _, leaf = stripped.rpartition("/")
        if owner and leaf in BN_ARRAY_NAMES:
            owners.setdefault(owner, {}).setdefault(leaf, key)
    bn_owners = {owner: keys for owner, keys in owners.items() if {"moving_mean", "moving_variance"} <= keys.keys()}
    bn_layers = [bn_layer(owner, "BatchNormalization", None,
                          {leaf: checkpoint.read(key, f"{owner}/{leaf}") for leaf, key in keys.items()})
                 for owner, keys in sorted(bn_owners.items())]
    return ModelDescription(
        source=source, format="savedmodel", bn_layers=tuple(bn_layers), has_config=False,
        notes=("SavedModel has no Keras metadata: BN layers found by variable name, paths are variable scopes",),
    )
