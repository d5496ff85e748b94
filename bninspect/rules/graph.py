"""Rules that follow the graph: BN009-BN012, BN019, and BN017 over the graph or the class of a code
architecture. BN009-BN012 and BN019 need the graph, so they are skipped for weights-only files and
code architectures (BN015 says so).

`Layer.inbound` is already resolved through nested models, so walking producers never has to
know about containers. Where the graph does not say enough (unknown rank, unknown data_format,
a Reshape on the way) the rules stay silent instead of guessing.

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from bninspect.thresholds import Thresholds
from bninspect.findings import Quantity, Severity
from bninspect.model import BN_CLASS_NAMES, CODE, BNLayer, Layer, ModelDescription
from bninspect.rules.base import Hit
from bninspect.rules.stats import counted
from bninspect.keras_classes import BUILTIN_LAYER_CLASSES, STORED_CODE_CLASSES, providing_library

DROPOUT_CLASSES = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                             "GaussianDropout", "AlphaDropout"})
# Elementwise layers: same shape and layout out as in, so the channel axis passes through them.
ELEMENTWISE_CLASSES = frozenset({
    "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "ThresholdedReLU", "Softmax", "Identity",
    "ActivityRegularization", "Masking", "GaussianNoise", "Rescaling", "UnitNormalization",
    "LayerNormalization", "GroupNormalization",
}) | BN_CLASS_NAMES
# Merges of same-shaped tensors keep the layout of their (first) input.
MERGE_CLASSES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"})
PASS_THROUGH_CLASSES = ELEMENTWISE_CLASSES | DROPOUT_CLASSES | MERGE_CLASSES
# Layers whose output puts features last whatever the rank.
FEATURES_LAST_CLASSES = frozenset({"Dense", "Embedding", "LSTM", "GRU", "SimpleRNN", "Bidirectional"})
# Layers with a bias per output channel (`use_bias`) that a following centred BN cancels.
BIAS_CLASSES = frozenset({
    "Dense", "Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D",
    "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Convolution2DTranspose",
    "Convolution3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
    "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D",
})
# ConvLSTM's channel axis depends on return_sequences (rank 5 vs 4): not worth guessing.
_UNKNOWN_LAYOUT_PREFIXES = ("ConvLSTM",)
_SPATIAL_SUFFIX = re.compile(r"([123])D(Transpose)?$")
KERAS1_DIM_ORDERING = {"th": "channels_first", "tf": "channels_last"}
MAX_WALK = 64  # producer chains longer than this are not followed (and cycles cannot loop)


class GraphIndex:
    """Layers by path, built once per rule call (ModelDescription.layer() is a linear scan)."""

    def __init__(self, description: ModelDescription) -> None:
        self.layers: dict[str, Layer] = {layer.path: layer for layer in description.layers}
        self.consumers: dict[str, list[Layer]] = {}
        for layer in description.layers:
            for producer in layer.inbound:
                self.consumers.setdefault(producer, []).append(layer)

    def producer(self, layer: Layer) -> Layer | None:
        """The single layer feeding `layer`, or None when there is none or several."""
        if len(layer.inbound) != 1:
            return None
        return self.layers.get(layer.inbound[0])

    def walk_back(self, layer: Layer, through: frozenset[str]) -> Iterator[Layer]:
        """Producers of `layer`, one after another, while they are of a class in `through`
        (the first producer that is not is yielded last). Merges are followed by their first input."""
        current = layer
        for _ in range(MAX_WALK):
            if not current.inbound:
                return
            producer = self.layers.get(current.inbound[0])
            if producer is None:
                return
            yield producer
            if producer.class_name not in through:
                return
            current = producer


def _bn_graph_layers(description: ModelDescription, index: GraphIndex) -> Iterator[tuple[BNLayer, Layer]]:
    for bn in description.bn_layers:
        layer = index.layers.get(bn.path)
        if layer is not None:
            yield bn, layer


# --- BN009 axis-mismatch -----------------------------------------------------------------------

@dataclass(frozen=True)
class ChannelLayout:
    """Where the layer feeding a BN puts its channels: axis 1 or -1, with the rank if known."""

    source: Layer
    channel_axis: int
    rank: int | None
    data_format: str | None


def _spatial_rank(class_name: str) -> int | None:
    match = _SPATIAL_SUFFIX.search(class_name)
    return int(match.group(1)) + 2 if match else None


def layout_of(layer: Layer) -> ChannelLayout | None:
    """The channel layout of `layer`'s output, when its class and config tell it."""
    config = layer.config
    if layer.class_name.startswith(_UNKNOWN_LAYOUT_PREFIXES):
        return None
    if layer.class_name == "Flatten" or (layer.class_name.startswith("Global") and not config.get("keepdims")):
        # (batch, features): both data formats end up with features on axis 1 == -1.
        return ChannelLayout(layer, -1, 2, None)
    if layer.class_name in FEATURES_LAST_CLASSES:
        rank = len(layer.input_shape) if layer.input_shape and layer.class_name == "Dense" else None
        return ChannelLayout(layer, -1, rank, None)
    # Keras 1 wrote `dim_ordering`: "th" (Theano) is channels first, "tf" channels last.
    data_format = config.get("data_format", KERAS1_DIM_ORDERING.get(config.get("dim_ordering")))
    if data_format not in ("channels_first", "channels_last"):
        return None  # None means "the keras.json default of whoever loads it": don't guess
    rank = _spatial_rank(layer.class_name)
    if rank is None and layer.input_shape:
        rank = len(layer.input_shape)
    return ChannelLayout(layer, 1 if data_format == "channels_first" else -1, rank, data_format)


