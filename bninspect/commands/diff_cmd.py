"""`bninspect diff A B`: which BN statistics and affine parameters changed between two checkpoints.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.common import (VersionOption, DebugOption, OutputOption, emit, fail, one_line_errors,
                                       refuse_writing_inputs, terminal_width, use_color)
from bninspect.commands.remote_options import DownloadOption, StorageOption, location, remote_options
from bninspect.reporters import OutputFormat


def diff(
    model_a: str = typer.Argument(..., metavar="A", help="The earlier checkpoint (any supported format, or a URL)."),
    model_b: str = typer.Argument(..., metavar="B", help="The later checkpoint (any supported format, or a URL)."),
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    storage_options: Optional[List[str]] = StorageOption,
    download: bool = DownloadOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Compare the BN layers of two checkpoints of one model, matched by layer path. Exit 0 whether or not they differ."""
    from bninspect import loaders
    from bninspect.diff import diff_models
    from bninspect.reporters import diff_report

    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value} is for `bninspect check`; diff writes text or json")
    remote = remote_options(storage_options, download)
    model_a, model_b = location(model_a), location(model_b)
    refuse_writing_inputs({"--output": output}, [model_a, model_b])
    with one_line_errors(debug):
        result = diff_models(loaders.load(model_a, remote), loaders.load(model_b, remote))
    if output_format is OutputFormat.JSON:
        emit(diff_report.render_json(result), output)
    else:
        emit(diff_report.render_text(result, color=use_color(output), width=terminal_width()), output)
