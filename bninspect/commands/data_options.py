"""The options of the commands that run a model on data: `probe`, `recalibrate`, `check --data`.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import typer

DATA_HELP = ("Input samples: .npy (batch first), .npz (one array, or one per model input name) or a directory "
             "of .png/.jpg images, preprocessed as in training.")
LimitOption = typer.Option(None, "--limit", "-n", min=1, help="Use only the first N samples.")
RescaleOption = typer.Option(None, "--rescale", help="Multiply the inputs by this factor, e.g. 1/255.")
UnsafeOption = typer.Option(False, "--unsafe", help="Allow Lambda layers: their Python code stored in the file runs "
                                                    "while the model loads. Only for files you trust.")
CustomObjectsOption = typer.Option(None, "--custom-objects", dir_okay=False,
                                   help="A Python file whose top-level classes and functions are the model's custom "
                                        "objects. The file is executed.")
