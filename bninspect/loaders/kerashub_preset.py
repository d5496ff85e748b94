"""KerasHub preset directories (`backbone.save_to_preset(dir)`, `task.save_to_preset(dir)`): ONE model.

A preset holds `config.json` (the backbone's class and constructor arguments), `model.weights.h5`
(the backbone's Keras 3 weights tree), `metadata.json` (keras_version, keras_hub_version), and for
a task also `task.json` (the task's class, the backbone config inside it) and `task.weights.h5`
(the task's own layers, such as the classification head, and its optimizer, so the step count).
The configs are classes, not layer graphs: the architecture is code, and the BN layers are found
in the weights trees the way keras_v3 finds them without a graph.

Each BN array's location (where `recalibrate` writes) is `model.weights.h5:/layers/...` or
`task.weights.h5:/layers/...`: the weights file of the preset, then the dataset path inside it.

BN paths are those of the same task saved as `.keras`: there the backbone is a nested model whose
layers sit under its name (`res_net_backbone/conv1_bn`), so a task preset prefixes the backbone's
BN layers with the backbone's name; a backbone preset is the backbone alone (`conv1_bn`).

Only JSON and HDF5 are read: nothing of keras_hub is imported or run.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py

from bninspect.loaders.common import (MAX_CONFIG_BYTES, architecture_notes, attr_text, code_architecture,
                                      parse_json_config, read_step_count)
from bninspect.loaders.graph import ConfigError, dtype_policy_name
from bninspect.loaders.hdf5_input import open_hdf5, read_regular
from bninspect.loaders.keras_v3 import OPTIMIZER_ITERATIONS, bn_layers_without_config
from bninspect.model import BNLayer, ModelDescription

FORMAT = "kerashub-preset"
BACKBONE_CONFIG = "config.json"
BACKBONE_WEIGHTS = "model.weights.h5"
TASK_CONFIG = "task.json"
TASK_WEIGHTS = "task.weights.h5"
METADATA = "metadata.json"


def is_preset_directory(path: Path) -> bool:
    """The two files every preset has: the backbone's config and weights."""
    return (path / BACKBONE_CONFIG).is_file() and (path / BACKBONE_WEIGHTS).is_file()


class _LocalFiles:
    """The files of a preset directory on disk (loaders.remote.RemotePreset: at a URL prefix)."""

    def __init__(self, directory: str):
        self.directory = Path(directory)

    def has(self, name: str) -> bool:
        return (self.directory / name).is_file()

    def read(self, name: str, limit: int) -> bytes:
        return read_regular(self.directory / name, limit)

    def hdf5(self, name: str):
        return open_hdf5(str(self.directory / name))


def read_preset(source: str, files: Any = None) -> ModelDescription:
    """`files`: how to reach the preset's files (`has`, `read`, `hdf5`), when not a local directory."""
    files = files if files is not None else _LocalFiles(source)
    backbone = _read_config(files, BACKBONE_CONFIG)
    task = _read_config(files, TASK_CONFIG) if files.has(TASK_CONFIG) else None
    metadata = _read_json(files, METADATA) if files.has(METADATA) else {}
    metadata = metadata if isinstance(metadata, dict) else {}

    # The task's weights tree holds its own layers and the optimizer; the backbone's are apart.
    prefix = ""
    with files.hdf5(BACKBONE_WEIGHTS) as (guarded, raw), h5py.File(guarded, "r") as weights:
        if task is not None:
            prefix = _model_name(weights, backbone) + "/"
        bn_layers: list[BNLayer] = [_in_member(BACKBONE_WEIGHTS, layer)
                                    for layer in bn_layers_without_config(weights, raw, prefix=prefix)]
        training_steps = read_step_count(weights, OPTIMIZER_ITERATIONS)
    if task is not None and files.has(TASK_WEIGHTS):
        with files.hdf5(TASK_WEIGHTS) as (guarded, raw), h5py.File(guarded, "r") as weights:
            backbone_paths = {layer.path for layer in bn_layers}
            bn_layers.extend(_in_member(TASK_WEIGHTS, layer) for layer in bn_layers_without_config(weights, raw)
                             if layer.path not in backbone_paths)
            training_steps = read_step_count(weights, OPTIMIZER_ITERATIONS)

    model = task if task is not None else backbone
    architecture = code_architecture(model)
    notes = (f"KerasHub preset of class {architecture.qualified_name}: BN layers are read from the weights, "
             "without their config",) + architecture_notes(architecture)
    return ModelDescription(
        source=source, format=FORMAT, bn_layers=tuple(bn_layers), keras_version=_text(metadata, "keras_version"),
        has_config=False, architecture=architecture, dtype_policy=dtype_policy_name(model["config"].get("dtype")),
        notes=notes, training_steps=training_steps, keras_hub_version=_text(metadata, "keras_hub_version"),
    )


def _in_member(member: str, layer: BNLayer) -> BNLayer:
    """The layer with its dataset locations naming the preset's weights file they are in."""
    return replace(layer, locations=tuple((name, f"{member}:{path}") for name, path in layer.locations))


def split_location(location: str) -> tuple[str, str]:
    """(weights file of the preset, dataset path inside it) of a preset BN layer's location."""
    member, _, path = location.partition(":")
    return member, path


def _model_name(weights: Any, config: dict) -> str:
    """The backbone's layer name: the `name` attribute of its weights tree's own `vars` group,
    which is what a `.keras` of the task names its group by, else the name in its config."""
    own_vars = weights.get("vars")
    name = attr_text(own_vars.attrs.get("name")) if isinstance(own_vars, h5py.Group) else None
    if not name:
        name = config["config"].get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{BACKBONE_CONFIG} names no backbone (no 'name' in its config)")
    return name


def _read_config(files: Any, name: str) -> dict:
    config = _read_json(files, name)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) \
            or not isinstance(config.get("class_name"), str):
        raise ConfigError(f"{name} is not a serialised Keras object (no 'class_name' and 'config')")
    return config


def _read_json(files: Any, name: str) -> Any:
    # One byte past the limit: parse_json_config refuses what is larger.
    return parse_json_config(files.read(name, MAX_CONFIG_BYTES), name)


def _text(metadata: dict, key: str) -> str | None:
    value = metadata.get(key)
    return value if isinstance(value, str) else None
