"""A backend's errors while a model runs, as one line: the file, the layer, what to do.

Each backend adapter (`probes.backends`) names its runtime errors (TensorFlow's OpError, JAX's
JaxRuntimeError, torch's RuntimeError) and its hint; this module turns them into one line.

TensorFlow raises `tf.errors.OpError` subclasses (UnimplementedError, InvalidArgumentError, ...)
whose message is many lines: "Graph execution error", the Python frames where the failing op was
defined, the reason, and the op's node name (`{{node model_1/conv_1/convolution}}`). In eager
mode Keras 3 prefixes "Exception encountered when calling Conv2D.call()" instead of a node name.
`model_run` turns them into a `ModelRunError` naming the Keras layer (the node name's scopes map
back to layer names; Keras appends `_1`, `_2` to a scope it opens twice), or the op when no layer
matches.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

from bninspect.errors import ModelRunError
from bninspect.tf_runtime import OneDNNSetting, onednn_setting

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NODE = re.compile(r"\{\{node ([^}\s]+)\}\}|Detected at node '?([^\s']+?)'? defined at")
_CALLING_LAYER = re.compile(r"Exception encountered when calling layer ['\"]([^'\"]+)['\"] \(type (\w+)\)")
_CALLING_CLASS = re.compile(r"Exception encountered when calling (\w+)\.call\(\)")
_TF_TOKENS = re.compile(r"\[\[\{\{node [^}]*\}\}\]\]|\{\{function_node [^}]*\}\}|\{\{node [^}]*\}\}|\[Op:[^\]]*\]")
_NOISE = ('File "', "Detected at node", "Graph execution error", "Exception encountered when calling",
          "Arguments received by", "Call arguments received by")
_SCOPE_SUFFIX = re.compile(r"_\d+$")
MAX_REASON = 300
BUILD_HINT = "the backend cannot build the model's graph from what its config declares; --debug shows the traceback"
DATA_HINT = "check that the data fits the model's inputs; --debug shows the backend's traceback"


class GraphBuildError(Exception):
    """What Keras or TensorFlow raised while tracing the model into a graph, on its way to
    `model_run`, which names the file. The original error is the cause."""


@contextmanager
def tracing_errors(passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Around a backend's tracing of the model: its TypeError or ValueError become GraphBuildError.

    While tracing, TensorFlow and JAX raise these instead of a runtime error for a model they
    cannot build into a graph: an op given a dtype it does not take (a layer whose config says
    int32 or complex128), a name TensorFlow refuses as a scope, Python control flow on a traced
    value. `passthrough` errors (TensorFlow's request for autograph) reach the caller as they are."""
    try:
        yield
    except passthrough:
        raise
    except (TypeError, ValueError) as error:
        raise GraphBuildError(str(error)) from error


@contextmanager
def model_run(source: str, model: Any, adapter: Any) -> Iterator[None]:
    """Re-raise the backend's runtime errors (`adapter.runtime_errors()`) and the graph-building
    errors of `tracing_errors` inside the block as ModelRunError (cause attached)."""
    try:
        yield
    except adapter.runtime_errors() as error:
        raise run_error(source, model, error, adapter.hint(_reason(error))) from error
    except GraphBuildError as error:
        raise run_error(source, model, error.__cause__ or error, BUILD_HINT) from error.__cause__


def _reason(error: BaseException) -> str:
    return tf_reason(_ANSI.sub("", str(getattr(error, "message", None) or error))) or type(error).__name__


def run_error(source: str, model: Any, error: BaseException, hint: str | None = None) -> ModelRunError:
    message = _ANSI.sub("", str(getattr(error, "message", None) or error))
    reason = tf_reason(message) or type(error).__name__
    return ModelRunError(source, _where(model, message, reason), reason, hint if hint is not None else DATA_HINT)


