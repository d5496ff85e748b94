"""`bninspect recalibrate MODEL --data FILE -o OUT`: new moving statistics from data, in a new file.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.cli_settings import ConfigOption, command_settings
from bninspect.commands.common import (VersionOption, DebugOption, UsageProblem, emit, fail, one_line_errors, choose_backend, quiet_backend,
                                       refuse_writing_inputs, terminal_width, use_color)
from bninspect.commands.data_options import BackendOption, DATA_HELP, CustomObjectsOption, LimitOption, RescaleOption, UnsafeOption
from bninspect.commands.remote_options import StorageOption, location, remote_options
from bninspect.reporters import OutputFormat
from bninspect.model import NO_ARCHITECTURE
from bninspect.untrusted import redact


def recalibrate(
    model: str = typer.Argument(..., help="The model to recalibrate: a .keras or .h5 file, a KerasHub preset "
                                          "directory (written as a new preset directory), or a weights file "
                                          "with --architecture. A URL (https://, s3://, gs://, hf://) is "
                                          "downloaded to a temporary directory first."),
    data: Path = typer.Option(..., "--data", "-d", help=DATA_HELP),
    output: Optional[str] = typer.Option(None, "--output", "-o",
                                         help="Where to write the recalibrated model (same format as MODEL): a "
                                              "local file or a URL (written locally, then uploaded)."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace MODEL itself (atomically) instead of writing -o."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Only the BN layers matching PATTERN (glob on path "
                                                                 "or name); the others keep their statistics."),
    architecture: Optional[Path] = typer.Option(None, "--architecture", dir_okay=False,
                                                help="For a weights-only MODEL: a full model file (.keras/.h5) "
                                                     "with the same architecture to run the weights in."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=2, help="Samples per batch."),
    limit: Optional[int] = LimitOption,
    rescale: Optional[str] = RescaleOption,
    unsafe: bool = UnsafeOption,
    backend: Optional[str] = BackendOption,
    custom_objects: Optional[Path] = CustomObjectsOption,
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    report_file: Optional[Path] = typer.Option(None, "--report", dir_okay=False,
                                               help="Write the report to FILE instead of stdout."),
    config: Optional[Path] = ConfigOption,
    storage_options: Optional[List[str]] = StorageOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Recompute the moving mean and variance of MODEL's BN layers from --data and write a new file.

    The statistics are the cumulative mean and variance of each layer's input over all the data
    (every sample weighted equally, like PyTorch's update_bn), with the BN layers normalising with
    batch statistics as in training and every other layer in inference mode. Everything else in
    the file is copied unchanged. Prints the statistics before and after, and `check` on the new file.

    Exit 0: written; 2: could not recalibrate (nothing is written).
    """
    choose_backend(backend)
    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value} is for `bninspect check`; recalibrate writes text or json")
    from bninspect.loaders.remote import is_url, local_copy

    model = location(model)
    output = location(output) if output is not None else None
    if in_place and is_url(model):
        fail("--in-place replaces a local MODEL; for a URL give -o OUT (a local file or a URL)")
    target = _target(model, output, in_place)
    refuse_writing_inputs({"--output": None if in_place else target, "--report": report_file}, [model],
                          {"--data": data, "--architecture": architecture, "--config": config,
                           "--custom-objects": custom_objects})
    remote = remote_options(storage_options, False)
    settings = command_settings(config, debug=debug)
    if not debug:
        quiet_backend("recalibrate")
    with one_line_errors(debug):
        with local_copy(model, remote) as local_model, _local_output(target, remote) as local_target:
            summary = _recalibrate(Path(local_model), data, Path(local_target), layers=layers,
                                   architecture=architecture, batch_size=batch_size, limit=limit, rescale=rescale,
                                   unsafe=unsafe, custom_objects=custom_objects, settings=settings)
        summary = replace(summary, source=model, output=target)
    from bninspect.reporters import recalibrate_report

    if output_format is OutputFormat.JSON:
        emit(recalibrate_report.render_json(summary), report_file)
    else:
        emit(recalibrate_report.render_text(summary, color=use_color(report_file), width=terminal_width()),
             report_file)


