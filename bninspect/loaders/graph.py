"""Turn a Keras model config (the `model_config` / `config.json` JSON) into flattened layers.

Understands the configs written by Keras 1 and 2 / tf.keras (inbound nodes as `[name, node, tensor,
kwargs]` lists; before Keras 2.2 a Sequential's config is the bare list of its layer configs) and by
Keras 3 (inbound nodes as `__keras_tensor__` dicts with a `keras_history`), for Functional, Model and
Sequential containers, nested to any depth. Only JSON is read: nothing is deserialised, so a
Lambda's code or a custom class is never touched.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator

from bninspect.model import CONTAINER_CLASS_NAMES, Layer


class ConfigError(ValueError):
    """The config is JSON but not a Keras model config this reader understands."""


class NoGraphError(ConfigError):
    """The model config has no layer list: a subclassed model, whose config is its constructor
    arguments. Loaders then read the weights the way they read a weights-only file."""


@dataclass(frozen=True)
class ParsedGraph:
    layers: tuple[Layer, ...]
    outputs: tuple[str, ...]
    # Per container path ("" for the top level): its direct children as (class_name, name),
    # in config order. The Keras 3 weights file keys its groups by this order.
    children: dict[str, tuple[tuple[str, str], ...]]

    @cached_property
    def _by_path(self) -> dict[str, Layer]:
        return {layer.path: layer for layer in self.layers}

    def path_names(self, path: str) -> list[str]:
        """The layer names from the top-level layer down to the layer at `path`.

        Not `path.split("/")`: a layer name may hold a "/" itself (tf-keras names DenseNet's layers
        `conv1/bn`), and a path is the names joined by "/"."""
        names: list[str] = []
        while path:
            layer = self._by_path.get(path)
            if layer is None or not path.endswith(layer.name):
                raise ConfigError(f"layer path {path!r} does not follow the model config")
            names.append(layer.name)
            path = path[:-len(layer.name)].removesuffix("/")
        return names[::-1]


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def parse_model_config(model_config: Any, top_level_names: list[str] | None = None) -> ParsedGraph:
    """The flattened graph of a model config.

    `top_level_names` are the model's layer names in order, from the weights of a legacy `.h5`
    file: before Keras 2.2 a Sequential nested in a Sequential was saved without a name, and Keras
    matched its weights by position.
    """
    if not isinstance(model_config, dict):
        raise ConfigError(f"model config is {_json_kind(model_config)}, not a JSON object with "
                          "'class_name' and 'config'")
    class_name = model_config.get("class_name")
    config = container_config(model_config)
    if config is None:
        raise ConfigError(f"model config of class {class_name!r} has a 'config' entry that is "
                          f"{_json_kind(model_config.get('config'))}: expected an object (or, for a "
                          "Sequential saved before Keras 2.2, a list of layer configs)")
    if class_name not in CONTAINER_CLASS_NAMES and "layers" not in config:
        # Keras only saves models. Read as a one-layer graph, a subclassed model's BN layers would
        # silently vanish (zero BN layers, a passing check).
        raise NoGraphError(f"the model config of {class_name!r} lists no layers (a subclassed model)")
    parser = _Parser(top_level_names)
    outputs = parser.container(model_config, prefix="", outer_inputs=None)
    return ParsedGraph(tuple(parser.layers), tuple(outputs), parser.children)


def container_config(entry: dict) -> dict | None:
    """A container's config in the Keras 2.2+ form (`{"name": ..., "layers": [...]}`). Keras 1
    to 2.1 wrote a Sequential's config as the bare list of its layer configs."""
    config = entry.get("config")
    if isinstance(config, list) and entry.get("class_name") == "Sequential":
        return {"name": entry.get("name"), "layers": config}
    return config if isinstance(config, dict) else None


def dtype_policy_name(dtype: Any) -> str | None:
    """The policy name of a layer's `dtype` config entry, in Keras 2 or Keras 3 form."""
    if isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            return inner["name"]
    return None


def _layer_name(entry: dict) -> str:
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    name = entry.get("name") or config.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {entry.get('class_name', 'layer')} entry has no name")
    return name


def _has_name(entry: dict) -> bool:
    config = entry.get("config")
    return bool(entry.get("name") or (isinstance(config, dict) and config.get("name")))


