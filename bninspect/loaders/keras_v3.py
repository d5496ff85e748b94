"""Keras 3 files: `.keras` zip archives and `.weights.h5` weights files.

The weights tree is `layers/<key>/vars/<i>` with nested models as `layers/<key>/layers/<key>/...`.
Keys are the snake_case class name with `_1`, `_2`, ... for repeats, counted per container in
layer order. Newer Keras also writes the layer name as the `name` attribute of each `vars` group;
older archives do not, so we derive the keys from `config.json` the way Keras does when saving.
A BN layer's variables are, in order: gamma (if scale), beta (if center), moving_mean, moving_variance.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
import zipfile
from typing import Any, BinaryIO

import h5py

from bninspect.loaders.common import (MAX_CONFIG_BYTES, architecture_notes, attr_text, bn_layer, code_architecture,
                                      may_hold_unlisted_bn, parse_json_config, read_step_count, read_vector,
                                      refuse_link_leaving)
from bninspect.loaders.graph import ConfigError, NoGraphError, ParsedGraph, dtype_policy_name, parse_model_config
from bninspect.loaders.hdf5_input import RangeFile, archive_reader, data_offset, expand_member, open_member, stored_member
from bninspect.model import BN_CLASS_NAMES, Architecture, BNLayer, ModelDescription

WEIGHTS_MEMBER = "model.weights.h5"


def snake_case(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case, which names the weight groups."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _container_keys(children: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Layer name -> weight-group key for the direct children of one container."""
    used: dict[str, int] = {}
    keys = {}
    for class_name, name in children:
        base = snake_case(class_name)
        count = used.get(base, 0)
        used[base] = count + 1
        keys[name] = base if count == 0 else f"{base}_{count}"
    return keys


def _layer_group_for(root: Any, graph: ParsedGraph, path: str, cache: dict) -> Any:
    """The weights group of the layer at `path`, walking container by container."""
    group = root
    parts = graph.path_names(path)
    for depth, name in enumerate(parts):
        container = "/".join(parts[:depth])
        if depth == 0:  # the model's own `layers` group, looked up once per file
            if "root layers" not in cache:
                cache["root layers"] = root.get("layers") if hasattr(root, "get") else None
            layers = cache["root layers"]
        else:
            layers = group.get("layers") if hasattr(group, "get") else None
        if layers is None:
            raise ConfigError(f"weights file has no 'layers' group for {container or 'the model'!r}")
        child = _child_named(layers, name, graph.children.get(container, ()), cache)
        if child is None:
            raise ConfigError(f"weights file has no group for layer {path!r}")
        group = child
    return group


def _child_named(layers: Any, name: str, children: tuple[tuple[str, str], ...], cache: dict) -> Any:
    """The group of layer `name` in a `layers` group.

    First the key Keras derives from the config; it is right unless the `name` attribute (newer
    Keras) says otherwise. Only then are the `name` attributes of all groups indexed: reading them
    all for every layer would make files with thousands of layers slow. `cache` keeps both maps
    per `layers` group.
    """
    layers_name = layers.name
    if ("keys", layers_name) not in cache:
        cache["keys", layers_name] = _container_keys(children)
    key = cache["keys", layers_name].get(name)
    child = layers.get(key) if key else None
    if isinstance(child, h5py.Group):
        name_attr, vars_group = _name_and_vars(child)
        if name_attr in (name, None):
            # `_vars_group_for` asks for this vars group next: spare it a second lookup.
            cache["last vars"] = (child, vars_group)
            return child
    if ("names", layers_name) not in cache:
        cache["names", layers_name] = _keys_by_name_attr(layers)
    key = cache["names", layers_name].get(name)
    return layers.get(key) if key else None


def _name_and_vars(layer_group: Any) -> tuple[str | None, Any]:
    """The `name` attribute of a layer group's `vars` group, and that group (None, None without)."""
    refuse_link_leaving(layer_group, "vars", f"{layer_group.name}/vars")
    vars_group = layer_group.get("vars")
    if isinstance(vars_group, h5py.Group):
        return attr_text(vars_group.attrs.get("name")), vars_group
    return None, None


