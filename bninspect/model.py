"""The neutral description of a saved model that every loader produces.

Loaders turn a file into a `ModelDescription`; rules, probes and reporters only ever see this.
BatchNormalization parameters keep Keras' own names (axis, momentum, epsilon, center, scale,
gamma, beta, moving_mean, moving_variance). Everything is frozen: data flows one way.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from bninspect.keras_classes import providing_library
from bninspect.errors import ModelReadError  # noqa: F401  (re-exported: loaders raise it from here)
from bninspect.untrusted import redact

FORMATS = ("h5-legacy", "h5-weights", "keras-v3", "weights-v3", "savedmodel", "tf-checkpoint", "kerashub-preset")

# What a model file says its architecture is (`Architecture.kind`).
GRAPH = "graph"  # a layer graph (Sequential, Functional): every layer, its config and connections
CODE = "code"  # a class and its constructor arguments (subclassed model, KerasHub backbone or task)
NO_ARCHITECTURE = "none"  # weights only
ARCHITECTURE_KINDS = (GRAPH, CODE, NO_ARCHITECTURE)

BN_CLASS_NAMES = frozenset({"BatchNormalization", "SyncBatchNormalization", "BatchNormalizationV1",
                            "BatchNormalizationV2"})
CONTAINER_CLASS_NAMES = frozenset({"Functional", "Model", "Sequential"})


@dataclass(frozen=True)
class Layer:
    """One layer of the model graph, flattened out of any nested models.

    `inbound` holds the paths of the layers whose outputs feed this one, already resolved through
    nested models: a layer fed by a nested model lists that model's output layer, and the first
    layer inside a nested model lists whatever feeds the nested model from outside.
    """

    path: str
    name: str
    class_name: str
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    inbound: tuple[str, ...] = ()
    # Shape of the layer's (first) input including the batch axis, when the file records it.
    input_shape: tuple[int | None, ...] | None = None
    # Keras 3 configs name the Python module and registered name of the class; custom classes
    # have a registered name like "my_package>MyLayer". Keras 2 configs leave both out.
    module: str | None = None
    registered_name: str | None = None
    # Per call of the layer in the graph (one inbound node each), the `training` argument it was
    # called with: True/False, None when the call did not pass one. Empty when the config records
    # no calls (layers of a Sequential, which calls them without arguments).
    call_training: tuple[bool | None, ...] = ()

    @property
    def is_container(self) -> bool:
        return self.class_name in CONTAINER_CLASS_NAMES


@dataclass(frozen=True, eq=False)
class BNLayer:
    """One BatchNormalization layer: its config (None where the file has no config) and arrays.

    gamma is None when scale=False, beta is None when center=False. Arrays are float64 copies.
    """

    path: str
    class_name: str
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    axis: tuple[int, ...] | None = None
    epsilon: float | None = None
    momentum: float | None = None
    center: bool | None = None
    scale: bool | None = None
    trainable: bool | None = None
    dtype_policy: str | None = None
    # The dtype the arrays were stored with in the file (e.g. "float32", "float16").
    stored_dtype: str | None = None
    # (array name, HDF5 dataset path) for files read with h5py; in a .keras archive the path is
    # inside its model.weights.h5. Empty for SavedModel and in-memory models.
    locations: tuple[tuple[str, str], ...] = ()
    # Whether the file holds this layer's own config. When False, axis, epsilon, momentum, center,
    # scale, trainable and dtype_policy are None (unknown), and the rules that read them skip it.
    has_config: bool = True

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def channels(self) -> int:
        return int(self.moving_mean.size)

    def initial_channels(self) -> np.ndarray:
        """Per channel: moving mean exactly 0 and moving variance exactly 1, the values the layer is
        created with. Exact on purpose: training moves them at the first update."""
        return (self.moving_mean == 0.0) & (self.moving_variance == 1.0)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays present in this layer, in Keras' order."""
        named = {"gamma": self.gamma, "beta": self.beta, "moving_mean": self.moving_mean,
                 "moving_variance": self.moving_variance}
        return {key: value for key, value in named.items() if value is not None}


def credible_step_count(counter: int | None, bn_layers: tuple[BNLayer, ...]) -> int | None:
    """The optimizer's stored step count, or None when the BN statistics contradict it.

    Zero steps leave every moving statistic at its initial 0/1. tf.keras 2.12+ stores
    `iteration:0 = 0` for an optimizer that was never built: a model trained, then compiled again
    (a fresh optimizer) or saved before its optimizer ran; a live model compiled again counts 0
    the same way. Its statistics moved in steps the counter does not know, so the count of those
    steps is unknown, not 0 (0 would make BN018 read the statistics as 100% initial).
    """
    if counter == 0 and any(layer.channels and not layer.initial_channels().all() for layer in bn_layers):
        return None
    return counter


