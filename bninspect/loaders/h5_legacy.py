"""Legacy HDF5 files: full models (`model_config` + `model_weights/`) and weights-only files.

Every layer group lists its weights in a `weight_names` attribute, as paths relative to the group.
Their spelling depends on who wrote the file: `bn/gamma:0` (tf.keras 2), `bn/bn_1/gamma:0` (old
standalone Keras, where the TF name scope got a suffix), `bn/gamma` (Keras 3), and for a nested
model `inner/bn/gamma` or `bn/gamma:0`. The last path component always names the variable, so
that is what we match on; the rest only tells which inner layer of a nested model owns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from bninspect.loaders.common import (BN_ARRAY_NAMES, attr_text, attr_text_list, bn_layer,
                                      parse_json_config, read_vector)
from bninspect.loaders.graph import ConfigError, dtype_policy_name, parse_model_config
from bninspect.model import BN_CLASS_NAMES, BNLayer, ModelDescription


@dataclass(frozen=True)
class _Weight:
    owner: str  # the weight name without its last component and ":0", e.g. "inner/bn"
    leaf: str  # "gamma", "moving_mean", ...
    name: str  # as listed in weight_names, the dataset's path inside the layer group


def _group_weights(group: Any) -> list[_Weight]:
    weights = []
    for name in attr_text_list(group.attrs.get("weight_names")):
        stripped = name[:-2] if name.endswith(":0") else name
        owner, _, leaf = stripped.rpartition("/")
        weights.append(_Weight(owner=owner, leaf=leaf, name=name))
    return weights


def _arrays(group: Any, weights: list[_Weight], where: str, raw: BinaryIO | None) -> dict[str, tuple]:
    arrays = {}
    for weight in weights:
        if weight.leaf in BN_ARRAY_NAMES:
            arrays[weight.leaf] = read_vector(group, weight.name, f"{where}/{weight.name}", raw)
    return arrays


def _by_owner(weights: list[_Weight]) -> dict[str, list[_Weight]]:
    owners: dict[str, list[_Weight]] = {}
    for weight in weights:
        owners.setdefault(weight.owner, []).append(weight)
    return owners


def _is_bn_owner(weights: list[_Weight]) -> bool:
    leaves = {weight.leaf for weight in weights}
    return {"moving_mean", "moving_variance"} <= leaves


def _match_nested(bn_paths: list[str], top: str, owners: dict[str, list[_Weight]]) -> dict[str, str]:
    """Map the BN layers inside nested model `top` to weight owners of its group.

    By name first (`inner/bn`, `bn`, or anything ending in `/bn`); what is left is paired in order,
    which covers files whose TF name scopes were uniquified (`bn_1` for layer `bn`).
    """
    candidates = [owner for owner, weights in owners.items() if _is_bn_owner(weights)]
    matched: dict[str, str] = {}
    for path in bn_paths:
        relative = path[len(top) + 1:]
        name = path.rsplit("/", 1)[-1]
        for owner in candidates:
            if owner in matched.values():
                continue
            if owner in (path, relative, name) or owner.endswith("/" + relative):
                matched[path] = owner
                break
    leftover = [owner for owner in candidates if owner not in matched.values()]
    for path in bn_paths:
        if path not in matched and leftover:
            matched[path] = leftover.pop(0)
    return matched


def _version(*attr_sources: Any) -> tuple[str | None, str | None]:
    for attrs in attr_sources:
        version = attr_text(attrs.get("keras_version"))
        if version:
            return version, attr_text(attrs.get("backend"))
    return None, None


def read_full_model(source: str, handle: Any, raw: BinaryIO | None = None) -> ModelDescription:
    config = parse_json_config(handle.attrs["model_config"], "model_config attribute")
    graph = parse_model_config(config)
    if "model_weights" not in handle:
        raise ConfigError("has a model_config but no model_weights group")
    root = handle["model_weights"]
    bn_paths = [layer.path for layer in graph.layers if layer.class_name in BN_CLASS_NAMES]
    layers_by_path = {layer.path: layer for layer in graph.layers}

    owner_of: dict[str, tuple[str, str | None]] = {}  # BN path -> (top group, owner inside it)
    nested: dict[str, list[str]] = {}  # top-level container -> the BN paths inside it
    for path in bn_paths:
        top, _, rest = path.partition("/")
        if rest:
            nested.setdefault(top, []).append(path)
        else:
            owner_of[path] = (path, None)
    for top, inner in nested.items():
        if inner:
            if top not in root:
                raise ConfigError(f"no weights group for nested model {top!r}")
            matched = _match_nested(inner, top, _by_owner(_group_weights(root[top])))
            for path in inner:
                if path not in matched:
                    raise ConfigError(f"no weights for BN layer {path!r} in group {top!r}")
                owner_of[path] = (top, matched[path])

    bn_layers: list[BNLayer] = []
    for path in bn_paths:
        top, owner = owner_of[path]
        if top not in root:
            raise ConfigError(f"no weights group for BN layer {path!r}")
        group = root[top]
        weights = [w for w in _group_weights(group) if owner is None or w.owner == owner]
        layer = layers_by_path[path]
        bn_layers.append(bn_layer(path, layer.class_name, layer.config,
                                  _arrays(group, weights, f"model_weights/{top}", raw)))

    version, backend = _version(handle.attrs, root.attrs)
    return ModelDescription(
        source=source, format="h5-legacy", bn_layers=tuple(bn_layers), keras_version=version,
        backend=backend, has_config=True, layers=graph.layers, outputs=graph.outputs,
        dtype_policy=dtype_policy_name(config.get("config", {}).get("dtype")),
    )


def read_weights_only(source: str, handle: Any, raw: BinaryIO | None = None) -> ModelDescription:
    bn_layers: list[BNLayer] = []
    for layer_name in attr_text_list(handle.attrs.get("layer_names")):
        if layer_name not in handle:
            raise ConfigError(f"layer {layer_name!r} is listed in layer_names but has no group")
        group = handle[layer_name]
        owners = _by_owner(_group_weights(group))
        bn_owners = [owner for owner, weights in owners.items() if _is_bn_owner(weights)]
        for owner in bn_owners:
            # A plain BN layer owns its own group; anything else is a nested model's inner layer.
            if len(owners) == 1 and (owner == layer_name or owner.rsplit("/", 1)[-1].startswith(layer_name)):
                path = layer_name
            else:
                relative = owner[len(layer_name) + 1:] if owner.startswith(layer_name + "/") else owner
                path = f"{layer_name}/{relative}"
            bn_layers.append(bn_layer(path, "BatchNormalization", None,
                                      _arrays(group, owners[owner], layer_name, raw)))
    version, backend = _version(handle.attrs)
    return ModelDescription(
        source=source, format="h5-weights", bn_layers=tuple(bn_layers), keras_version=version,
        backend=backend, has_config=False,
    )
