"""Load a model file with Keras for the dynamic analysis, refusing models that would run code.

Before Keras sees the file, its config is read statically (`bninspect.loaders`, JSON only) and the
model is refused when it holds a Lambda layer (its bytecode is in the file) unless `--unsafe`, or
classes that are not Keras' own unless `--custom-objects FILE.py` provides them. Keras then loads in
safe mode as a second line of defence.

Which Keras loads it follows who wrote it: Keras 3 for `.keras` files and Keras-3-written `.h5`;
tf-keras (`import tf_keras`) for `.h5` written by Keras/tf.keras 1.x-2.x and for SavedModel
directories, falling back to Keras 3's legacy HDF5 reader when tf-keras is not installed.

A code architecture (a class, not a layer graph) loads the same way once its class is available:
a library's class (`keras_hub>ResNetImageClassifier`) when the library is installed, the user's
own class only from `--custom-objects`. A KerasHub preset directory loads with its class's
`from_preset`, the class named by the preset's `task.json` (else `config.json`).

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import ast
import os
import re
import runpy
from dataclasses import dataclass
from typing import Any, Mapping

from bninspect.data import InputSpec
from bninspect.errors import ModelRefused, UsageProblem, one_line
from bninspect.keras_runtime import import_keras
from bninspect.model import CODE, CONTAINER_CLASS_NAMES, NO_ARCHITECTURE, Layer, ModelDescription
from bninspect.probes import budget
from bninspect.probes.run_errors import tf_reason


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # a keras.Model or tf_keras.Model
    keras: str  # "keras 3.15.1" / "tf_keras 2.21.0"
    description: ModelDescription | None  # the static reading, None for in-memory models


# What keras / tf_keras raise for a file they cannot turn into a model (unknown class, bad config,
# missing weights, unsupported format). Anything else is a bug and keeps its traceback.
_KERAS_LOAD_ERRORS = (ValueError, TypeError, KeyError, OSError, AttributeError, NotImplementedError,
                      ImportError, IndexError, LookupError)


def _keras_load_errors() -> tuple[type[BaseException], ...]:
    """`_KERAS_LOAD_ERRORS` and the backend's runtime errors: building a layer creates its
    variables, and TensorFlow raises ResourceExhaustedError for one larger than it can allocate (a
    Dense layer whose config declares 10^12 units), JAX and torch their own errors."""
    from bninspect.probes import backends

    return (*_KERAS_LOAD_ERRORS, *backends.load_errors(backends.backend_name()))


def load_custom_objects(path: str | os.PathLike) -> dict[str, Any]:
    """Run the user's Python file and collect its public top-level classes and functions.

    This executes the file: it is only called when the user passed `--custom-objects FILE.py`.
    """
    try:
        namespace = runpy.run_path(str(path), run_name="bninspect_custom_objects")
    except (OSError, SyntaxError, ImportError) as error:
        raise UsageProblem(f"--custom-objects {path}: cannot run the file ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]})") from None
    objects = {name: value for name, value in namespace.items()
               if not name.startswith("_") and (isinstance(value, type) or callable(value))
               and not isinstance(value, type(os))}
    if not objects:
        raise UsageProblem(f"--custom-objects {path}: defines no classes or functions")
    return objects


def _keras_version_major(description: ModelDescription) -> int | None:
    version = description.keras_version or ""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _uses_tf_keras(description: ModelDescription) -> bool:
    if description.format == "savedmodel":
        return True
    major = _keras_version_major(description)
    return description.format == "h5-legacy" and (major is None or major < 3)


def _tf_keras():
    try:
        import tf_keras
    except ImportError:
        return None
    return tf_keras


def _is_builtin(layer: Layer, keras_module: Any) -> bool:
    if layer.class_name in CONTAINER_CLASS_NAMES or layer.class_name == "InputLayer":
        return True
    if layer.module is not None:
        # Keras 3 configs name the module; Keras' own classes live under `keras.` and are not
        # registered under a `package>Name` key.
        own_module = layer.module == "keras" or layer.module.startswith("keras.")
        return own_module and (layer.registered_name is None or ">" not in layer.registered_name)
    if keras_module.__name__ == "tf_keras":
        from tf_keras.src.layers import serialization

        return serialization.get_builtin_layer(layer.class_name) is not None
    return hasattr(keras_module.layers, layer.class_name)


def code_in_model(description: ModelDescription, keras_module: Any,
                  custom_objects: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(paths of Lambda layers, class names not provided by Keras nor by custom_objects)."""
    provided = set(custom_objects or {})
    lambdas = [layer.path for layer in description.layers if layer.class_name == "Lambda"]
    custom = []
    for layer in description.layers:
        if layer.class_name == "Lambda" or _is_builtin(layer, keras_module):
            continue
        registered = (layer.registered_name or "").rpartition(">")[2]
        if layer.class_name not in provided and registered not in provided:
            custom.append(layer.class_name)
    return lambdas, sorted(set(custom))