def _call_training(inbound_nodes: Any) -> tuple[bool | None, ...]:
    """Per inbound node (one call of the layer), the `training` argument of that call or None.

    Keras 3 writes a node as `{"args": [...], "kwargs": {"training": false}}`, Keras 2 as a list of
    `[name, node, tensor, kwargs]` references, the call's keyword arguments in each."""
    if not isinstance(inbound_nodes, list):
        return ()
    values: list[bool | None] = []
    for node in inbound_nodes:
        value = None
        if isinstance(node, dict) and isinstance(node.get("kwargs"), dict):
            value = node["kwargs"].get("training")
        elif isinstance(node, list):
            for ref in node:
                if isinstance(ref, list) and len(ref) > 3 and isinstance(ref[3], dict) and "training" in ref[3]:
                    value = ref[3]["training"]
        values.append(value if isinstance(value, bool) else None)
    return tuple(values)


def _shape(value: Any) -> tuple[int | None, ...] | None:
    if isinstance(value, list) and all(v is None or isinstance(v, int) for v in value):
        return tuple(value)
    return None


def _input_shape(entry: dict) -> tuple[int | None, ...] | None:
    build = entry.get("build_config")
    if isinstance(build, dict):
        shape = _shape(build.get("input_shape"))
        if shape is not None:
            return shape
    config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
    for key in ("batch_shape", "batch_input_shape"):
        shape = _shape(config.get(key))
        if shape is not None:
            return shape
    for tensor in _keras_tensors(entry.get("inbound_nodes")):
        shape = _shape(tensor.get("shape"))
        if shape is not None:
            return shape
    return None


def _keras_tensors(node: Any) -> Iterator[dict]:
    """Keras 3 `__keras_tensor__` configs anywhere inside an inbound-nodes structure."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__" and isinstance(node.get("config"), dict):
            yield node["config"]
            return
        for value in node.values():
            yield from _keras_tensors(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keras_tensors(value)


def _history_refs(node: Any) -> Iterator[tuple[str, int]]:
    """(layer name, tensor index) of every tensor an inbound-nodes structure refers to."""
    if isinstance(node, dict):
        if node.get("class_name") == "__keras_tensor__" and isinstance(node.get("config"), dict):
            history = node["config"].get("keras_history")
            if isinstance(history, list) and len(history) >= 3 and isinstance(history[0], str):
                yield history[0], history[2] if isinstance(history[2], int) else 0
            return
        for value in node.values():
            yield from _history_refs(value)
    elif isinstance(node, list):
        # Keras 2 form: [name, node_index, tensor_index, kwargs]
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int) and isinstance(node[2], int):
            yield node[0], node[2]
            if len(node) > 3:
                yield from _history_refs(node[3])
            return
        for value in node:
            yield from _history_refs(value)


def _io_refs(value: Any) -> list[tuple[str, int]]:
    """`input_layers` / `output_layers`: `[name, 0, 0]` or a list of those (or a dict of them)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str):
        return [(value[0], value[2] if isinstance(value[2], int) else 0)]
    refs: list[tuple[str, int]] = []
    if isinstance(value, list):
        for item in value:
            refs.extend(_io_refs(item))
    return refs


def _unique(paths: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(paths))


# The deepest real models list a thousand or two layers; each costs tens of microseconds to read and
# check, so a config of a few hundred KB listing millions would take minutes.
MAX_LAYERS = 20_000