def _target(model: str, output: Optional[str], in_place: bool) -> str:
    if in_place:
        if output is not None and not _same_location(model, output):
            fail("--in-place replaces MODEL; leave out -o, or leave out --in-place to write a new file")
        return model
    if output is None:
        fail("give -o OUT for the recalibrated model, or --in-place to replace MODEL")
    if _same_location(model, output):
        fail(f"{redact(output)}: that is MODEL itself; pass --in-place to replace it")
    if _suffix(output) != _suffix(model):
        fail(f"{redact(output)}: recalibrate writes the format of MODEL, so OUT must end in "
             f"{_suffix(model) or 'nothing'}")
    return output


def _same_location(model: str, output: str) -> bool:
    """Files on disk compared as files (links, other spellings); a URL as text."""
    from bninspect.loaders.footprint import same_file
    from bninspect.loaders.remote import is_url

    if is_url(model) or is_url(output):
        return model == output
    return same_file(Path(model), Path(output))


def _suffix(location: str) -> str:
    from bninspect.loaders.remote import is_url, local_name

    name = (local_name(location) if is_url(location) else Path(location).name).lower()
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    suffix = Path(name).suffix
    return {".hdf5": ".h5"}.get(suffix, suffix)


@contextmanager
def _local_output(target: str, remote):
    """Where to write: `target` itself, or for a URL a temporary file uploaded after the writing
    succeeded (the upload is then the only write to the URL)."""
    from bninspect.loaders.graph import ConfigError
    from bninspect.loaders.remote import is_url

    if not is_url(target):
        yield target
        return
    import tempfile

    from bninspect.loaders.remote import local_name, upload

    with tempfile.TemporaryDirectory(prefix="bninspect-") as scratch:
        local = os.path.join(scratch, local_name(target))  # the URL's last segment: no query, never `..`
        yield local
        try:
            upload(local, target, remote)
        except ConfigError as error:
            raise UsageProblem(f"{target}: cannot upload the recalibrated model ({error})") from error


def _recalibrate(model: Path, data: Path, target: Path, *, layers, architecture, batch_size, limit, rescale,
                 unsafe, custom_objects, settings):
    from bninspect import loaders
    from bninspect.checking import inspect_path
    from bninspect.probes.recalibrate import recompute
    from bninspect.recalibration import RecalibrationSummary
    from bninspect.writing import check_writable, write_statistics

    description = loaders.load(str(model))
    check_writable(description)  # before minutes of computation, not after
    subject = _model_to_run(description, architecture, unsafe, custom_objects)
    # A live model (weights-only file + --architecture) is loaded already, custom objects included.
    loads_itself = isinstance(subject, str)
    result = recompute(subject, str(data), batch_size=batch_size, limit=limit, rescale=rescale, layers=layers,
                       unsafe=unsafe, custom_objects=custom_objects if loads_itself else None, progress=True)
    if not result.layers:
        raise UsageProblem(f"{model}: no BN layer was recalibrated ("
                           f"{'; '.join(f'{path}: {reason}' for path, reason in result.kept[:4])})")
    write_statistics(description, {layer.path: (layer.after_mean, layer.after_variance) for layer in result.layers},
                     target)
    check = inspect_path(target, settings)
    return RecalibrationSummary(source=str(model), output=str(target), keras=result.loaded.keras,
                                samples=result.samples, batches=result.batches, batch_size=batch_size,
                                layers=result.layers, kept=result.kept, check=check, notes=result.notes)


def _model_to_run(description, architecture: Optional[Path], unsafe: bool, custom_objects: Optional[Path]):
    """The file itself, or for a weights-only file the architecture with these weights loaded."""
    if description.architecture.kind != NO_ARCHITECTURE:
        if architecture is not None:
            raise UsageProblem(f"--architecture is for weights-only files; {description.source} holds its own")
        return description.source
    if architecture is None:
        raise UsageProblem(f"{description.source}: a weights-only file has no architecture to run; "
                           "pass --architecture MODEL_FILE with the same layers")
    from bninspect.probes.loading import load_custom_objects, load_model, load_weights

    objects = load_custom_objects(custom_objects) if custom_objects is not None else None
    loaded = load_model(str(architecture), unsafe=unsafe, custom_objects=objects)
    return load_weights(loaded, description.source)
