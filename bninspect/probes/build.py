"""`--build`: read what a model file does not store by building its architecture with Keras.

A subclassed model's or a KerasHub task's file stores a class and its constructor arguments, not
the layers: the BN layers' own configs (axis, momentum, epsilon, trainable, dtype policy) and the
graph are only known once Keras builds the class. The model is loaded the way the probes load it
(`loading.load_model`: safe mode, the same refusals of Lambda layers and of classes that are not
Keras' or an installed library's), described live like an in-memory model
(`loaders.in_memory.describe_keras_model`: a Functional subclass gives its graph too), and
merged into the static description by layer path: configs and graph from the built model, every
array from the file, so the statistics reported are the file's whatever Keras did while building.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from bninspect.errors import ModelReadError
from bninspect.loaders.graph import ConfigError
from bninspect.loaders.in_memory import describe_keras_model
from bninspect.model import CODE, BNLayer, ModelDescription
from bninspect.probes.loading import LoadedModel, load_model


def build_description(description: ModelDescription, *, unsafe: bool = False,
                      custom_objects: Mapping[str, Any] | None = None
                      ) -> tuple[ModelDescription, LoadedModel | None]:
    """The description with the configs (and graph) of the model Keras builds from the file, and
    the loaded model (None when nothing needed building: then nothing is loaded, so nothing is
    refused either). Raises ModelRefused (a UsageProblem) when loading would run code the user did
    not allow or Keras cannot load it, ModelReadError when the built model does not have the
    file's BN layers."""
    if description.nothing_to_build:
        return _unbuilt(description), None
    loaded = load_model(description.source, unsafe=unsafe, custom_objects=custom_objects, description=description)
    source = description.source
    try:
        live = describe_keras_model(loaded.model, source, description.format)
    except ConfigError as error:
        raise ModelReadError(source, f"cannot describe the model Keras built ({' '.join(str(error).split())})") \
            from error
    return merged(description, live, loaded.keras), loaded


def _unbuilt(description: ModelDescription) -> ModelDescription:
    """A code model whose file holds all that building reads, as read, with a note why --build
    built nothing (`built` stays False). Graph files with every config and weights-only files get
    no note: docs/usage.md says --build reads them as without it, and a note on each would only
    be noise under `build = true`."""
    if description.architecture.kind != CODE:
        return description
    note = (f"--build: nothing to build: the file stores every BN layer's config, and class "
            f"{description.architecture.qualified_name} is not a Functional model (its call() is Python), "
            "so building it would not give the graph either")
    return replace(description, notes=description.notes + (note,))


def merged(static: ModelDescription, live: ModelDescription, keras: str) -> ModelDescription:
    """`static` with the BN configs and the graph of `live`, matched by layer path."""
    by_path = {bn.path: bn for bn in live.bn_layers}
    missing = [bn.path for bn in static.bn_layers if bn.path not in by_path]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelReadError(static.source, f"the model built with {keras} has no BN layer at {shown} of the "
                                            f"file's {len(static.bn_layers)} (built: "
                                            f"{', '.join(list(by_path)[:3]) or 'none'}...)")
    bn_layers = tuple(_with_config(bn, by_path[bn.path]) for bn in static.bn_layers)
    has_graph = static.has_config or live.has_config
    graph_source = static if static.has_config else live
    read = "the layer configs and the graph" if live.has_config and not static.has_config else "the layer configs"
    extra = [bn.path for bn in live.bn_layers if bn.path not in {layer.path for layer in static.bn_layers}]
    notes = [f"built with {keras}: {read} come from the built model, the statistics from the file"]
    if extra:
        notes.append(f"the built model has {len(extra)} BN layers the file reading did not find "
                     f"({', '.join(extra[:3])}); they are not reported")
    return replace(static, bn_layers=bn_layers, has_config=has_graph, layers=graph_source.layers,
                   outputs=graph_source.outputs, dtype_policy=static.dtype_policy or live.dtype_policy,
                   notes=static.notes + tuple(notes), built=True)


def _with_config(stored: BNLayer, built: BNLayer) -> BNLayer:
    """The file's arrays, dtype and locations with the built layer's config."""
    return replace(stored, class_name=built.class_name, axis=built.axis, epsilon=built.epsilon,
                   momentum=built.momentum, center=built.center, scale=built.scale, trainable=built.trainable,
                   dtype_policy=built.dtype_policy, has_config=True)