def _name_attr(layer_group: Any) -> str | None:
    return _name_and_vars(layer_group)[0]


def _vars_group_for(root: Any, graph: ParsedGraph, path: str, cache: dict) -> Any:
    group = _layer_group_for(root, graph, path, cache)
    last = cache.pop("last vars", None)
    if last is not None and last[0] is group and last[1] is not None:
        return last[1]
    if "vars" not in group:
        raise ConfigError(f"weights group of layer {path!r} has no 'vars'")
    return group["vars"]


def _keys_by_name_attr(layers: Any) -> dict[str, str]:
    keys: dict[str, str] = {}
    for key, child in _child_groups(layers):
        name = _name_attr(child)
        if name is not None:
            keys.setdefault(name, key)
    return keys


def _bn_arrays(vars_group: Any, center: bool | None, scale: bool | None, where: str,
               raw: BinaryIO | None) -> dict[str, tuple]:
    count = len(vars_group)
    if center is None or scale is None:
        # Without a config, 4 variables are all of them and 2 are the moving statistics; with 3 we
        # cannot tell gamma from beta, so we keep only what is certain.
        names = {4: ["gamma", "beta", "moving_mean", "moving_variance"],
                 3: [None, "moving_mean", "moving_variance"],
                 2: ["moving_mean", "moving_variance"]}.get(count)
    else:
        names = (["gamma"] if scale else []) + (["beta"] if center else []) + ["moving_mean", "moving_variance"]
    if names is None or len(names) != count:
        raise ConfigError(f"{where} holds {count} variables, which does not fit a BatchNormalization layer")
    arrays = {}
    group_path = vars_group.name
    for index, name in enumerate(names):
        if name is None:
            continue
        arrays[name] = read_vector(vars_group, str(index), f"{where}/{index}", raw, group_path)
    return arrays


# Keras 3 saves the optimizer's variables in order, `iterations` first.
OPTIMIZER_ITERATIONS = "optimizer/vars/0"


def read_weights_tree(source: str, root: Any, graph: ParsedGraph | None, fmt: str,
                      keras_version: str | None = None, dtype_policy: str | None = None,
                      raw: BinaryIO | None = None, notes: tuple[str, ...] = (),
                      architecture: Architecture | None = None) -> ModelDescription:
    """Read the BN layers of a Keras 3 weights tree; with `graph` from config.json when there is one.

    Without a graph, `architecture` says what the file holds instead: code (a class from
    config.json) or nothing (a `.weights.h5`, the default). The optimizer's step count is read
    either way: the weights tree stores it whatever the config.
    """
    bn_layers: list[BNLayer] = []
    training_steps = read_step_count(root, OPTIMIZER_ITERATIONS)
    if graph is not None:
        cache: dict = {}
        for layer in graph.layers:
            if may_hold_unlisted_bn(layer):
                wrapper = _layer_group_for(root, graph, layer.path, cache)
                bn_layers.extend(_unlisted_bn_layers(wrapper, layer, raw))
            if layer.class_name not in BN_CLASS_NAMES:
                continue
            vars_group = _vars_group_for(root, graph, layer.path, cache)
            arrays = _bn_arrays(vars_group, layer.config.get("center", True), layer.config.get("scale", True),
                                f"weights of {layer.path}", raw)
            bn_layers.append(bn_layer(layer.path, layer.class_name, layer.config, arrays))
        return ModelDescription(
            source=source, format=fmt, bn_layers=tuple(bn_layers), keras_version=keras_version,
            has_config=True, layers=graph.layers, outputs=graph.outputs, dtype_policy=dtype_policy,
            training_steps=training_steps,
        )
    return ModelDescription(source=source, format=fmt, bn_layers=tuple(bn_layers_without_config(root, raw)),
                            keras_version=keras_version, has_config=False, notes=notes,
                            training_steps=training_steps, architecture=architecture, dtype_policy=dtype_policy)


