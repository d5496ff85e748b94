"""The one place that imports TensorFlow (and Keras) for bninspect, and what we know about oneDNN.

Channels_first (NCHW) convolutions run on the CPU only through oneDNN. TensorFlow turns oneDNN on
by default only on CPUs with AVX-512 (and some newer ones); on AVX2-only x86-64 CPUs it is off and
`Conv2D(data_format="channels_first")` fails with "The Conv2D op currently only supports the NHWC
tensor format on the CPU". TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` when it is imported, so
`import_tensorflow` sets it to "1" before the first import, unless the user has set it (their
value is kept). When TensorFlow is already imported (a notebook that built the model, the
in-memory API), the variable is left alone: setting it then would change nothing.

Every TensorFlow entry point of bninspect (probe, `check --data`, recalibrate, image decoding,
SavedModel and TF-checkpoint reading, the CLI's `quiet_tensorflow`) goes through `import_tensorflow`.
TensorFlow is not a dependency of the light install (`pip install bninspect`): when it is missing,
`import_tensorflow` raises `MissingExtra`, one line with `pip install 'bninspect[tensorflow]'`, so
every command and reader that needs it says the same thing.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from bninspect.errors import MissingExtra
from bninspect.quiet import silenced_stderr

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


@dataclass(frozen=True)
class OneDNNSetting:
    """`TF_ENABLE_ONEDNN_OPTS` as TensorFlow saw it, as far as bninspect can tell."""

    value: str | None  # the variable's value when TensorFlow was imported (None: unset)
    imported_by_bninspect: bool  # False: TensorFlow was imported before bninspect could set it
    set_by_user: bool  # the user's environment had the variable before bninspect looked

    @property
    def enabled_by_request(self) -> bool:
        return self.value is not None and self.value.strip().lower() in ("1", "true", "yes", "on")


_setting: OneDNNSetting | None = None


# The modules the `tensorflow` extra installs: TensorFlow, and Keras 3 which TensorFlow 2.16+ requires.
TENSORFLOW_EXTRA = "tensorflow"
_EXTRA_MODULES = ("tensorflow", "keras")


def import_tensorflow(quiet: bool = True, keras: bool = True, needed_for: str = "this") -> Any:
    """Import TensorFlow (and Keras 3 when `keras`) with oneDNN on unless the user said otherwise.

    quiet: point file descriptor 2 at /dev/null for the import only. TensorFlow's C++ code writes
    its start-up lines (CUDA probing, oneDNN and CPU-feature notes) before any log level applies
    (TF 2.21 ignores TF_CPP_MIN_LOG_LEVEL for them); they are not part of our report and would
    break the one-line errors. Python errors raised by the import still surface normally.
    needed_for: what needs TensorFlow, for the one line when it is not installed ("`bninspect
    probe`", "reading SavedModel variables"); raises MissingExtra then.
    Returns the tensorflow module.
    """
    global _setting
    # `sys.modules.get`: a None entry (Python's way to block a module) is not an imported TensorFlow.
    if sys.modules.get("tensorflow") is None:
        user_set = ONEDNN_VARIABLE in os.environ
        os.environ.setdefault(ONEDNN_VARIABLE, "1")
        _import("tensorflow", quiet, needed_for)
        _setting = OneDNNSetting(os.environ[ONEDNN_VARIABLE], True, user_set)
    elif _setting is None:
        # Imported by the user (or a library) before us: the variable had whatever value it had
        # then; today's value is the best guess, and we do not change it.
        _setting = OneDNNSetting(os.environ.get(ONEDNN_VARIABLE), False, ONEDNN_VARIABLE in os.environ)
    if keras and sys.modules.get("keras") is None:
        _import("keras", quiet, needed_for)
    return sys.modules["tensorflow"]


def onednn_setting() -> OneDNNSetting:
    """What `TF_ENABLE_ONEDNN_OPTS` was when TensorFlow was imported (call after it is imported)."""
    if _setting is not None:
        return _setting
    return OneDNNSetting(os.environ.get(ONEDNN_VARIABLE), "tensorflow" not in sys.modules,
                         ONEDNN_VARIABLE in os.environ)


def _import(name: str, quiet: bool, needed_for: str) -> None:
    try:
        _import_module(name, quiet)
    except ModuleNotFoundError as error:
        # Only the extra's own modules missing means "not installed"; a module missing inside
        # TensorFlow (a broken install) is TensorFlow's error and keeps its traceback.
        if error.name not in _EXTRA_MODULES:
            raise
        raise MissingExtra(needed_for, "TensorFlow", TENSORFLOW_EXTRA) from None


def _import_module(name: str, quiet: bool) -> None:
    if not quiet:
        __import__(name)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced_stderr():
        __import__(name)
    for logger in ("tensorflow", "absl", "keras"):
        logging.getLogger(logger).setLevel(logging.ERROR)
