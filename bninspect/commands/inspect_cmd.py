"""`bninspect MODEL` / `bninspect inspect MODEL`: the BN table of one or more model files.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.common import (VersionOption, DebugOption, OutputOption, emit, fail,
                                       one_line_errors, terminal_width, use_color)
from bninspect.commands.cli_settings import ConfigOption, command_settings
from bninspect.reporters import OutputFormat


def inspect(
    models: List[Path] = typer.Argument(..., help="Model files (.h5, .keras, .weights.h5), SavedModel or KerasHub "
                                                  "preset directories, or TF checkpoints (directory, prefix or .index)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Show the BN layers matching PATTERN (glob on path or name) channel by channel."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="List every finding on its own line (default: grouped by code)."),
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Show every BatchNormalization layer of MODEL: gamma, beta, moving statistics and findings."""
    from bninspect.checking import inspect_path
    from bninspect.reporters import json_report, table

    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value} is for `bninspect check`; inspect writes text or json")
    settings = command_settings(config, debug=debug)
    with one_line_errors(debug):
        reports = [inspect_path(path, settings) for path in models]
    if layer is not None and not any(table.matching_layers(report, layer) for report in reports):
        fail(f"no BN layer matches {layer!r} in {', '.join(str(m) for m in models)}")
    if output_format is OutputFormat.JSON:
        emit(json_report.render(reports), output)
    else:
        emit(table.render(reports, color=use_color(output), width=terminal_width(), layer_pattern=layer,
                          verbose=verbose), output)