def bn_layers_without_config(root: Any, raw: BinaryIO | None, prefix: str = "") -> list[BNLayer]:
    """The BN layers of a weights tree found without a graph (`_walk_bn_groups`), their configs unknown."""
    return [bn_layer(path, "BatchNormalization", None, _bn_arrays(vars_group, None, None, f"weights of {path}", raw))
            for path, vars_group in _walk_bn_groups(root, prefix=prefix)]


def _unlisted_bn_layers(group: Any, layer: Any, raw: BinaryIO | None) -> list[BNLayer]:
    """BN layers inside a TimeDistributed wrapper or a custom layer, which the graph does not list.

    A wrapped BN layer has its config in the wrapper's `layer` entry and its weights in the
    wrapper's `layer` group. Inside custom layers BN layers are recognised as in a subclassed model.
    """
    wrapped = layer.config.get("layer")
    if isinstance(wrapped, dict) and wrapped.get("class_name") in BN_CLASS_NAMES \
            and isinstance(wrapped.get("config"), dict):
        config = wrapped["config"]
        path = f"{layer.path}/{config.get('name', 'layer')}"
        inner = group.get("layer")
        vars_group = inner.get("vars") if isinstance(inner, h5py.Group) else None
        if not isinstance(vars_group, h5py.Group):
            raise ConfigError(f"weights group of layer {layer.path!r} has no variables for the layer it wraps")
        arrays = _bn_arrays(vars_group, config.get("center", True), config.get("scale", True),
                            f"weights of {path}", raw)
        return [bn_layer(path, str(wrapped["class_name"]), config, arrays)]
    return bn_layers_without_config(group, raw, prefix=layer.path + "/")


# Keys Keras gives BN layers in a `layers` group (derived from the class name, so reliable).
BN_KEY = re.compile(r"(sync_)?batch_normalization(_\d+)?")
# Layer names that say BN: `bn`, `bn1`, `stem_bn`, `BatchNorm`, not `subnet`.
BN_NAME = re.compile(r"(^|[^a-z])(bn|batch_?norm)", re.IGNORECASE)
# Top-level groups of a weights file that hold no layers.
NOT_LAYER_GROUPS = frozenset({"vars", "layers", "optimizer"})
MAX_NESTING = 64


def _walk_bn_groups(group: Any, prefix: str, depth: int = 0, visited: set | None = None):
    """Without a config, a BN layer under `layers` is recognised by its key (`batch_normalization[_N]`).

    A subclassed model keeps its layers in groups named after its attributes (`bn`, `block`) instead,
    with no class information anywhere: those count as BN layers when their name says so and their
    variables look like BN's (2 to 4 vectors of one length).

    Each group is visited once (`visited`): hard links can make a tiny file a chain of diamonds
    with 2^40 paths through it.
    """
    if depth > MAX_NESTING:
        raise ConfigError(f"weights file nests layers more than {MAX_NESTING} deep")
    visited = set() if visited is None else visited
    for key, child, keyed_by_class in _layer_groups(group):
        if child.id in visited:
            continue
        visited.add(child.id)
        refuse_link_leaving(child, "vars", f"{child.name}/vars")
        vars_group = child.get("vars")
        vars_group = vars_group if isinstance(vars_group, h5py.Group) else None
        name = (attr_text(vars_group.attrs.get("name")) if vars_group is not None else None) or key
        if vars_group is not None and (BN_KEY.fullmatch(key) if keyed_by_class
                                       else BN_NAME.search(name) and _bn_shaped(vars_group)):
            yield prefix + name, vars_group
        else:
            yield from _walk_bn_groups(child, prefix + name + "/", depth + 1, visited)


def _layer_groups(group: Any):
    """(key, group, keyed by class name) of the layers directly inside `group`."""
    refuse_link_leaving(group, "layers", f"{group.name}/layers")
    layers = group.get("layers")
    if isinstance(layers, h5py.Group):
        for key, child in _child_groups(layers):
            yield key, child, True
    for key, child in _child_groups(group):
        if key not in NOT_LAYER_GROUPS:
            yield key, child, False


def _child_groups(group: Any):
    """(key, group) of the groups directly inside `group`, refusing external links among them."""
    for key in group:
        refuse_link_leaving(group, key, f"{group.name.rstrip('/')}/{key}")
        child = group.get(key)
        if isinstance(child, h5py.Group):
            yield key, child


