"""What `recalibrate` produced: plain data passed from the probe to the reporters.

Layer: results (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.report import ModelReport


@dataclass(frozen=True, eq=False)
class RecalibratedLayer:
    path: str
    samples: int
    before_mean: np.ndarray
    before_variance: np.ndarray
    after_mean: np.ndarray
    after_variance: np.ndarray


@dataclass(frozen=True)
class RecalibrationSummary:
    source: str
    output: str
    keras: str
    samples: int
    batches: int
    batch_size: int
    layers: tuple[RecalibratedLayer, ...]
    kept: tuple[tuple[str, str], ...]  # (layer path, why its statistics were kept)
    check: ModelReport  # the static check of the written file
    notes: tuple[str, ...] = ()
