"""Describe a live Keras model (Keras 3 `keras.Model` or tf-keras `tf_keras.Model`).

For the notebook API: `bninspect.inspect(model)`. The graph comes from `model.to_json()`, the same
JSON that `.h5` (`model_config`) and `.keras` (`config.json`) files hold, so the config parser and
the layer paths are exactly those of the file loaders. The arrays are read from the layers.
Nothing is deserialised: the model is already in memory.

Layer: readers (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np

from bninspect.loaders.common import architecture_notes, bn_layer, code_architecture, step_count_value
from bninspect.loaders.graph import ConfigError, NoGraphError, dtype_policy_name, parse_model_config
from bninspect.model import BN_CLASS_NAMES, Architecture, BNLayer, ModelDescription

IN_MEMORY_FORMAT = "in-memory"


def describe_keras_model(model: Any, source: str = "<in-memory>", fmt: str = IN_MEMORY_FORMAT) -> ModelDescription:
    """The ModelDescription of a live model. Raises ConfigError for something that is not a Keras model."""
    if not hasattr(model, "layers") or not hasattr(model, "get_config"):
        raise ConfigError(f"{type(model).__name__} is not a Keras model")
    keras_version, backend = _library_version(model)
    live = dict(bn_layers_by_path(model))
    model_config = _model_config(model)
    graph = None
    if model_config is not None:
        try:
            graph = parse_model_config(model_config)
        except NoGraphError:
            graph = None  # a subclassed model: get_config() is its constructor arguments
    architecture = None
    if graph is None:
        architecture = _code_architecture(model, model_config)
        if _functional_base(model) is None:
            bn_layers = tuple(_describe_bn(path, layer, layer.get_config(), type(layer).__name__)
                              for path, layer in live.items())
            return ModelDescription(source=source, format=fmt, bn_layers=bn_layers, keras_version=keras_version,
                                    backend=backend, has_config=False, architecture=architecture, built=True,
                                    training_steps=_training_steps(model),
                                    notes=(f"the architecture is code (class {architecture.qualified_name}): its "
                                           "call() is Python, the model has no layer graph",)
                                    + architecture_notes(architecture))
        # A Functional subclass (KerasHub backbones and tasks): its get_config() is constructor
        # arguments, but the layers it was built from form a graph.
        model_config = functional_graph_config(model)
        graph = parse_model_config(model_config)
    bn_layers = []
    for graph_layer in graph.layers:
        if graph_layer.class_name in BN_CLASS_NAMES:
            if graph_layer.path not in live:
                raise ConfigError(f"model config names BN layer {graph_layer.path!r} the model does not have")
            bn_layers.append(_describe_bn(graph_layer.path, live[graph_layer.path], graph_layer.config,
                                          graph_layer.class_name))
    listed = {bn.path for bn in bn_layers}
    # BN layers inside wrappers and custom layers are not in the graph; the file loaders report
    # them too, at the same paths.
    bn_layers.extend(_describe_bn(path, layer, layer.get_config(), type(layer).__name__)
                     for path, layer in live.items() if path not in listed)
    return ModelDescription(
        source=source, format=fmt, bn_layers=tuple(bn_layers), keras_version=keras_version, backend=backend,
        has_config=True, layers=graph.layers, outputs=graph.outputs,
        dtype_policy=dtype_policy_name((architecture.config if architecture is not None else model_config["config"])
                                       .get("dtype")),
        training_steps=_training_steps(model), architecture=architecture, built=architecture is not None,
        notes=architecture_notes(architecture) if architecture is not None else (),
    )


def _functional_base(model: Any) -> type | None:
    """Keras 3's or tf-keras' `Functional` when `model` is an instance of a subclass of it (as
    KerasHub backbones and tasks are), told by the class hierarchy so that Keras is not imported."""
    for cls in type(model).__mro__[1:]:
        if cls.__name__ == "Functional" and cls.__module__.split(".", 1)[0] in ("keras", "tf_keras"):
            return cls
    return None


def functional_graph_config(model: Any) -> dict:
    """The layer graph of a Functional subclass, serialised as a Functional model's config.

    `Functional.get_config` refuses subclasses whose constructor is not Functional's (it returns
    their constructor arguments instead), so the graph is serialised from a plain Functional view
    over the same inputs, outputs and layers. A nested Functional subclass (a backbone inside a
    task) is replaced by its own graph, so that its layers appear under its path. The class and
    registered name stay those of the subclass: `keras_hub>ResNetBackbone` is still KerasHub's.
    """
    functional = _functional_base(model)
    view = functional(model.inputs, model.outputs, name=model.name)
    config = _as_json(view.get_config())
    by_name = {layer.name: layer for layer in model.layers}
    for entry in config["layers"]:
        layer = by_name.get(entry.get("name"))
        if layer is not None and _functional_base(layer) is not None:
            entry["config"] = functional_graph_config(layer)["config"]
    return {"class_name": type(model).__name__, "config": config}


def _as_json(value: Any) -> Any:
    """A config as its JSON would read back: get_config() holds tuples (`keras_history`) where the
    saved JSON, which the config parser reads, has lists."""
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    return value


def _code_architecture(model: Any, model_config: dict | None) -> Architecture:
    """A subclassed model's class: as its serialised config names it (the registered name), or
    else by its Python class."""
    cls = type(model)
    entry = model_config if isinstance(model_config, dict) and isinstance(model_config.get("class_name"), str) \
        else {"class_name": cls.__name__}
    # to_json() of a subclassed model may leave out the module; the live class knows it.
    return code_architecture({"module": cls.__module__, **{k: v for k, v in entry.items() if v is not None}})


def _training_steps(model: Any) -> int | None:
    """`model.optimizer.iterations` of a compiled model, as saving would store it."""
    iterations = getattr(getattr(model, "optimizer", None), "iterations", None)
    if iterations is None:
        return None
    value = iterations.numpy() if hasattr(iterations, "numpy") else iterations
    return step_count_value(value)


def _model_config(model: Any) -> dict | None:
    try:
        return json.loads(model.to_json())
    except (NotImplementedError, TypeError, ValueError):
        # Subclassed models without get_config, or configs holding objects JSON cannot encode.
        return None


def _library_version(model: Any) -> tuple[str | None, str | None]:
    """Which Keras the model belongs to, told by the module of its class.

    No `bninspect.tf_runtime.import_tensorflow` here: the model exists, so the user's process has
    imported TensorFlow (or another backend) already and TF_ENABLE_ONEDNN_OPTS can no longer take
    effect; these imports only look up modules that are loaded.
    """
    for cls in type(model).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root == "tf_keras":
            import tf_keras

            return tf_keras.__version__, "tensorflow"
        if root == "keras":
            import keras

            return keras.__version__, keras.backend.backend()
    return None, None


def bn_layers_by_path(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) of every BN layer, walking nested models, wrappers and custom layers; the top
    model's name is not in paths."""
    for layer in _sublayers(model):
        path = prefix + layer.name
        if type(layer).__name__ in BN_CLASS_NAMES or _is_bn(layer):
            yield path, layer
        else:
            yield from bn_layers_by_path(layer, path + "/")