def _bn_shaped(vars_group: Any) -> bool:
    if len(vars_group) > 4:
        return False
    shapes = [getattr(vars_group.get(key), "shape", None) for key in vars_group]
    return 2 <= len(shapes) <= 4 and all(shape is not None and len(shape) == 1 for shape in shapes) \
        and len({shape[0] for shape in shapes}) == 1


def read_keras_archive(source: str, remote: Any = None) -> ModelDescription:
    """`remote`: a loaders.remote.RemoteFile when the archive is at a URL. Only the zip directory,
    config.json, metadata.json and the ranges of model.weights.h5 that hold metadata and BN arrays
    are then fetched: Keras stores the weights member uncompressed."""
    try:
        archive = zipfile.ZipFile(source if remote is None else RangeFile(remote.read_at, remote.size))
    except zipfile.BadZipFile:
        raise ConfigError("not a valid zip archive (a .keras file is a zip)") from None
    with archive:
        names = set(archive.namelist())
        if "config.json" not in names:
            raise ConfigError("the .keras archive has no config.json")
        raw_config = _read_member(archive, "config.json")
        config = parse_json_config(raw_config, "config.json")
        keras_version = None
        if "metadata.json" in names:
            metadata = parse_json_config(_read_member(archive, "metadata.json"), "metadata.json")
            if isinstance(metadata, dict) and isinstance(metadata.get("keras_version"), str):
                keras_version = metadata["keras_version"]
        notes: tuple[str, ...] = ()
        architecture = None
        try:
            graph: ParsedGraph | None = parse_model_config(config)
        except NoGraphError:
            graph, architecture = None, code_architecture(config)
            notes = (f"the architecture is code (class {architecture.qualified_name}): BN layers are read from "
                     "the weights, without their config",) + architecture_notes(architecture)
        if WEIGHTS_MEMBER not in names:
            raise ConfigError(f"the .keras archive has no {WEIGHTS_MEMBER}")
        policy = dtype_policy_name(config["config"].get("dtype"))
        if remote is not None:
            return _read_remote_weights(archive, remote, source, graph, keras_version, policy, notes, architecture)
        with open_member(archive, source, WEIGHTS_MEMBER) as (member, raw), h5py.File(member, "r") as weights:
            return read_weights_tree(source, weights, graph, "keras-v3", keras_version, policy, notes=notes,
                                     architecture=architecture, raw=raw)


def _read_remote_weights(archive: zipfile.ZipFile, remote: Any, source: str, graph: ParsedGraph | None,
                         keras_version: str | None, policy: str | None, notes: tuple[str, ...],
                         architecture: Architecture | None) -> ModelDescription:
    from bninspect.loaders.remote import NoRangeSupport, hdf5_in

    stored = stored_member(archive, WEIGHTS_MEMBER)
    if stored is None:
        info = archive.getinfo(WEIGHTS_MEMBER)
        # A compressed member can only be read from its start to the end: all of it.
        raise NoRangeSupport(f"{WEIGHTS_MEMBER} is compressed in the archive, so it cannot be read by ranges; "
                             f"pass --download to fetch the whole file ({remote.size:,} bytes)"
                             f" (the member is {info.compress_size:,} bytes)")
    start = data_offset(remote.read_at, stored)
    with hdf5_in(remote, start, stored.file_size) as (member, raw), h5py.File(member, "r") as weights:
        return read_weights_tree(source, weights, graph, "keras-v3", keras_version, policy, notes=notes,
                                 architecture=architecture, raw=raw)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is {info.file_size} bytes, more than the {MAX_CONFIG_BYTES} bytes a model config may have")
    pieces: list[bytes] = []
    try:
        # One byte past the limit is refused: the size in the zip directory can lie.
        expand_member(archive_reader(archive), info, MAX_CONFIG_BYTES, pieces.append)
    except ConfigError as error:
        if "refusing a zip bomb" in str(error):
            raise ConfigError(f"{name} is larger than the {MAX_CONFIG_BYTES} bytes a model config may have") from None
        raise
    return b"".join(pieces)
