"""Legacy HDF5 files: full models (`model_config` + `model_weights/`) and weights-only files.

Every layer group lists its weights in a `weight_names` attribute, as paths relative to the group.
Their spelling depends on who wrote the file: `bn/gamma:0` (tf.keras 2), `bn/bn_1/gamma:0` (old
standalone Keras, where the TF name scope got a suffix), `bn/gamma` (Keras 3), and for a nested
model `inner/bn/gamma` or `bn/gamma:0`. The last path component always names the variable, so
that is what we match on; the rest only tells which inner layer of a nested model owns it.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO

from bninspect.loaders.common import (BN_ARRAY_NAMES, architecture_notes, attr_text, attr_text_list, bn_layer,
                                      code_architecture, is_step_count_name, may_hold_unlisted_bn, parse_json_config,
                                      read_step_count, read_vector, refuse_link_leaving)
from bninspect.loaders.graph import ConfigError, NoGraphError, container_config, dtype_policy_name, parse_model_config
from bninspect.model import BN_CLASS_NAMES, Architecture, BNLayer, ModelDescription


@dataclass(frozen=True)
class _Weight:
    owner: str  # the weight name without its last component and ":0", e.g. "inner/bn"
    leaf: str  # "gamma", "moving_mean", ...
    name: str  # as listed in weight_names, the dataset's path inside the layer group


# Keras 1 named BN weights after the layer, without a scope: `batchnormalization_1_running_mean`.
# Its `running_std` held the moving variance despite the name (Keras 2 loads it as moving_variance).
KERAS1_BN_SUFFIXES = (("_running_mean", "moving_mean"), ("_running_std", "moving_variance"),
                      ("_gamma", "gamma"), ("_beta", "beta"))


def _group_weights(group: Any) -> list[_Weight]:
    weights = []
    for name in attr_text_list(group.attrs.get("weight_names")):
        stripped = name[:-2] if name.endswith(":0") else name
        owner, _, leaf = stripped.rpartition("/")
        if leaf not in BN_ARRAY_NAMES:
            for suffix, keras2_name in KERAS1_BN_SUFFIXES:
                if leaf.endswith(suffix) and len(leaf) > len(suffix):
                    owner, leaf = owner or leaf[:-len(suffix)], keras2_name
                    break
        weights.append(_Weight(owner=owner, leaf=leaf, name=name))
    return weights


def _arrays(group: Any, weights: list[_Weight], where: str, raw: BinaryIO | None) -> dict[str, tuple]:
    arrays = {}
    group_path = None
    for weight in weights:
        if weight.leaf in BN_ARRAY_NAMES:
            if group_path is None:
                group_path = group.name
            arrays[weight.leaf] = read_vector(group, weight.name, f"{where}/{weight.name}", raw, group_path)
    return arrays


def _by_owner(weights: list[_Weight]) -> dict[str, list[_Weight]]:
    owners: dict[str, list[_Weight]] = {}
    for weight in weights:
        owners.setdefault(weight.owner, []).append(weight)
    return owners


def _is_bn_owner(weights: list[_Weight]) -> bool:
    leaves = {weight.leaf for weight in weights}
    return {"moving_mean", "moving_variance"} <= leaves


def _match_nested(bn_paths: list[str], top: str, weights: list[_Weight]) -> dict[str, str]:
    """Map the BN layers inside nested model `top` to weight owners of its group.

    By name, most specific rule first, each rule over all layers before the next: so a looser
    rule never takes the owner a stricter one would have given to another layer. The rules:
    exactly (`inner/bn`), the bare layer name (`bn`), old standalone Keras' uniquified scope
    (`bn/bn_1`), a path suffix. What is left is paired in layer order, which is the order of the
    moving means: Keras lists trainable weights first, so the first weight of each owner is not in
    layer order when some BN layers have no trainable weights (frozen, center=scale=False).
    """
    owners = _by_owner(weights)
    candidates = [owner for owner, owned in owners.items() if _is_bn_owner(owned)]
    # Each rule looks owners up by key in an index (owners in candidate order), so matching is
    # linear in the layers: a nested model of thousands of BN layers is read in seconds.
    by_first_scope: dict[str, deque[str]] = {}
    by_suffix: dict[str, deque[str]] = {}
    for owner in candidates:
        by_first_scope.setdefault(owner.split("/", 1)[0], deque()).append(owner)
        parts = owner.split("/")
        for start in range(1, len(parts)):
            by_suffix.setdefault("/".join(parts[start:]), deque()).append(owner)
    exact = {owner: deque((owner,)) for owner in candidates}
    rules = (
        (exact, lambda relative, name: (top + "/" + relative, relative)),
        (exact, lambda relative, name: (name,)),
        (by_first_scope, lambda relative, name: (name,)),
        (by_suffix, lambda relative, name: (relative,)),
    )
    order = {owner: position for position, owner in enumerate(candidates)}
    matched: dict[str, str] = {}
    taken: set[str] = set()
    for index, keys_of in rules:
        for path in bn_paths:
            if path in matched:
                continue
            relative = path[len(top) + 1:]
            free = [_first_free(index.get(key), taken) for key in keys_of(relative, path.rsplit("/", 1)[-1])]
            free = [owner for owner in free if owner is not None]
            if free:
                owner = min(free, key=order.__getitem__)
                matched[path] = owner
                taken.add(owner)
    first_moving_mean = {}
    for position, weight in enumerate(weights):
        if weight.leaf == "moving_mean":
            first_moving_mean.setdefault(weight.owner, position)
    leftover = sorted((owner for owner in candidates if owner not in taken),
                      key=lambda owner: first_moving_mean[owner])
    leftover.reverse()  # popped from the end: the first in moving-mean order first
    for path in bn_paths:
        if path not in matched and leftover:
            matched[path] = leftover.pop()
    return matched


def _first_free(owners: deque[str] | None, taken: set[str]) -> str | None:
    """The first owner of `owners` not yet taken; taken ones at its front are dropped for good."""
    if not owners:
        return None
    while owners and owners[0] in taken:
        owners.popleft()
    return owners[0] if owners else None


def _version(*attr_sources: Any) -> tuple[str | None, str | None]:
    for attrs in attr_sources:
        version = attr_text(attrs.get("keras_version"))
        if version:
            return version, attr_text(attrs.get("backend"))
    return None, None


def read_full_model(source: str, handle: Any, raw: BinaryIO | None = None) -> ModelDescription:
    config = parse_json_config(handle.attrs["model_config"], "model_config attribute")
    if "model_weights" not in handle:
        raise ConfigError("has a model_config but no model_weights group")
    refuse_link_leaving(handle, "model_weights", "model_weights")
    root = handle["model_weights"]
    try:
        graph = parse_model_config(config, attr_text_list(root.attrs.get("layer_names")))
    except NoGraphError:
        architecture = code_architecture(config)
        notes = (f"the architecture is code (class {architecture.qualified_name}): BN layers are read from the "
                 "weights, without their config",) + architecture_notes(architecture)
        return read_weights_only(source, root, raw, fmt="h5-legacy", notes=notes, architecture=architecture,
                                 training_steps=_training_steps(handle))
    bn_paths = [layer.path for layer in graph.layers if layer.class_name in BN_CLASS_NAMES]
    layers_by_path = {layer.path: layer for layer in graph.layers}

    owner_of: dict[str, tuple[str, str | None]] = {}  # BN path -> (top group, owner inside it)
    nested: dict[str, list[str]] = {}  # top-level container -> the BN paths inside it
    for path in bn_paths:
        if layers_by_path[path].name == path:  # a top-level layer, whatever its name holds
            owner_of[path] = (path, None)
        else:
            nested.setdefault(graph.path_names(path)[0], []).append(path)
    for top, inner in nested.items():
        if inner:
            if top not in root:
                raise ConfigError(f"no weights group for nested model {top!r}")
            refuse_link_leaving(root, top, f"model_weights/{top}")
            matched = _match_nested(inner, top, _group_weights(root[top]))
            for path in inner:
                if path not in matched:
                    raise ConfigError(f"no weights for BN layer {path!r} in group {top!r}")
                owner_of[path] = (top, matched[path])
    claimed = {(top, owner) for top, owner in owner_of.values()}

    bn_layers: list[BNLayer] = []
    # A nested model's group lists the weights of all its layers: parsed once, not once per layer.
    owners_in: dict[str, dict[str, list[_Weight]]] = {}
    for path in bn_paths:
        top, owner = owner_of[path]
        refuse_link_leaving(root, top, f"model_weights/{top}")
        group = root.get(top)  # one lookup instead of `in` and `[]`: it adds up over thousands of layers
        if group is None:
            raise ConfigError(f"no weights group for BN layer {path!r}")
        if owner is None:
            weights = _group_weights(group)
        else:
            if top not in owners_in:
                owners_in[top] = _by_owner(_group_weights(group))
            weights = owners_in[top].get(owner, [])
        layer = layers_by_path[path]
        bn_layers.append(bn_layer(path, layer.class_name, layer.config,
                                  _arrays(group, weights, f"model_weights/{top}", raw)))
    bn_layers.extend(_bn_inside_other_layers(root, graph, claimed, raw))

    version, backend = _version(handle.attrs, root.attrs)
    return ModelDescription(
        source=source, format="h5-legacy", bn_layers=tuple(bn_layers), keras_version=version,
        backend=backend, has_config=True, layers=graph.layers, outputs=graph.outputs,
        dtype_policy=dtype_policy_name((container_config(config) or {}).get("dtype")),
        training_steps=_training_steps(handle),
    )


def _training_steps(handle: Any) -> int | None:
    """The step counter among `optimizer_weights` (`weight_names` lists them in saving order):
    Keras 3 `adam/iteration`, tf.keras `iteration:0`, legacy `Adam/iter:0`."""
    group = handle.get("optimizer_weights")
    if group is None or not hasattr(group, "attrs"):
        return None
    try:
        names = attr_text_list(group.attrs.get("weight_names", []))
    except (OSError, ValueError, TypeError):
        return None
    for name in names:
        if is_step_count_name(name):
            return read_step_count(group, name)
    return None


def _bn_inside_other_layers(root: Any, graph: Any, claimed: set, raw: BinaryIO | None) -> list[BNLayer]:
    """BN layers the graph does not list: inside custom layers (`block/bn`), wrappers
    (`TimeDistributed(BatchNormalization())`) or custom layers within nested models.

    Their weights are in the group of the top-level layer that holds them; an owner there with
    moving statistics that no listed BN layer claimed is one of them. Their config is unknown,
    except for a wrapped BN layer, whose config is the wrapper's `layer` entry.
    """
    found: list[BNLayer] = []
    for layer in graph.layers:
        # Containers too: their group may hold BN layers of custom layers inside them.
        nested = layer.path != layer.name
        if nested or not (layer.is_container or may_hold_unlisted_bn(layer)) or layer.path not in root:
            continue
        refuse_link_leaving(root, layer.path, f"model_weights/{layer.path}")
        group = root[layer.path]
        if not hasattr(group, "attrs"):
            continue
        owners = _by_owner(_group_weights(group))
        for owner, weights in owners.items():
            if not _is_bn_owner(weights) or (layer.path, owner) in claimed:
                continue
            class_name, config = _wrapped_bn(layer.config)
            inner = _inner_path(layer.path, owner)
            if inner == layer.path:  # tf.keras names a wrapped layer's weights after the wrapper
                inner = str((config or {}).get("name", inner))
            found.append(bn_layer(f"{layer.path}/{inner}", class_name, config,
                                  _arrays(group, weights, f"model_weights/{layer.path}", raw)))
    return found


def _wrapped_bn(wrapper_config: Any) -> tuple[str, dict | None]:
    """Class name and config of the BN layer a wrapper (TimeDistributed) holds, when it is one."""
    wrapped = wrapper_config.get("layer") if isinstance(wrapper_config, dict) else None
    if isinstance(wrapped, dict) and wrapped.get("class_name") in BN_CLASS_NAMES \
            and isinstance(wrapped.get("config"), dict):
        return str(wrapped["class_name"]), wrapped["config"]
    return "BatchNormalization", None


def read_weights_only(source: str, handle: Any, raw: BinaryIO | None = None, fmt: str = "h5-weights",
                      notes: tuple[str, ...] = (), architecture: Architecture | None = None,
                      training_steps: int | None = None) -> ModelDescription:
    """The BN layers of a `layer_names` tree, found by their weight names. `architecture` is the
    code architecture of a full-model file whose config is a class (default: weights only)."""
    bn_layers: list[BNLayer] = []
    for layer_name in attr_text_list(handle.attrs.get("layer_names")):
        if layer_name not in handle:
            raise ConfigError(f"layer {layer_name!r} is listed in layer_names but has no group")
        refuse_link_leaving(handle, layer_name, layer_name)
        group = handle[layer_name]
        owners = _by_owner(_group_weights(group))
        bn_owners = [owner for owner, weights in owners.items() if _is_bn_owner(weights)]
        for owner in bn_owners:
            # A plain BN layer owns its own group; anything else is a nested model's inner layer.
            if len(owners) == 1 and (owner == layer_name or owner.rsplit("/", 1)[-1].startswith(layer_name)):
                path = layer_name
            else:
                path = f"{layer_name}/{_inner_path(layer_name, owner)}"
            bn_layers.append(bn_layer(path, "BatchNormalization", None,
                                      _arrays(group, owners[owner], layer_name, raw)))
    version, backend = _version(handle.attrs)
    return ModelDescription(
        source=source, format=fmt, bn_layers=tuple(bn_layers), keras_version=version,
        backend=backend, has_config=False, notes=notes, architecture=architecture, training_steps=training_steps,
    )


def _inner_path(container: str, owner: str) -> str:
    """The path inside nested model `container` of the layer owning weights `owner/...`.

    Owners are spelled `bn` (tf.keras), `deep/bn` (Keras 3, path inside the container),
    `net/block/bn` (Keras 3 subclassed model: the model's own name, then the container's) or
    `bn/bn_1` (old standalone Keras: the TF scope repeated with a suffix, which is no layer).
    """
    parts = owner.split("/")
    scopes = parts[:-1]
    if container in scopes:
        parts = parts[len(scopes) - scopes[::-1].index(container):]
    if len(parts) >= 2 and re.fullmatch(re.escape(parts[-2]) + r"_\d+", parts[-1]):
        parts = parts[:-1]
    return "/".join(parts)
