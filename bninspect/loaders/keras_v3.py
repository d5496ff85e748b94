"""Keras 3 files: `.keras` zip archives and `.weights.h5` weights files.

The weights tree is `layers/<key>/vars/<i>` with nested models as `layers/<key>/layers/<key>/...`.
Keys are the snake_case class name with `_1`, `_2`, ... for repeats, counted per container in
layer order. Newer Keras also writes the layer name as the `name` attribute of each `vars` group;
older archives do not, so we derive the keys from `config.json` the way Keras does when saving.
A BN layer's variables are, in order: gamma (if scale), beta (if center), moving_mean, moving_variance.
"""

from __future__ import annotations

import re
import zipfile
from typing import Any, BinaryIO

import h5py

from bninspect.loaders.common import MAX_CONFIG_BYTES, attr_text, bn_layer, parse_json_config, read_vector
from bninspect.loaders.graph import ConfigError, ParsedGraph, dtype_policy_name, parse_model_config
from bninspect.model import BN_CLASS_NAMES, BNLayer, ModelDescription

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


def _vars_group_for(root: Any, graph: ParsedGraph, path: str) -> Any:
    """The `vars` group of the layer at `path`, walking container by container."""
    group = root
    parts = path.split("/")
    for depth, name in enumerate(parts):
        container = "/".join(parts[:depth])
        layers = group.get("layers") if hasattr(group, "get") else None
        if layers is None:
            raise ConfigError(f"weights file has no 'layers' group for {container or 'the model'!r}")
        child = _child_by_name_attr(layers, name)
        if child is None:
            key = _container_keys(graph.children.get(container, ())).get(name)
            child = layers.get(key) if key else None
        if child is None:
            raise ConfigError(f"weights file has no group for layer {path!r}")
        group = child
    if "vars" not in group:
        raise ConfigError(f"weights group of layer {path!r} has no 'vars'")
    return group["vars"]


def _child_by_name_attr(layers: Any, name: str) -> Any:
    for key in layers:
        child = layers[key]
        vars_group = child.get("vars") if isinstance(child, h5py.Group) else None
        if vars_group is not None and attr_text(vars_group.attrs.get("name")) == name:
            return child
    return None


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
    for index, name in enumerate(names):
        if name is None:
            continue
        arrays[name] = read_vector(vars_group, str(index), f"{where}/{index}", raw)
    return arrays


def read_weights_tree(source: str, root: Any, graph: ParsedGraph | None, fmt: str,
                      keras_version: str | None = None, dtype_policy: str | None = None,
                      raw: BinaryIO | None = None) -> ModelDescription:
    """Read the BN layers of a Keras 3 weights tree; with `graph` from config.json when there is one."""
    bn_layers: list[BNLayer] = []
    if graph is not None:
        for layer in graph.layers:
            if layer.class_name not in BN_CLASS_NAMES:
                continue
            vars_group = _vars_group_for(root, graph, layer.path)
            arrays = _bn_arrays(vars_group, layer.config.get("center", True), layer.config.get("scale", True),
                                f"weights of {layer.path}", raw)
            bn_layers.append(bn_layer(layer.path, layer.class_name, layer.config, arrays))
        return ModelDescription(
            source=source, format=fmt, bn_layers=tuple(bn_layers), keras_version=keras_version,
            has_config=True, layers=graph.layers, outputs=graph.outputs, dtype_policy=dtype_policy,
        )
    for path, vars_group in _walk_bn_groups(root, prefix=""):
        bn_layers.append(bn_layer(path, "BatchNormalization", None,
                                  _bn_arrays(vars_group, None, None, f"weights of {path}", raw)))
    return ModelDescription(source=source, format=fmt, bn_layers=tuple(bn_layers),
                            keras_version=keras_version, has_config=False)


def _walk_bn_groups(group: Any, prefix: str):
    """Without a config, a BN layer is recognised by its key (`batch_normalization[_N]`)."""
    layers = group.get("layers")
    if not isinstance(layers, h5py.Group):
        return
    for key in layers:
        child = layers[key]
        if not isinstance(child, h5py.Group):
            continue
        vars_group = child.get("vars")
        name = (attr_text(vars_group.attrs.get("name")) if isinstance(vars_group, h5py.Group) else None) or key
        if re.fullmatch(r"(sync_)?batch_normalization(_\d+)?", key) and isinstance(vars_group, h5py.Group):
            yield prefix + name, vars_group
        elif "layers" in child:
            yield from _walk_bn_groups(child, prefix + name + "/")


def read_keras_archive(source: str) -> ModelDescription:
    try:
        archive = zipfile.ZipFile(source)
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
        graph = parse_model_config(config)
        if WEIGHTS_MEMBER not in names:
            raise ConfigError(f"the .keras archive has no {WEIGHTS_MEMBER}")
        policy = dtype_policy_name(config["config"].get("dtype"))
        with archive.open(WEIGHTS_MEMBER) as member, h5py.File(member, "r") as weights:
            return read_weights_tree(source, weights, graph, "keras-v3", keras_version, policy)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is {info.file_size} bytes, more than the {MAX_CONFIG_BYTES} bytes a model config may have")
    with archive.open(name) as member:
        # Read one byte past the limit: the size in the zip directory can lie.
        data = member.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name} is larger than the {MAX_CONFIG_BYTES} bytes a model config may have")
    return data
