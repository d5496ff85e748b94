"""Silencing what a backend's C++ code writes to stderr while it is imported.

TensorFlow, jaxlib and torch write start-up lines (CUDA probing, CPU-feature notes, missing
accelerators) straight to file descriptor 2 before any Python log level applies; they are not part
of our report and would break the one-line errors.

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def silenced_stderr() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block; Python errors still propagate."""
    sys.stderr.flush()
    saved = os.dup(2)
    silent = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(silent, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(silent)
