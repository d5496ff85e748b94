"""Dynamic analysis: run a Keras model on real data and check its BatchNormalization layers.

With SavedModel reading, this package is the only place bninspect imports Keras and a backend
(TensorFlow, JAX or PyTorch: `backends`), and only inside functions: importing `bninspect.probes`
stays cheap.

Layer: probes (the layer order is written in tests/test_layers.py).
"""

from bninspect.probes.results import ProbeReport
from bninspect.probes.runner import run_probe
from bninspect.probes.thresholds import ProbeThresholds

__all__ = ["run_probe", "ProbeReport", "ProbeThresholds"]