def _sublayers(layer: Any) -> list:
    if hasattr(layer, "layers"):
        return list(layer.layers)
    # Both Keras 3 and tf-keras track the sublayers of any layer (a TimeDistributed's `layer`, a
    # custom layer's attributes) and list them with this private method.
    flatten = getattr(layer, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=False)) if callable(flatten) else []


def _is_bn(layer: Any) -> bool:
    # Subclasses of BatchNormalization (e.g. a user's FrozenBatchNorm) hold the same variables.
    return any(cls.__name__ in BN_CLASS_NAMES for cls in type(layer).__mro__[1:]) and hasattr(layer, "moving_mean")


def _describe_bn(path: str, layer: Any, config: dict, class_name: str) -> BNLayer:
    if not getattr(layer, "built", True):
        raise ConfigError(f"BN layer {path!r} is not built yet: call the model on data or give it an Input first")
    arrays = {}
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        variable = getattr(layer, name, None)
        if variable is not None:
            value = np.asarray(variable.numpy())
            if value.ndim != 1:
                # Same refusal as the file loaders, so a model reads the same saved or live.
                raise ConfigError(f"BN layer {path!r}: {name} has shape {value.shape}, expected one value per channel")
            arrays[name] = (value.astype(np.float64), str(value.dtype))
    return bn_layer(path, class_name, config, arrays)