@dataclass(frozen=True)
class Architecture:
    """What the file says the model is: a layer graph, code (a class), or nothing (weights only).

    For code, the class as the config names it: `class_name` ("Net"), the Python `module` and the
    `registered_name` Keras 3 records ("my_package>Net", "keras_hub>ResNetImageClassifier"), and
    `config`, its constructor arguments (JSON, never deserialised).

    `functional` says, for code, whether the built class is a Functional model (a layer graph,
    like KerasHub's models) when the file records it (tf-keras SavedModel metadata:
    `is_graph_network`); None when the file does not say. False means its call() is Python:
    building the class gives no graph either.
    """

    kind: str
    class_name: str | None = None
    module: str | None = None
    registered_name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    functional: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURE_KINDS:
            raise ValueError(f"architecture kind {self.kind!r} is not one of {ARCHITECTURE_KINDS}")

    @property
    def qualified_name(self) -> str | None:
        """How reports name the class: the registered name when it has a package
        ("my_package>Net"), else module.class_name, else the class name; None without a class."""
        if self.registered_name and ">" in self.registered_name:
            return self.registered_name
        if self.class_name and self.module:
            return f"{self.module}.{self.class_name}"
        return self.class_name

    @property
    def library(self) -> str | None:
        """For code: the library that provides the class ("keras", "keras_hub", ...); None for the
        user's own class, which loading needs as custom code, and for graph and none."""
        return providing_library(self.module, self.registered_name) if self.kind == CODE else None


@dataclass(frozen=True)
class ModelDescription:
    """Everything bninspect knows about one model file, without having run it."""

    source: str
    format: str
    bn_layers: tuple[BNLayer, ...]
    keras_version: str | None = None
    backend: str | None = None
    # Whether the layer graph is known, and with it every layer's config (`layers`, `outputs`):
    # from the file, or for a code architecture that is a Functional subclass, from building it
    # (`built`). False for weights-only files and other code architectures, whose BN layers may
    # still carry their own config (`BNLayer.has_config`).
    has_config: bool = True
    layers: tuple[Layer, ...] = ()
    # Paths of the layers whose outputs are the model outputs, resolved through nested models.
    outputs: tuple[str, ...] = ()
    # The model's own dtype policy name when the config records one (e.g. "mixed_float16").
    dtype_policy: str | None = None
    # Things the loader could not do and why, for the report (e.g. a group it could not map).
    notes: tuple[str, ...] = ()
    # The optimizer's step count (`optimizer.iterations`) saved with the model: how many training
    # steps updated the moving statistics. None when the file has none (weights-only files,
    # `include_optimizer=False`), it cannot be read, or it contradicts the statistics
    # (`credible_step_count`).
    training_steps: int | None = None
    # Graph, code or none. Left out, it follows has_config: a graph, or no architecture at all.
    architecture: Architecture | None = None
    # The KerasHub version that wrote the file (a preset's metadata.json), when it says.
    keras_hub_version: str | None = None
    # Whether the layer configs (and, for a Functional subclass, the graph) were read from the
    # model as Keras built it (`--build`, or a live model) rather than from a config in the file.
    # The arrays are the file's either way. A built code architecture may then have the graph.
    built: bool = False
    # The file holds the variables of a TF1 graph (a `tf.compat.v1.train.Saver` checkpoint): its BN
    # layers are variable scopes (`tf.compat.v1.layers`, contrib/slim `batch_norm`, hand-written),
    # made by graph code that has no layer objects, so no file of it has their configs: axis,
    # epsilon and momentum (`decay`) are only in that code. Architecture none.
    tf1_graph: bool = False

    def __post_init__(self) -> None:
        # `source` and `notes` are shown (reports, findings): a model's URL enters them redacted,
        # whoever builds the description. The loader keeps the real URL to fetch.
        object.__setattr__(self, "source", redact(self.source))
        object.__setattr__(self, "notes", tuple(redact(note) for note in self.notes))
        # Every reader, of a file or of a live model, gets the same step count for the same model.
        object.__setattr__(self, "training_steps", credible_step_count(self.training_steps, self.bn_layers))
        if self.architecture is None:
            object.__setattr__(self, "architecture", Architecture(GRAPH if self.has_config else NO_ARCHITECTURE))
            return
        kind = self.architecture.kind
        if (kind == GRAPH and not self.has_config) or (kind == NO_ARCHITECTURE and self.has_config) \
                or (kind == CODE and self.has_config and not self.built):
            raise ValueError(f"a {kind} architecture with has_config={self.has_config}, built={self.built}")

    @property
    def nothing_to_build(self) -> bool:
        """Whether building the architecture with Keras (`--build`) would read nothing that this
        description lacks, so `--build` leaves the file as read (`built` stays False).

        Building gives (probes/build.py `merged`) every BN layer's config (axis, momentum, epsilon,
        center, scale, trainable, dtype policy) and, when the built model is Functional, the layer
        graph. So there is nothing to build when
          - the file has no architecture (weights only): there is no class to build; or
          - every BN layer has its config, and the graph is known, or the file records that the
            class is not a Functional model (a tf-keras subclassed SavedModel: `is_graph_network`
            false): its call() is Python, which building does not turn into a graph either.
        A code architecture that does not say whether it is Functional is built: the graph may come.
        (The model's dtype policy, read only for a BN config without one, such files store too:
        in the graph's config, or in a SavedModel's metadata.)
        """
        if self.architecture.kind == NO_ARCHITECTURE:
            return True
        if any(not bn.has_config for bn in self.bn_layers):
            return False
        return self.has_config or self.architecture.functional is False

    @property
    def layer_count(self) -> int:
        return sum(1 for layer in self.layers if not layer.is_container and layer.class_name != "InputLayer")

    def layer(self, path: str) -> Layer | None:
        for layer in self.layers:
            if layer.path == path:
                return layer
        return None

    def consumers(self, path: str) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if path in layer.inbound)
