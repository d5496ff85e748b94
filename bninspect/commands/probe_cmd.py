"""`bninspect probe MODEL --data FILE`: run the model on real data and check its BN layers.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.cli_settings import ConfigOption, command_settings
from bninspect.commands.common import (VersionOption, EXIT_FINDINGS, EXIT_OK, DebugOption, OutputOption, emit, fail,
                                       one_line_errors, choose_backend, quiet_backend, refuse_writing_inputs, terminal_width,
                                       use_color)
from bninspect.commands.data_options import BackendOption, DATA_HELP, CustomObjectsOption, LimitOption, RescaleOption, UnsafeOption
from bninspect.commands.remote_options import StorageOption, location, remote_options
from bninspect.reporters import OutputFormat


def probe(
    model: str = typer.Argument(..., help="A model file (.h5, .keras) or SavedModel directory; a URL (https://, "
                                          "s3://, gs://, hf://) is downloaded to a temporary directory first."),
    data: Path = typer.Option(..., "--data", "-d", help=DATA_HELP),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Samples per batch."),
    limit: Optional[int] = LimitOption,
    rescale: Optional[str] = RescaleOption,
    unsafe: bool = UnsafeOption,
    backend: Optional[str] = BackendOption,
    custom_objects: Optional[Path] = CustomObjectsOption,
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    storage_options: Optional[List[str]] = StorageOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Run MODEL on the samples in --data (inference mode) and report BN101-BN104.

    Exit 0: no error-level findings; 1: error-level findings; 2: could not run.
    """
    choose_backend(backend)
    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value} is for `bninspect check`; probe writes text or json")
    model = location(model)
    refuse_writing_inputs({"--output": output}, [model],
                          {"--data": data, "--config": config, "--custom-objects": custom_objects})
    settings = command_settings(config, debug=debug)
    if not debug:
        quiet_backend("probe")
    remote = remote_options(storage_options, False)
    with one_line_errors(debug):
        from bninspect.loaders.remote import local_copy
        from bninspect.probes import run_probe

        with local_copy(model, remote) as local:
            report = run_probe(local, str(data), batch_size=batch_size, limit=limit, rescale=rescale,
                               unsafe=unsafe, custom_objects=custom_objects, thresholds=settings.thresholds,
                               progress=True)
        if local != model:  # a downloaded copy, gone by now: the report names the URL
            report = report.named(model)
    report = report.with_findings(settings.apply)
    if output_format is OutputFormat.JSON:
        from bninspect.report import ModelReport
        from bninspect.reporters import json_report

        entry = ModelReport(source=str(model), description=report.description, findings=report.findings,
                            extra={"probe": report.to_dict()})
        emit(json_report.render([entry]), output)
    else:
        from bninspect.reporters import probe_table

        emit(probe_table.render(report, color=use_color(output), width=terminal_width()), output)
    failing = any(finding.severity.value == "error" for finding in report.findings)
    raise typer.Exit(EXIT_FINDINGS if failing else EXIT_OK)

