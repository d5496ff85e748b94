"""`bninspect report MODEL... [--data FILE] [-o FILE]`: a self-contained HTML report with pictures.

A viewer, like `bninspect MODEL`: exit 0 when the report was written, whatever it found; 2 for bad
usage or a model that could not be read (or, with --data, loaded and run on the data).

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.cli_settings import ConfigOption, command_settings
from bninspect.commands.common import (EXIT_OK, DebugOption, VersionOption, fail, one_line_errors, choose_backend, quiet_backend,
                                       refuse_writing_inputs)
from bninspect.commands.remote_options import URL_HELP, DownloadOption, StorageOption, location, remote_options
from bninspect.commands.data_options import (BackendOption, DATA_HELP, BuildOption, CustomObjectsOption, LimitOption,
                                             OptionalBatchSizeOption, RescaleOption, UnsafeOption,
                                             refuse_data_options_without_data)
from bninspect.untrusted import printable

DEFAULT_OUTPUT = Path("bninspect-report.html")


class ReportFormat(str, Enum):
    HTML = "html"
    PNG = "png"


def report(
    models: List[str] = typer.Argument(..., help="Model files (.h5, .keras, .weights.h5), SavedModel or KerasHub "
                                                 "preset directories, or TF checkpoints (directory, prefix or .index)."
                                                 + URL_HELP + " With --data it is downloaded to a temporary "
                                                 "directory."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Also run every model on these samples and plot "
                                                                   "stored vs observed statistics. " + DATA_HELP),
    batch_size: Optional[int] = OptionalBatchSizeOption,
    limit: Optional[int] = LimitOption,
    rescale: Optional[str] = RescaleOption,
    unsafe: bool = UnsafeOption,
    backend: Optional[str] = BackendOption,
    custom_objects: Optional[Path] = CustomObjectsOption,
    layers: Optional[str] = typer.Option(None, "--layers", help="Draw per-channel plots of the BN layers matching "
                                                                 "PATTERN (glob on path or name, '*' for all) "
                                                                 "instead of a few of the layers with findings."),
    output_format: ReportFormat = typer.Option(ReportFormat.HTML, "--format", "-f",
                                               help="html (the whole report) or png (the overview figure of "
                                                    "the first model)."),
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", "-o", dir_okay=False,
                                help="Write the report to FILE (default: bninspect-report.html; "
                                     "with --format png name a .png file)."),
    config: Optional[Path] = ConfigOption,
    storage_options: Optional[List[str]] = StorageOption,
    download: bool = DownloadOption,
    build: Optional[bool] = BuildOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Write a self-contained HTML report of MODEL's BatchNormalization layers, with plots.

    Overview along the depth, every channel of every BN layer in one heatmap per statistic, a table
    row per layer, per-channel plots of a few layers with findings (or of --layers PATTERN),
    findings with their documentation; with --data, stored vs observed statistics. Opens offline: no script, nothing
    fetched. Exit 0 when the report was written, 2 when it could not be.
    """
    choose_backend(backend)
    from bninspect.checking import BuildOptions, build_options, inspect_path, probe_options
    from bninspect.reporters.plots import require_matplotlib

    settings = command_settings(config, debug=debug, build=build)
    with one_line_errors(debug):
        require_matplotlib(needed_for="`bninspect report`")  # before any model is read or run
    if data is None:
        refuse_data_options_without_data(batch_size, limit, rescale, unsafe, custom_objects, settings.build)
    if output_format is ReportFormat.PNG and output == DEFAULT_OUTPUT:
        output = DEFAULT_OUTPUT.with_suffix(".png")
    remote = remote_options(storage_options, download)
    models = [location(model) for model in models]
    refuse_writing_inputs({"--output": output}, models,
                          {"--data": data, "--config": config, "--custom-objects": custom_objects})
    probing = data is not None and output_format is ReportFormat.HTML
    if probing and not data.exists():
        fail(f"--data {data}: no such file or directory")
    with one_line_errors(debug):
        if (probing or settings.build) and not debug:
            quiet_backend("report --data" if probing else "report --build")
        # Parsed once, up front: a bad --rescale is a usage error, and the custom-objects file runs once.
        options = probe_options(str(data), batch_size or 32, limit, rescale, unsafe, custom_objects,
                                progress=True) if probing else None
        building = None
        if settings.build:
            building = BuildOptions(unsafe, options.custom_objects) if options is not None \
                else build_options(unsafe, custom_objects)
        reports = [inspect_path(path, settings, remote, building) for path in models]
        if options is not None:
            reports = _probe_all(models, reports, settings, options, remote)
    if output_format is ReportFormat.PNG:
        from bninspect.reporters.plots import overview_png

        _write(output, overview_png(reports[0]))
    else:
        from bninspect.reporters.html_report import render_html

        _write(output, render_html(reports, layers=layers).encode("utf-8"))
    typer.echo(f"bninspect: wrote {printable(output)}", err=True)
    raise typer.Exit(EXIT_OK)


def _probe_all(models, reports, settings, options, remote=None):
    """The dynamic analysis of `bninspect probe` / `check --data` for every model: the same options,
    thresholds and selection; its findings join the static ones, its measurements are plotted."""
    from bninspect.checking import add_probe

    return [add_probe(static, str(path), settings, options, remote) for path, static in zip(models, reports)]


def _write(output: Path, content: bytes) -> None:
    try:
        output.write_bytes(content)
    except OSError as error:
        fail(f"{output}: cannot write the report ({error.strerror or error})")
