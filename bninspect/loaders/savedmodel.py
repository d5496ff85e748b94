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
  first path that reaches it, which for nested models is often `variables/7`. The object-graph
  code is shared with the TF checkpoint reader (`loaders.tf_objects`).

Loading with `tf_keras.models.load_model` would be simpler but would revive Lambda layers and
traced functions, needs tf-keras (not a runtime dependency), and is slow. TensorFlow itself is
imported, which SPEC allows for this format only.

A SavedModel without any Keras metadata (Keras 3 `model.export()`, `tf.saved_model.save`) is read
weights-only: BN layers are recognised by variables named `.../moving_mean` and `.../moving_variance`.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from bninspect.errors import one_line
from bninspect.loaders.common import (MAX_CONFIG_BYTES, architecture_notes, bn_layer, code_architecture,
                                      parse_json_config)
from bninspect.loaders.graph import ConfigError, NoGraphError, dtype_policy_name, parse_model_config
from bninspect.loaders.hdf5_input import read_regular
from bninspect.loaders.tf_objects import (CheckpointObjects, breadth_first, bn_variable_groups,
                                          open_reader)
from bninspect.model import BN_CLASS_NAMES, BNLayer, ModelDescription

METADATA_FILE = "keras_metadata.pb"
# saved_model.pb of a real Keras model is a few MB of traced graphs; bigger is broken or hostile.
MAX_SAVED_MODEL_BYTES = 1 << 30


@dataclass(frozen=True)
class _KerasNode:
    """One Keras object of the SavedModel: where it sits in the object graph and its metadata."""

    node_path: str  # "root.layer_with_weights-2.layer_with_weights-1"
    identifier: str  # "_tf_keras_layer", "_tf_keras_network", ...
    metadata: dict


CHECKPOINT_WHAT = "SavedModel variables"


def read_savedmodel(source: str) -> ModelDescription:
    directory = Path(source)
    reader = open_reader(str(directory / "variables" / "variables"), CHECKPOINT_WHAT)
    # Every tensor read goes through CheckpointObjects, which turns TensorFlow's errors into ours.
    checkpoint = CheckpointObjects(reader, CHECKPOINT_WHAT)
    nodes = _keras_nodes(directory)
    if not nodes:
        return _read_without_metadata(source, checkpoint)
    return _read_with_metadata(source, nodes, checkpoint)


# --- Keras metadata ------------------------------------------------------------------------


def _keras_nodes(directory: Path) -> list[_KerasNode]:
    metadata_file = directory / METADATA_FILE
    if metadata_file.is_file():
        raw = _read_bounded(metadata_file, MAX_CONFIG_BYTES * 4)
        return _nodes_from_saved_metadata(raw)
    return _nodes_from_saved_model_pb(directory / "saved_model.pb")


def _read_bounded(path: Path, limit: int) -> bytes:
    raw = read_regular(path, limit)
    if len(raw) > limit:
        raise ConfigError(f"{path.name} is more than the {limit} bytes it may have")
    return raw


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
        raise ConfigError(f"saved_model.pb is not a SavedModel protobuf ({one_line(error)})") from None
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
    def children(node_id: int) -> Iterator[tuple[str, int]]:
        return ((child.local_name, child.node_id) for child in objects[node_id].children)

    for node_id, edges in breadth_first(children, len(objects)):
        yield node_id, ".".join(("root", *edges))


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


def _bn_from_node(path: str, node: _KerasNode, config: dict | None, checkpoint: CheckpointObjects) -> BNLayer:
    node_id = checkpoint.find(node.node_path)
    if node_id is None:
        raise ConfigError(f"checkpoint has no object for BN layer {path!r} ({node.node_path})")
    class_name = str(node.metadata.get("class_name", "BatchNormalization"))
    return bn_layer(path, class_name, config, checkpoint.variable_children(node_id))


def _read_with_metadata(source: str, nodes: list[_KerasNode], checkpoint: CheckpointObjects) -> ModelDescription:
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
    architecture = replace(code_architecture(root.metadata), functional=_graph_network(root.metadata))
    notes = (f"the architecture is code (class {architecture.qualified_name}): the SavedModel has the layer "
             "configs but no layer graph",) + architecture_notes(architecture)
    # The model's own dtype policy too, so that --build has nothing left to add
    # (ModelDescription.nothing_to_build).
    return ModelDescription(bn_layers=tuple(bn_layers), has_config=False, notes=notes, architecture=architecture,
                            training_steps=checkpoint.step_count(),
                            dtype_policy=dtype_policy_name(root.metadata.get("dtype")), **common)


def _graph_network(metadata: dict) -> bool | None:
    """Whether tf-keras saved the model as a graph network (Functional), from the root's
    `is_graph_network`; None when the metadata does not say (TF 2.0-2.4 may not)."""
    value = metadata.get("is_graph_network")
    return value if isinstance(value, bool) else None


def _read_without_metadata(source: str, checkpoint: CheckpointObjects) -> ModelDescription:
    bn_layers = [bn_layer(owner, "BatchNormalization", None,
                          {leaf: checkpoint.read(key, f"{owner}/{leaf}") for leaf, key in keys.items()})
                 for owner, keys in bn_variable_groups(checkpoint.variables()).items()]
    return ModelDescription(
        source=source, format="savedmodel", bn_layers=tuple(bn_layers), has_config=False,
        notes=("SavedModel has no Keras metadata: BN layers found by variable name, paths are variable scopes",),
    )
