"""What `recalibrate` produced: plain data passed from the probe to the reporters.

Layer: results (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.report import ModelReport
from bninspect.untrusted import redact


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

    def __post_init__(self) -> None:
        # Both may be URLs (`recalibrate s3://... -o s3://...`): shown redacted, fetched and
        # uploaded by the command with the real ones.
        object.__setattr__(self, "source", redact(self.source))
        object.__setattr__(self, "output", redact(self.output))
