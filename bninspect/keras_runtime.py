"""Which Keras backend runs a model for bninspect, and importing Keras on it.

Keras 3 runs on TensorFlow, JAX or PyTorch, and chooses when `keras` is first imported: the
`KERAS_BACKEND` variable, else the `backend` of `keras.json` in `KERAS_HOME` (default `~/.keras`),
else TensorFlow. bninspect chooses the same way (`configured_backend`), so a JAX or torch user's
own setup is what runs their model; `--backend` (`select_backend`) overrides it for one run by
setting `KERAS_BACKEND` before Keras is imported.

Each backend is its own extra (`bninspect[tensorflow]`, `bninspect[jax]`, `bninspect[torch]`), and
`import_keras` imports only the chosen one: never TensorFlow when the backend is another one
(TensorFlow and torch in one process have crashed it, issue 27). On TensorFlow the import goes
through `tf_runtime.import_tensorflow` for its oneDNN default and its quiet start-up.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from bninspect.errors import MissingExtra, UsageProblem
from bninspect.quiet import silenced_stderr

BACKENDS = ("tensorflow", "jax", "torch")
# The module each backend needs, and its name in the one line when it is missing.
_BACKEND_MODULES = {"tensorflow": ("tensorflow", "TensorFlow"), "jax": ("jax", "JAX"), "torch": ("torch", "PyTorch")}
# The backend other than TensorFlow that `import_keras` imported in this process, if any.
_other_backend: str | None = None


class BackendConflict(UsageProblem):
    """TensorFlow would be imported into a process that runs models on JAX or PyTorch."""


def configured_backend() -> str:
    """The backend Keras runs on in this process: the one Keras chose when it is imported already,
    else the one it will choose (`KERAS_BACKEND`, then `keras.json`, then "tensorflow")."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config"):
        return str(keras.config.backend())
    chosen = os.environ.get("KERAS_BACKEND")
    if chosen:
        return chosen
    return _keras_json_backend() or "tensorflow"


def _keras_json_backend() -> str | None:
    """The `backend` of keras.json where Keras looks for it (keras/src/backend/config.py)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else None


def select_backend(backend: str | None) -> str:
    """`--backend`: run Keras on `backend` in this process (None: as Keras chooses). Returns the
    backend that will run. Raises UsageProblem for an unknown name, or when Keras is imported
    already on another backend (a process has one)."""
    if backend is None:
        return configured_backend()
    if backend not in BACKENDS:
        raise UsageProblem(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "config") and keras.config.backend() != backend:
        raise UsageProblem(f"--backend {backend}: Keras already runs on {keras.config.backend()} in this process")
    os.environ["KERAS_BACKEND"] = backend
    return backend


def import_keras(needed_for: str = "this", quiet: bool = False) -> Any:
    """Import Keras 3 on the configured backend (`configured_backend`) and return the keras module.

    Raises MissingExtra (one line with the pip command) when the backend or Keras is not
    installed, UsageProblem when Keras is configured for a backend bninspect does not run models on.
    quiet: hide the backend's start-up lines on stderr during the import.
    """
    backend = configured_backend()
    if backend not in BACKENDS:
        raise UsageProblem(f"{needed_for}: Keras is configured for the {backend!r} backend (KERAS_BACKEND or "
                           f"keras.json); bninspect runs models on {', '.join(BACKENDS)}: pass --backend")
    if backend == "tensorflow":
        from bninspect.tf_runtime import import_tensorflow

        import_tensorflow(quiet=quiet, keras=True, needed_for=needed_for)
        return sys.modules["keras"]
    global _other_backend
    _other_backend = backend
    module, package = _BACKEND_MODULES[backend]
    for name in (module, "keras"):
        if sys.modules.get(name) is not None:
            continue
        try:
            _import_quietly(name) if quiet else __import__(name)
        except ModuleNotFoundError as error:
            if error.name not in (module, "keras"):
                raise  # a module missing inside the backend: a broken install, its own traceback
            raise MissingExtra(f"{needed_for} on the {backend} backend", package if name == module else "Keras",
                               backend) from None
    return sys.modules["keras"]


def refuse_tensorflow_beside_another_backend(needed_for: str) -> None:
    """Raise BackendConflict when TensorFlow is not imported yet and this process runs models on
    JAX or PyTorch: one backend per process (TensorFlow then torch's triton has crashed a process,
    issue 27). What needs TensorFlow (a SavedModel, a TF checkpoint) is read in a run that does not
    run models on another backend."""
    if _other_backend is not None and sys.modules.get("tensorflow") is None:
        raise BackendConflict(f"{needed_for} needs TensorFlow, and this run runs models on {_other_backend} (one "
                              "backend per process): read it without --data/--build, or with --backend tensorflow")


def _import_quietly(name: str) -> None:
    """Import without the platform notes jaxlib and torch print from C++ (no GPU, no TPU)."""
    with silenced_stderr():
        __import__(name)
    for logger in ("jax", "jax._src.xla_bridge", "torch", "keras"):
        logging.getLogger(logger).setLevel(logging.ERROR)