def feeding_layout(index: GraphIndex, layer: Layer) -> ChannelLayout | None:
    """The layout of the nearest producer that has one, walking back through pass-through layers."""
    for producer in index.walk_back(layer, PASS_THROUGH_CLASSES):
        layout = layout_of(producer)
        if layout is not None:
            return layout
        if producer.class_name not in PASS_THROUGH_CLASSES:
            return None
    return None


def _normalised(axes: tuple[int, ...], rank: int) -> set[int]:
    return {axis % rank for axis in axes if -rank <= axis < rank}


def axis_matches(axes: tuple[int, ...], layout: ChannelLayout, rank: int | None) -> bool | None:
    """True/False when the BN axes do/don't include the channel axis; None when it can't be told."""
    if rank is not None:
        return layout.channel_axis % rank in _normalised(axes, rank)
    if layout.channel_axis in axes:
        return True
    return None  # e.g. axis=1 vs channels_last with unknown rank: 1 could be the last axis


def _axis_text(axes: tuple[int, ...]) -> str:
    return f"axis={axes[0]}" if len(axes) == 1 else f"axis={list(axes)}"


def axis_mismatch(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    index = GraphIndex(description)
    for bn, layer in _bn_graph_layers(description, index):
        if bn.axis is None:
            continue
        layout = feeding_layout(index, layer)
        rank = len(layer.input_shape) if layer.input_shape else (layout.rank if layout else None)
        if 0 in bn.axis or (rank is not None and -rank in bn.axis):
            yield Hit(bn.path, f"{_axis_text(bn.axis)} keeps the batch axis: one statistic per position "
                               f"in the batch, and inference batches of another size break",
                      severity=Severity.ERROR,
                      hint="axis names the axis that is KEPT: use the channel axis (-1 for channels_last, "
                           "1 for channels_first)")
            continue
        if layout is None or axis_matches(bn.axis, layout, rank) is not False:
            continue
        expected = layout.channel_axis
        fmt = f", {layout.data_format}" if layout.data_format else ""
        filters = layout.source.config.get("filters") or layout.source.config.get("units")
        counts = (f"; BN keeps {bn.channels} statistics but {layout.source.name} has {filters} channels"
                  if isinstance(filters, int) and filters != bn.channels else "")
        yield Hit(bn.path, f"{_axis_text(bn.axis)} is not the channel axis {expected} of "
                           f"{layout.source.path} ({layout.source.class_name}{fmt}){counts}",
                  hint=f"use BatchNormalization(axis={expected}): axis names the channel axis that is kept")


# --- BN010 bn-output-layer ---------------------------------------------------------------------

def bn_output_layer(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    bn_paths = {bn.path for bn in description.bn_layers}
    for path in dict.fromkeys(description.outputs):
        if path in bn_paths:
            yield Hit(path, "the layer produces a model output: at inference it rescales with the stored "
                            "moving statistics and does not standardise the predictions")


# --- BN011 redundant-bias ----------------------------------------------------------------------

def _uses_bias(layer: Layer) -> bool:
    return layer.config.get("use_bias", layer.config.get("bias")) is True


def _activation_name(layer: Layer) -> str | None:
    """The name of a layer's built-in activation: Keras 2 and 3 write built-ins as strings
    ("relu"), Keras 3 writes other callables as serialised objects; None when there is none."""
    activation = layer.config.get("activation")
    if isinstance(activation, dict):
        config = activation.get("config")
        name = config if isinstance(config, str) else config.get("name") if isinstance(config, dict) else None
        return str(name or activation.get("class_name"))
    return activation if isinstance(activation, str) else None


def has_linear_activation(layer: Layer) -> bool:
    """True when the layer's output is its affine result: no activation or "linear". A built-in
    relu/elu/... acts after the bias, so a BN that follows does not cancel that bias."""
    return _activation_name(layer) in (None, "linear")


def redundant_bias(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    index = GraphIndex(description)
    bn_by_path = {bn.path: bn for bn in description.bn_layers}
    for bn, layer in _bn_graph_layers(description, index):
        producer = index.producer(layer)
        if bn.center is not True or producer is None or producer.class_name not in BIAS_CLASSES:
            continue
        if not _uses_bias(producer) or not has_linear_activation(producer):
            continue
        # The bias is only wasted if every consumer is a centred BN: a skip connection still sees it.
        consumers = index.consumers.get(producer.path, [])
        if not all(c.path in bn_by_path and bn_by_path[c.path].center is True for c in consumers):
            continue
        layout = layout_of(producer)
        rank = len(layer.input_shape) if layer.input_shape else (layout.rank if layout else None)
        if bn.axis is not None and layout is not None and axis_matches(bn.axis, layout, rank) is False:
            continue  # BN normalises another axis: the per-channel bias is not cancelled
        yield Hit(bn.path, f"{producer.path} ({producer.class_name}, use_bias=True, linear activation) feeds "
                           f"this centred BN directly: the mean subtraction cancels its {bn.channels} bias values "
                           f"and beta takes their place",
                  quantities=(counted("{} bias values", bn.channels, worse=None),))


# --- BN012 dropout-before-bn -------------------------------------------------------------------

def _dropout_rate(layer: Layer) -> float | None:
    rate = layer.config.get("rate", layer.config.get("p"))
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None


def dropout_before_bn(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    index = GraphIndex(description)
    for bn, layer in _bn_graph_layers(description, index):
        for producer in index.walk_back(layer, ELEMENTWISE_CLASSES - BN_CLASS_NAMES):
            if producer.class_name in DROPOUT_CLASSES:
                rate = _dropout_rate(producer)
                if rate == 0:
                    break  # rate 0 is the identity
                rate_text = f", rate {rate:g}" if rate is not None else ""
                yield Hit(bn.path, f"{producer.path} ({producer.class_name}{rate_text}) feeds this BN: the "
                                   f"variance BN sees in training differs from the one at inference",
                          quantities=(Quantity("dropout rate {}", rate, f"{rate:g}"),) if rate is not None else ())
                break


# --- BN019 fine-tune-training-mode ------------------------------------------------------------

# The names keras.applications (Keras 3 and tf-keras) give its models with BatchNormalization;
# a nested model keeps its name when it is saved, so the name says which architecture it is.
APPLICATION_MODEL_NAMES = re.compile(r"""
    resnet(50|101|152)(v2)? | resnet_rs_?\d+ | mobilenet_\d\.\d+_\d+ | mobilenetv2_\d\.\d+_\d+
    | mobilenet_?v3_?(small|large) | efficientnetb[0-7] | efficientnetv2-(b[0-3]|s|m|l) | densenet(121|169|201)
    | inception_v3 | inception_resnet_v2 | xception | nasnet(_?mobile|_?large)? | regnet[xy]\d{3}
""", re.IGNORECASE | re.VERBOSE)
# KerasHub (and its predecessors') registered-name prefixes: `keras_hub>ResNetBackbone`.
HUB_PACKAGES = ("keras_hub", "keras_nlp", "keras_cv")


def pretrained_backbone(layer: Layer) -> str | None:
    """What a nested model is when it is a known pretrained backbone, else None: a Keras
    Applications model recognised by its name, or a KerasHub backbone class."""
    if layer.is_container and APPLICATION_MODEL_NAMES.fullmatch(layer.name):
        return f"Keras Applications {layer.name}"
    package = (layer.registered_name or "").partition(">")[0] or (layer.module or "").partition(".")[0]
    if layer.class_name.endswith("Backbone") and package in HUB_PACKAGES:
        return f"KerasHub {layer.class_name}"
    return None


# Keras 3 before 3.16 lets `fit`'s training=True override a training=False recorded in a
# functional graph: the BN layers of a base called with training=False still update their moving
# statistics during fit (measured with Keras 3.15.1; tests/test_applications.py pins it). tf-keras
# and Keras 2 honour the argument, and so does Keras after keras-team/keras pull request 23364
# ("the arguments passed during functional construction should take precedence"), not in 3.15.
TRAINING_FALSE_HONOURED_FROM = (3, 16)


def training_false_is_ignored(keras_version: str | None) -> bool:
    """Whether the Keras that wrote the file lets fit override a recorded training=False."""
    match = re.match(r"(\d+)\.(\d+)", keras_version or "")
    return bool(match) and (3, 0) <= (int(match[1]), int(match[2])) < TRAINING_FALSE_HONOURED_FROM


def fine_tune_training_mode(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    ignored = training_false_is_ignored(description.keras_version)
    for layer in description.layers:
        what = pretrained_backbone(layer)
        called_false = bool(layer.call_training) and all(value is False for value in layer.call_training)
        if what is None or (called_false and not ignored):
            continue
        # Frozen layers run in inference mode whatever the call says (BN013 reports them). A
        # KerasHub backbone's BN layers are read from the weights, without their own config.
        base_trainable = layer.config.get("trainable") is not False
        inside = [bn for bn in description.bn_layers if bn.path.startswith(layer.path + "/")]
        training = [bn for bn in inside if base_trainable and bn.trainable is not False]
        if not training:
            continue
        if called_false:
            yield Hit(layer.path, f"the pretrained base {layer.path} ({what}) is called with training=False, but "
                                  f"Keras {description.keras_version} lets fit's training=True override an argument "
                                  f"recorded in the graph: {len(training)} of its {len(inside)} BN layers are trainable and "
                                  f"still normalise with batch statistics and overwrite the pretrained moving "
                                  f"statistics during fit",
                      quantities=(counted("{} trainable BN layers", len(training)),),
                      hint="freeze the base's BatchNormalization layers (`layer.trainable = False` for each): "
                           "frozen BN layers run in inference mode in every Keras version")
            continue
        how = "inside a Sequential, which passes no training argument" if not layer.call_training \
            else "without training=False"
        yield Hit(layer.path, f"the pretrained base {layer.path} ({what}) is called {how}, and "
                              f"{len(training)} of its {len(inside)} BN layers are trainable: fine-tuning "
                              f"normalises with batch statistics and overwrites the pretrained moving "
                              f"statistics with every batch",
                  quantities=(counted("{} trainable BN layers", len(training)),))


# --- BN017 code-in-model -----------------------------------------------------------------------
#
# Two different things, with different consequences, are "code in a model":
# - code STORED in the file (a Lambda's marshalled bytecode, a TorchModuleWrapper's pickle, a
#   Keras 3 `__lambda__` object): loading runs it. Keras 3 refuses unless safe_mode=False;
#   tf.keras and Keras 2 run a legacy .h5's Lambda without asking (measured with tf-keras 2.21).
# - classes and functions the file only NAMES (custom layers, activations, a Keras 3 Lambda of a
#   named function): the file holds no code for them, and Keras fails ("Unknown layer: 'Name'")
#   whatever safe_mode is, until the user supplies them. Nothing from the file runs.

STORED_CODE_HINT = ("replace stored code with built-in layers (a Lambda dividing by 255: Rescaling(1 / 255)) or a "
                    "registered class; load the file only if you trust it (safe_mode=False; bninspect: --unsafe)")
NAMED_CODE_HINT = ("to load the model, supply the class (custom_objects, or import the module that registers it; "
                   "bninspect: --custom-objects FILE.py); safe_mode changes nothing")


@dataclass(frozen=True)
class CodeNeeds:
    """What loading a layer (or the model's class) with Keras needs besides Keras' own code."""

    stored: tuple[str, ...] = ()  # code stored in the file, which loading would run
    named: tuple[str, ...] = ()  # classes and functions the file only names, which the user supplies

    def __bool__(self) -> bool:
        return bool(self.stored or self.named)

    def message(self) -> str:
        clauses = []
        if self.stored:
            clauses.append(f"{_listed(self.stored)} stored in the file: loading the model with Keras runs that "
                           f"code (Keras 3 refuses it unless safe_mode=False; tf.keras and Keras 2 run it from an "
                           f".h5 without asking)")
        if self.named:
            definitions = "the definition is" if len(self.named) == 1 else "the definitions are"
            clauses.append(f"{_listed(self.named)}, only named in the file (no code): loading the model with Keras "
                           f"fails until {definitions} supplied (custom_objects), whatever safe_mode; no code from "
                           f"the file runs")
        return "; and ".join(clauses)

    def hint(self) -> str:
        if self.stored and self.named:
            return f"{STORED_CODE_HINT}; and {NAMED_CODE_HINT}"
        return STORED_CODE_HINT if self.stored else NAMED_CODE_HINT


def _provided(module: str, registered: Any) -> bool:
    """Keras' own classes and those of libraries such as keras_hub, which Keras loads by their
    registered names once the library is installed: no code from the user."""
    return providing_library(module, registered if isinstance(registered, str) else None) is not None


def _serialised_objects(node: Any, depth: int = 0) -> tuple[list[str], list[str]]:
    """(stored, named) inside a Keras 3 layer config: the Python lambdas whose bytecode it holds
    (`__lambda__` objects), and the serialised objects that are not Keras' own (custom layers,
    initializers, activations, ...), by name. Keras 2 configs have no `module` key.

    A loop over a stack rather than recursive generators: it runs over every layer's config, and
    a model with thousands of layers made the generators a noticeable part of `bninspect check`."""
    stored: list[str] = []
    named: list[str] = []
    stack = [(node, depth)]
    while stack:
        node, depth = stack.pop()
        if depth > 32:
            continue
        if isinstance(node, dict):
            module = node.get("module")
            if node.get("class_name") == "__lambda__":
                stored.append("a Python lambda in its config")
            elif "class_name" in node and isinstance(module, str):
                registered = node.get("registered_name")
                if not _provided(module, registered):
                    config = node.get("config")
                    named.append(registered if isinstance(registered, str) and ">" in registered
                                 else config if node.get("class_name") == "function" and isinstance(config, str)
                                 else f"{module}.{node.get('class_name')}")
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return stored, named


_WRAPPED_KEYS = ("layer", "cell", "forward_layer", "backward_layer")


def _keras2_custom_classes(config: Mapping[str, Any], depth: int = 0) -> Iterator[str]:
    """Classes wrapped inside a Keras 2 layer (TimeDistributed, Bidirectional, RNN cells)."""
    if depth > 8:
        return
    wrapped = [config.get(key) for key in _WRAPPED_KEYS] + list(config.get("cells") or [])
    for entry in wrapped:
        if isinstance(entry, dict) and isinstance(entry.get("class_name"), str):
            name = entry["class_name"]
            if name in STORED_CODE_CLASSES or name not in BUILTIN_LAYER_CLASSES:
                yield name
            if isinstance(entry.get("config"), dict):
                yield from _keras2_custom_classes(entry["config"], depth + 1)


def _lambda_of_named_function(layer: Layer) -> bool:
    """A Lambda whose config keeps its function by name, not as bytecode: Keras 2 writes
    `function_type: "function"`, Keras 3 a serialised function object instead of `__lambda__`."""
    function = layer.config.get("function")
    return layer.class_name == "Lambda" and (
        layer.config.get("function_type") == "function"
        or (isinstance(function, dict) and function.get("class_name") != "__lambda__"))


def _stored_code(layer: Layer) -> str | None:
    """The code a Lambda or TorchModuleWrapper layer stores in the file; None when it stores none."""
    what = STORED_CODE_CLASSES.get(layer.class_name)
    if what is None or _lambda_of_named_function(layer):
        return None
    return f"a {layer.class_name} layer with {what}"


def _listed(items: tuple[str, ...], shown: int = 5) -> str:
    """"a, b and c"; beyond `shown` items, "a, b, c, d, e and 3 more"."""
    if len(items) > shown:
        return f"{', '.join(items[:shown])} and {len(items) - shown} more"
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def code_needs(layer: Layer) -> CodeNeeds:
    """What loading `layer` with Keras needs that is not Keras' own; empty when nothing."""
    stored: list[str] = []
    named: list[str] = []
    code = _stored_code(layer)
    if code is not None:
        stored.append(code)
    if _lambda_of_named_function(layer) and isinstance(layer.config.get("function"), str):
        named.append(f"function {layer.config['function']}")  # Keras 2 (Keras 3's is a custom object below)
    if layer.is_container:
        return CodeNeeds(tuple(stored), tuple(named))  # the nested layers are checked on their own
    if layer.module is not None or layer.registered_name is not None:
        registered = layer.registered_name or ""
        if providing_library(layer.module, layer.registered_name) is None:
            module = f" (module {layer.module})" if layer.module else ""
            named.append(f"custom class {registered or layer.class_name}{module}")
        lambdas, objects = _serialised_objects(dict(layer.config))
        if code is None:  # a Lambda's own `__lambda__` is the layer's stored code, said already
            stored.extend(sorted(set(lambdas)))
    else:
        if layer.class_name not in BUILTIN_LAYER_CLASSES:
            named.append(f"custom class {layer.class_name}")
        wrapped = set(_keras2_custom_classes(layer.config))
        stored.extend(f"a wrapped {name} layer with {STORED_CODE_CLASSES[name]}"
                      for name in sorted(wrapped & set(STORED_CODE_CLASSES)))
        objects = list(wrapped - set(STORED_CODE_CLASSES))
    named.extend(f"custom object {name} in its config" for name in sorted(set(objects)))
    return CodeNeeds(tuple(stored), tuple(named))


def code_in_model(description: ModelDescription, thresholds: Thresholds) -> Iterator[Hit]:
    architecture = description.architecture
    if architecture.kind == CODE:
        # The model itself is a class; it is judged like a layer of that class, with its
        # constructor arguments as the config (they may name more custom objects).
        model = Layer(path="", name=architecture.class_name or "", class_name=architecture.class_name or "",
                      config=architecture.config, module=architecture.module,
                      registered_name=architecture.registered_name)
        needs = code_needs(model)
        if needs:
            yield Hit(None, f"the architecture is code: {needs.message()}", hint=needs.hint())
    for layer in description.layers:
        needs = code_needs(layer)
        if needs:
            yield Hit(layer.path, needs.message(), hint=needs.hint())
