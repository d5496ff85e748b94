"""One module per CLI command. Each imports heavy libraries inside its function, so that
`bninspect --help` and `--version` stay fast.

Layer: commands (the layer order is written in tests/test_layers.py).
"""