def _with_registered_names(description: ModelDescription,
                           custom_objects: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Also key each custom object by the registered name the config uses (`package>Name`).

    Keras 3 looks a class up by its registered name first; the user's file only names `Name`.
    """
    if not custom_objects:
        return custom_objects
    aliased = dict(custom_objects)
    registered_names = [layer.registered_name for layer in description.layers]
    registered_names.append(description.architecture.registered_name)
    for registered in registered_names:
        registered = registered or ""
        short = registered.rpartition(">")[2]
        if ">" in registered and short in custom_objects:
            aliased.setdefault(registered, custom_objects[short])
    return aliased


def _refuse_custom(source: str, classes: list[str]) -> ModelRefused:
    return ModelRefused(
        f"{source}: refused: the model uses classes that are not part of Keras ({', '.join(classes)}); "
        "loading it would run their code. Pass --custom-objects FILE.py with their definitions if you trust them")


def _refuse_code(source: str, description: ModelDescription, keras_module: Any, unsafe: bool,
                 custom_objects: Mapping[str, Any] | None) -> None:
    lambdas, custom = code_in_model(description, keras_module, custom_objects)
    if custom:
        raise _refuse_custom(source, custom)
    if lambdas and not unsafe:
        shown = ", ".join(lambdas[:5]) + (", ..." if len(lambdas) > 5 else "")
        raise ModelRefused(
            f"{source}: refused: the model has Lambda layers ({shown}) whose Python code is stored in the file; "
            "loading it would run that code. Pass --unsafe if you trust the file")


def load_model(path: str | os.PathLike, *, unsafe: bool = False, custom_objects: Mapping[str, Any] | None = None,
               description: ModelDescription | None = None) -> LoadedModel:
    """Load a model file with Keras after the static safety checks. Raises ModelRefused / ModelReadError.

    `description` is the file's static reading when the caller has it already."""
    from bninspect import loaders

    source = str(path)
    description = description if description is not None else loaders.load(source)
    # Keras reads every object of the file with HDF5's own driver, not only the BN arrays the
    # static reading checked.
    loaders.refuse_outside_storage(source)
    # Keras on the chosen backend, before tf_keras (on TensorFlow: oneDNN on unless the user chose).
    backend = str(import_keras(needed_for=f"{source}: loading the model with Keras").config.backend())
    architecture = description.architecture
    if architecture.kind == NO_ARCHITECTURE:
        raise ModelRefused(f"{source}: a weights-only file has no architecture to run; probe the full model file")
    budget.check_declared_shapes(source, description)  # before Keras builds variables on them
    custom_objects = _with_registered_names(description, custom_objects)
    _refuse_tensorflow_only(source, description, backend)
    if architecture.kind == CODE:
        return _load_code(source, description, unsafe, custom_objects)
    # tf-keras runs on TensorFlow only; on another backend Keras 3's own HDF5 reader reads a
    # Keras 2 .h5, as it does on TensorFlow without tf-keras.
    tf_keras = _tf_keras() if _uses_tf_keras(description) and backend == "tensorflow" else None
    if description.format == "savedmodel" and tf_keras is None:
        raise ModelRefused(f"{source}: loading a SavedModel directory needs tf-keras (pip install tf-keras)")
    if tf_keras is not None:
        _refuse_code(source, description, tf_keras, unsafe, custom_objects)
        return LoadedModel(_load_with_tf_keras(tf_keras, source, unsafe, custom_objects),
                           f"tf_keras {tf_keras.__version__}", description)
    import keras

    _refuse_code(source, description, keras, unsafe, custom_objects)
    return LoadedModel(_load_with_keras(keras, source, description, unsafe, custom_objects),
                       f"keras {keras.__version__}", description)


def _refuse_tensorflow_only(source: str, description: ModelDescription, backend: str) -> None:
    """A SavedModel loads only with tf-keras, which runs on TensorFlow: one line on another backend."""
    if description.format == "savedmodel" and backend != "tensorflow":
        raise ModelRefused(f"{source}: a SavedModel directory loads only with tf-keras on TensorFlow, and Keras runs "
                           f"on {backend}: run with --backend tensorflow (pip install 'bninspect[tensorflow]' tf-keras)")


# pip's names of the libraries that register Keras classes (`keras_classes.LIBRARY_MODULE_ROOTS`).
LIBRARY_PACKAGES = {"keras_hub": "keras-hub", "keras_nlp": "keras-nlp", "keras_cv": "keras-cv"}


def _load_code(source: str, description: ModelDescription, unsafe: bool,
               custom_objects: Mapping[str, Any] | None) -> LoadedModel:
    """A code architecture: its class must come from Keras, an installed library or the user's
    --custom-objects; then the format's loader builds it and loads the file's weights."""
    architecture = description.architecture
    library = architecture.library
    if library is None:
        provided = set(custom_objects or {})
        names = {architecture.class_name, architecture.registered_name}
        if not names & provided:
            raise _refuse_custom(source, [architecture.qualified_name or str(architecture.class_name)])
    elif library in LIBRARY_PACKAGES:
        _import_library(source, library, architecture.qualified_name)
    if description.format == "savedmodel":
        tf_keras = _tf_keras()
        if tf_keras is None:
            raise ModelRefused(f"{source}: loading a SavedModel directory needs tf-keras (pip install tf-keras)")
        return LoadedModel(_load_with_tf_keras(tf_keras, source, unsafe, custom_objects),
                           f"tf_keras {tf_keras.__version__}", description)
    import keras

    if description.format == "kerashub-preset":
        model = _load_preset(keras, source, architecture.registered_name or str(architecture.class_name), unsafe,
                             custom_objects)
    elif description.format == "keras-v3":
        model = _load_with_keras(keras, source, description, unsafe, custom_objects)
    else:
        raise ModelRefused(f"{source}: a {description.format} file of class {architecture.qualified_name} cannot "
                           "be loaded with Keras; save the model with model.save('model.keras')")
    return LoadedModel(model, f"keras {keras.__version__}", description)


def _import_library(source: str, library: str, class_name: str | None) -> Any:
    import importlib

    try:
        return importlib.import_module(library)
    except ImportError:
        raise ModelRefused(f"{source}: the model is the {library} class {class_name}: loading it needs {library} "
                           f"installed (pip install {LIBRARY_PACKAGES[library]})") from None


def _load_preset(keras: Any, source: str, class_name: str, unsafe: bool,
                 custom_objects: Mapping[str, Any] | None) -> Any:
    """A KerasHub preset directory, with the `from_preset` of the class its config names (a task
    preset's `task.json` names the task, whose from_preset also loads the backbone's weights)."""
    from keras.src.saving import serialization_lib

    cls = keras.saving.get_registered_object(class_name, custom_objects=dict(custom_objects or {}))
    if cls is None or not hasattr(cls, "from_preset"):
        raise ModelRefused(f"{source}: no installed library provides the preset's class {class_name}")
    try:
        with serialization_lib.SafeModeScope(not unsafe), \
                keras.saving.custom_object_scope(dict(custom_objects or {})):
            return cls.from_preset(source)
    except _keras_load_errors() as error:
        raise _load_error(source, error) from error


def built_input_specs(model: Any) -> tuple[InputSpec, ...]:
    """The inputs of a subclassed model, which has no `inputs`: the shapes it was built with
    (Keras 3's build config, tf-keras' saved call signature). Empty when it records none."""
    save_spec = getattr(model, "save_spec", None)
    if callable(save_spec):  # tf-keras
        spec = save_spec()
        arguments = spec[0] if spec else ()
        import tensorflow as tf

        return tuple(InputSpec(str(tensor.name or f"input_{position}"), tuple(tensor.shape)[1:], tensor.dtype.name)
                     for position, tensor in enumerate(tf.nest.flatten(arguments)))
    get_build_config = getattr(model, "get_build_config", None)
    build = get_build_config() if callable(get_build_config) else None
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if not isinstance(shape, (list, tuple)) or not all(size is None or isinstance(size, int) for size in shape):
        return ()  # several inputs, or none recorded
    dtype = getattr(getattr(model, "dtype_policy", None), "compute_dtype", None) or "float32"
    return (InputSpec("input_0", tuple(shape)[1:], str(dtype)),)


def load_weights(loaded: LoadedModel, path: str) -> Any:
    """`loaded`'s model with the weights of the weights-only file `path` (for `--architecture`)."""
    from bninspect import loaders

    loaders.refuse_outside_storage(path)
    try:
        loaded.model.load_weights(path)
    except _KERAS_LOAD_ERRORS as error:
        raise ModelRefused(f"{path}: the weights do not fit the --architecture model ({one_line(error)})") from error
    return loaded.model


def _load_error(source: str, error: BaseException) -> ModelRefused:
    return ModelRefused(f"{source}: Keras cannot load the model ({keras_reason(error)})")


# Keras 3 wraps what a layer's constructor or build raised in one TypeError per level of nesting
# ("<class ...Sequential> could not be deserialized properly ... config={...}"), each holding the
# whole config: the reason is the innermost error, and the layer the innermost of these wrappers.
_WRAPPER = "could not be deserialized properly"
_DESERIALIZING = re.compile(r"Error when deserializing class '(\w+)' using config=\{'name': "
                            r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def keras_reason(error: BaseException) -> str:
    """Why Keras could not load a model, on one line: through Keras' deserialisation wrappers to
    the error a layer raised, with that layer's name and class."""
    layer = None
    for _ in range(100):  # one step per level of nesting; a chain cannot loop forever
        text = str(error)
        match = _DESERIALIZING.search(text)
        if match is None and _WRAPPER not in text:
            break
        if match is not None:
            layer = f"layer {_python_string(match.group(2))} ({match.group(1)})"
        inner = error.__cause__ or error.__context__
        if inner is None:
            break
        error = inner
    reason = _error_text(error)
    return f"{layer}: {reason}" if layer is not None else reason


def _error_text(error: BaseException) -> str:
    """One line of an error's text; TensorFlow's OpError without its node and op tokens."""
    message = getattr(error, "message", None)  # an OpError's own text, without its class
    return tf_reason(message) if isinstance(message, str) and message else one_line(error)


def _python_string(literal: str) -> str:
    """The text of a Python string literal (the repr of a name in Keras' message), never evaluated
    as anything but a literal."""
    try:
        return str(ast.literal_eval(literal))
    except (ValueError, SyntaxError):
        return literal


def _load_with_keras(keras: Any, source: str, description: ModelDescription, unsafe: bool,
                     custom_objects: Mapping[str, Any] | None) -> Any:
    # safe_mode=False is what lets Keras 3 rebuild a Lambda from the bytecode stored in the file.
    # The user asked for it with --unsafe, after we told them the model has Lambda layers.
    try:
        if description.format == "h5-legacy" and not source.lower().endswith((".h5", ".hdf5")):
            # keras.saving.load_model picks the reader by suffix; go to the HDF5 reader directly.
            from keras.src.legacy.saving import legacy_h5_format

            return legacy_h5_format.load_model_from_hdf5(source, custom_objects=dict(custom_objects or {}),
                                                         compile=False, safe_mode=not unsafe)
        if description.format == "keras-v3" and not source.lower().endswith(".keras"):
            raise ModelRefused(f"{source}: Keras only opens a .keras archive under a name ending in .keras")
        return keras.saving.load_model(source, custom_objects=dict(custom_objects or {}), compile=False,
                                       safe_mode=not unsafe)
    except _keras_load_errors() as error:
        raise _load_error(source, error) from error


def _load_with_tf_keras(tf_keras: Any, source: str, unsafe: bool, custom_objects: Mapping[str, Any] | None) -> Any:
    from tf_keras.src.saving import serialization_lib

    # tf-keras applies safe mode only to its own .keras format; for HDF5 the Lambda check reads this
    # scope, whose default (None) would let a stored lambda through. Set it explicitly.
    try:
        with serialization_lib.SafeModeScope(not unsafe):
            return tf_keras.models.load_model(source, custom_objects=dict(custom_objects or {}), compile=False,
                                              safe_mode=not unsafe)
    except _keras_load_errors() as error:
        raise _load_error(source, error) from error


def describe_in_memory(model: Any) -> str:
    """The Keras flavour of an in-memory model: "keras 3.x" or "tf_keras 2.x".

    The user built or loaded the model, so TensorFlow is imported already: bninspect can no longer
    turn oneDNN on for it (TF_ENABLE_ONEDNN_OPTS is read at import), and does not pretend to.
    """
    if any(cls.__module__.startswith("tf_keras") for cls in type(model).__mro__):
        import tf_keras

        return f"tf_keras {tf_keras.__version__}"
    import keras

    return f"keras {keras.__version__}"
