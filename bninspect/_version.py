"""The package version, in its own module so that every layer can read it without importing
the `bninspect` facade (which sits at the top, over the Python API).

Layer: foundation (the layer order is written in tests/test_layers.py).
"""

__version__ = "0.1.0"
