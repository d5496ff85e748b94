"""The options of the commands that run a model on data (`probe`, `recalibrate`, `check --data`)
or build it (`--build` on `check`, `inspect`, `report`).

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from bninspect.commands.common import fail

DATA_HELP = ("Input samples: .npy (batch first), .npz (one array, or one per model input name) or a directory "
             "of .png/.jpg images, preprocessed as in training.")
LimitOption = typer.Option(None, "--limit", "-n", min=1, help="Use only the first N samples.")
RescaleOption = typer.Option(None, "--rescale", help="Multiply the inputs by this factor, e.g. 1/255.")
UnsafeOption = typer.Option(False, "--unsafe", help="Allow Lambda layers: their Python code stored in the file runs "
                                                    "while the model loads. Only for files you trust.")
CustomObjectsOption = typer.Option(None, "--custom-objects", dir_okay=False,
                                   help="A Python file whose top-level classes and functions are the model's custom "
                                        "objects. The file is executed.")
# For commands where --data is optional (`check`, `report`): the default applies only with data.
OptionalBatchSizeOption = typer.Option(None, "--batch-size", "-b", min=1,
                                       help="With --data: samples per batch (default 32).")


BackendOption = typer.Option(None, "--backend",
                             help="The Keras backend that runs the model: tensorflow, jax or torch. Default: as Keras "
                                  "chooses (KERAS_BACKEND, then the backend of ~/.keras/keras.json, then tensorflow).")


BuildOption = typer.Option(None, "--build/--no-build",
                           help="Build the architecture with Keras (imports Keras and its backend; safe mode, the rules of "
                                "--unsafe and --custom-objects apply) to read what the file does not store: the "
                                "BN layers' configs of subclassed and KerasHub models, and the graph of Functional "
                                "subclasses; a file that stores all that is read as it is. Statistics always come from "
                                "the file. Default: the config's `build`, else off.")


def refuse_data_options_without_data(batch_size: Optional[int], limit: Optional[int], rescale: Optional[str],
                                     unsafe: bool, custom_objects: Optional[Path], build: bool = False) -> None:
    """A data option without --data is a mistake worth one line, not silently ignored. --unsafe
    and --custom-objects also apply to --build, which loads the model too."""
    given = [flag for flag, value in (("--batch-size", batch_size), ("--limit", limit), ("--rescale", rescale))
             if value]
    if given:
        fail(f"{', '.join(given)} only apply with --data")
    refuse_loading_options_without_loading(unsafe, custom_objects, build)


def refuse_loading_options_without_loading(unsafe: bool, custom_objects: Optional[Path], build: bool) -> None:
    given = [flag for flag, value in (("--unsafe", unsafe), ("--custom-objects", custom_objects)) if value]
    if given and not build:
        fail(f"{', '.join(given)} only apply with --data or --build")