class _Parser:
    def __init__(self, top_level_names: list[str] | None = None) -> None:
        self.layers: list[Layer] = []
        self.children: dict[str, tuple[tuple[str, str], ...]] = {}
        self._paths: set[str] = set()
        self._top_level_names = top_level_names

    def add(self, layer: Layer) -> None:
        if len(self.layers) >= MAX_LAYERS:
            raise ConfigError(f"the config lists more than {MAX_LAYERS:,} layers, more than any real model: "
                              "refusing to read it")
        if layer.path in self._paths:
            raise ConfigError(f"two layers are named {layer.path!r}")
        self._paths.add(layer.path)
        self.layers.append(layer)

    def container(self, entry: dict, prefix: str, outer_inputs: list[str] | None) -> list[str]:
        config = container_config(entry)
        if config is None or not isinstance(config.get("layers"), list):
            found = _json_kind(config.get("layers")) if config is not None else _json_kind(entry.get("config"))
            raise ConfigError(f"container {prefix or 'model'!r} ({entry.get('class_name')}) has no layer list "
                              f"(its {'layers' if config is not None else 'config'} entry is {found})")
        entries = config["layers"]
        if not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"container {prefix or 'model'!r} has a layer entry that is not an object")
        if not prefix:
            entries = self._named_by_position(entries)
        container_path = prefix.rstrip("/")
        if entry.get("class_name") == "Sequential":
            outputs = self._sequential(entries, prefix, outer_inputs)
            # Keras' Sequential.layers leaves out the InputLayer, and so do its weight keys.
            kept = [e for e in entries if e.get("class_name") != "InputLayer"]
        else:
            outputs = self._functional(config, entries, prefix, outer_inputs)
            kept = entries
        self.children[container_path] = tuple((str(e.get("class_name")), _layer_name(e)) for e in kept)
        return outputs

    def _named_by_position(self, entries: list[dict]) -> list[dict]:
        """Top-level entries with the names of the weights file where the config has none (a
        Sequential nested in a Sequential before Keras 2.2), when the two lists line up."""
        names = self._top_level_names
        layer_entries = [e for e in entries if e.get("class_name") != "InputLayer"]
        if not names or len(layer_entries) != len(names) or all(_has_name(e) for e in layer_entries):
            return entries
        by_position = iter(names)
        named = []
        for entry in entries:
            if entry.get("class_name") != "InputLayer":
                name = next(by_position)
                entry = entry if _has_name(entry) else {**entry, "name": name}
            named.append(entry)
        return named

    def _leaf_or_container(self, entry: dict, prefix: str, inbound: list[str]) -> list[str]:
        """Add one layer entry; return the paths that stand for its outputs."""
        name = _layer_name(entry)
        path = prefix + name
        class_name = str(entry.get("class_name"))
        config = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        module = entry.get("module")
        registered_name = entry.get("registered_name")
        self.add(Layer(path=path, name=name, class_name=class_name, config=config,
                       inbound=_unique(inbound), input_shape=_input_shape(entry),
                       module=module if isinstance(module, str) else None,
                       registered_name=registered_name if isinstance(registered_name, str) else None,
                       call_training=_call_training(entry.get("inbound_nodes"))))
        # Keras 1's Merge of Sequential branches also has a layer list; it is no container Keras 2+
        # can read, and reading it as one would invent a graph.
        if class_name in CONTAINER_CLASS_NAMES or (isinstance(config.get("layers"), list) and class_name != "Merge"):
            return self.container(entry, path + "/", inbound)
        return [path]

    def _sequential(self, entries: list[dict], prefix: str, outer_inputs: list[str] | None) -> list[str]:
        previous = list(outer_inputs or [])
        for index, entry in enumerate(entries):
            if entry.get("class_name") == "InputLayer" and index == 0:
                if outer_inputs is None:
                    previous = self._leaf_or_container(entry, prefix, [])
                continue
            previous = self._leaf_or_container(entry, prefix, previous)
        return previous

    def _functional(self, config: dict, entries: list[dict], prefix: str,
                    outer_inputs: list[str] | None) -> list[str]:
        input_names = [name for name, _ in _io_refs(config.get("input_layers"))]
        produced: dict[str, list[str]] = {}
        for entry in entries:
            name = _layer_name(entry)
            if entry.get("class_name") == "InputLayer" and outer_inputs is not None:
                # Inside a nested model an input stands for whatever feeds the model from outside.
                position = input_names.index(name) if name in input_names else 0
                produced[name] = [outer_inputs[position]] if position < len(outer_inputs) else list(outer_inputs)
                continue
            inbound: list[str] = []
            for ref_name, tensor_index in _history_refs(entry.get("inbound_nodes")):
                if ref_name not in produced:
                    raise ConfigError(f"layer {prefix + name!r} is fed by unknown layer {ref_name!r}")
                sources = produced[ref_name]
                inbound.append(sources[tensor_index] if tensor_index < len(sources) else sources[-1])
            produced[name] = self._leaf_or_container(entry, prefix, inbound)
        outputs: list[str] = []
        for name, tensor_index in _io_refs(config.get("output_layers")):
            if name not in produced:
                raise ConfigError(f"model output names unknown layer {prefix + name!r}")
            sources = produced[name]
            outputs.append(sources[tensor_index] if tensor_index < len(sources) else sources[-1])
        return outputs
