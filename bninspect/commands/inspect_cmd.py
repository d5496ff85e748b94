"""`bninspect MODEL` / `bninspect inspect MODEL`: the BN table of one or more model files.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.common import (VersionOption, DebugOption, OutputOption, emit, fail,
                                       one_line_errors, choose_backend, quiet_backend, refuse_writing_inputs, terminal_width,
                                       use_color)
from bninspect.commands.cli_settings import ConfigOption, command_settings
from bninspect.commands.data_options import (BackendOption, BuildOption, CustomObjectsOption, UnsafeOption,
                                             refuse_loading_options_without_loading)
from bninspect.commands.remote_options import URL_HELP, DownloadOption, StorageOption, location, remote_options
from bninspect.reporters import OutputFormat
from bninspect.untrusted import redact


def inspect(
    models: List[str] = typer.Argument(..., help="Model files (.h5, .keras, .weights.h5), SavedModel or KerasHub "
                                                 "preset directories, or TF checkpoints (directory, prefix or .index)."
                                                 + URL_HELP),
    layer: Optional[str] = typer.Option(None, "--layer", help="Show the BN layers matching PATTERN (glob on path or name) channel by channel."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="List every finding on its own line (default: grouped by code)."),
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    storage_options: Optional[List[str]] = StorageOption,
    download: bool = DownloadOption,
    build: Optional[bool] = BuildOption,
    unsafe: bool = UnsafeOption,
    backend: Optional[str] = BackendOption,
    custom_objects: Optional[Path] = CustomObjectsOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Show every BatchNormalization layer of MODEL: gamma, beta, moving statistics and findings."""
    choose_backend(backend)
    from bninspect.checking import build_options, inspect_path
    from bninspect.reporters import json_report, table

    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value} is for `bninspect check`; inspect writes text or json")
    settings = command_settings(config, debug=debug, build=build)
    refuse_loading_options_without_loading(unsafe, custom_objects, settings.build)
    remote = remote_options(storage_options, download)
    models = [location(model) for model in models]
    refuse_writing_inputs({"--output": output}, models, {"--config": config, "--custom-objects": custom_objects})
    with one_line_errors(debug):
        building = None
        if settings.build:
            if not debug:
                quiet_backend("inspect --build")
            building = build_options(unsafe, custom_objects)
        reports = [inspect_path(path, settings, remote, building) for path in models]
    if layer is not None and not any(table.matching_layers(report, layer) for report in reports):
        fail(f"no BN layer matches {layer!r} in {', '.join(redact(model) for model in models)}")
    if output_format is OutputFormat.JSON:
        emit(json_report.render(reports), output)
    else:
        emit(table.render(reports, color=use_color(output), width=terminal_width(), layer_pattern=layer,
                          verbose=verbose), output)