def tf_reason(message: str) -> str:
    """TensorFlow's reason without the frames, node names and Keras' call notes, on one line."""
    kept = []
    for paragraph in re.split(r"\n\s*\n", _ANSI.sub("", message)):
        stripped = paragraph.strip()
        if stripped and not stripped.startswith(_NOISE):
            kept.append(stripped)
    text = " ".join(_TF_TOKENS.sub(" ", " ".join(kept)).split())
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def layers_with_paths(container: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, layer) of every layer, walking nested models; the top model's name is not in paths."""
    for layer in list(getattr(container, "layers", None) or ()):
        path = prefix + layer.name
        yield path, layer
        yield from layers_with_paths(layer, path + "/")


def _named(layer: Any, path: str) -> str:
    return f"layer {path} ({type(layer).__name__})"


def layer_of_node(model: Any, node: str) -> str | None:
    """The layer a node name's scopes lead to, as `layer block/conv (Conv2D)`: for
    `model_1/block/conv_1/convolution`. None when no scope names a layer."""
    container, path, found = model, [], None
    for scope in node.split("/")[:-1]:  # the last part is the op itself
        children = {layer.name: layer for layer in list(getattr(container, "layers", None) or ())}
        child = children.get(scope) or children.get(_SCOPE_SUFFIX.sub("", scope))
        if child is None:
            continue  # the model's own scope, or a scope inside a layer
        path.append(child.name)
        container = found = child
    return None if found is None else _named(found, "/".join(path))


def _where(model: Any, message: str, reason: str) -> str:
    node_match = _NODE.search(message)
    node = None if node_match is None else (node_match.group(1) or node_match.group(2))
    if node is not None:
        located = layer_of_node(model, node)
        if located is not None:
            return located
    layers = list(layers_with_paths(model))
    by_name = _CALLING_LAYER.search(message)
    if by_name is not None:
        matches = [(path, layer) for path, layer in layers if layer.name == by_name.group(1)]
        if len(matches) == 1:
            return _named(matches[0][1], matches[0][0])
    by_class = _CALLING_CLASS.search(message) or by_name
    if by_class is not None:
        class_name = by_class.group(by_class.lastindex)
        candidates = [(path, layer) for path, layer in layers if type(layer).__name__ == class_name]
        if _is_nchw_problem(reason):
            candidates = [item for item in candidates
                          if getattr(item[1], "data_format", None) == "channels_first"] or candidates
        if len(candidates) == 1:
            return _named(candidates[0][1], candidates[0][0])
        if candidates:
            shown = ", ".join(path for path, _ in candidates[:4]) + (", ..." if len(candidates) > 4 else "")
            return f"one of the {class_name} layers ({shown})"
        return f"a {class_name} layer"
    return f"op {node}" if node is not None else "the model"


def _is_nchw_problem(reason: str) -> bool:
    return "NHWC" in reason and "NCHW" in reason


def nchw_hint(reason: str, setting: OneDNNSetting | None = None) -> str | None:
    """What to do when TensorFlow cannot run a channels_first convolution (None: another reason).
    `setting`: TF_ENABLE_ONEDNN_OPTS as TensorFlow saw it (default: as it was at its import)."""
    if not _is_nchw_problem(reason):
        return None
    setting = setting if setting is not None else onednn_setting()
    if not setting.imported_by_bninspect:
        return ("channels_first convolutions need oneDNN on this CPU, and TensorFlow was imported before "
                "bninspect could turn it on: set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is imported (restart "
                "the notebook), or convert the model to channels_last")
    if not setting.enabled_by_request:
        return (f"channels_first convolutions need oneDNN on this CPU: unset TF_ENABLE_ONEDNN_OPTS (it is "
                f"{setting.value!r}) or set it to 1, or convert the model to channels_last")
    return ("channels_first convolutions need oneDNN, which this TensorFlow build or CPU does not provide even "
            "with TF_ENABLE_ONEDNN_OPTS=1: convert the model to channels_last")
