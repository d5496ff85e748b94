"""`bninspect check PATH...`: the CI gate. Exit 0 clean, 1 findings at the failing severity,
2 bad usage or an unreadable file (every other file is still checked and reported).

With `--data FILE` every model is also run on the data (the dynamic analysis of `bninspect probe`)
and its BN101-BN104 findings join the static ones in the same report and exit status.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.cli_settings import ConfigOption, IgnoreOption, SelectOption, command_settings
from bninspect.commands.common import (VersionOption, DebugOption, OutputOption, emit, fail, one_line_errors,
                                       choose_backend, quiet_backend, refuse_writing_inputs, use_color)
from bninspect.commands.data_options import (BackendOption, BuildOption, CustomObjectsOption, LimitOption, OptionalBatchSizeOption,
                                             RescaleOption, UnsafeOption, refuse_data_options_without_data)
from bninspect.commands.remote_options import URL_HELP, DownloadOption, StorageOption, location, remote_options
from bninspect.reporters import OutputFormat
from bninspect.untrusted import printable


def check(
    paths: List[str] = typer.Argument(..., help="Model files, SavedModel or KerasHub preset directories, TF "
                                                "checkpoints, or directories to search recursively for them. A URL "
                                                "prefix (s3://bucket/models/) is listed like a directory."
                                                + URL_HELP),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict",
                                          help="Fail on warnings too (default: the config's `strict`, else off)."),
    select: Optional[List[str]] = SelectOption,
    ignore: Optional[List[str]] = IgnoreOption,
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f",
                                               help="text, json, sarif, junit, github or gitlab."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    baseline: Optional[Path] = typer.Option(None, "--baseline", dir_okay=False,
                                            help="Findings in this baseline file are known: shown and counted, "
                                                 "but only new findings fail; entries whose finding is gone are "
                                                 "reported as fixed (default: the config's `baseline`)."),
    update_baseline: Optional[Path] = typer.Option(None, "--update-baseline", dir_okay=False,
                                                   help="Write the current findings to this baseline file (keeping "
                                                        "each entry's `reason`, dropping fixed entries) and "
                                                        "pass them as known."),
    changed_since: Optional[str] = typer.Option(None, "--changed-since", metavar="REF",
                                                help="Only the model files under PATHS that differ from this "
                                                     "git ref (added, modified or renamed: `git diff --name-status "
                                                     "-M REF`), e.g. origin/main in a pull request."),
    show_suppressed: bool = typer.Option(False, "--show-suppressed",
                                         help="Text and JSON: also list the findings per-layer-ignores and "
                                              "per-file-ignores suppressed, by which entry, and the entries "
                                              "that suppressed nothing in this run (unused)."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Text: every finding on its own line (default: repeated findings of a "
                                      "model grouped by code, with the count and the first layers)."),
    statistics: bool = typer.Option(False, "--statistics",
                                    help="Text: instead of the findings, how many there are of each code over "
                                         "all files."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Read files in N worker processes (0: one per CPU). "
                                                      "Ignored with --data: models are run one after another."),
    data: Optional[Path] = typer.Option(None, "--data", "-d",
                                        help="Also run every model on these samples (inference mode) and report "
                                             "BN101-BN104 with the static findings: .npy (batch first), .npz (one "
                                             "array, or one per model input name) or a directory of .png/.jpg "
                                             "images. PATH must then name model files or SavedModel directories "
                                             "(no directory search: one data set fits one model's inputs). A model "
                                             "that cannot be loaded or run on the data fails with exit 2. A model "
                                             "at a URL is then downloaded to a temporary directory."),
    batch_size: Optional[int] = OptionalBatchSizeOption,
    limit: Optional[int] = LimitOption,
    rescale: Optional[str] = RescaleOption,
    unsafe: bool = UnsafeOption,
    backend: Optional[str] = BackendOption,
    custom_objects: Optional[Path] = CustomObjectsOption,
    storage_options: Optional[List[str]] = StorageOption,
    download: bool = DownloadOption,
    build: Optional[bool] = BuildOption,
    debug: bool = DebugOption,
    version: bool = VersionOption,
) -> None:
    """Check model files for BatchNormalization problems; the exit code says whether they pass.

    Exit 0: nothing at the failing severity; 1: a finding at error (with --strict, warning too);
    2: bad usage, or a model that could not be read (or, with --data, loaded and run on the data).
    """
    choose_backend(backend)
    from bninspect.checking import check_targets, exit_status, targets

    settings = command_settings(config, select, ignore, strict, debug, build=build,
                                baseline=str(baseline) if baseline is not None else None)
    if statistics and output_format is not OutputFormat.TEXT:
        fail(f"--statistics is for --format text; --format {output_format.value} lists every finding")
    if jobs < 0:
        fail(f"--jobs must be 0 (one per CPU) or more, got {jobs}")
    workers = jobs or os.cpu_count() or 1
    remote = remote_options(storage_options, download)
    paths = [location(path) for path in paths]
    if changed_since is not None and data is not None:
        fail("--changed-since selects models under directories; with --data, name the model files to run")
    if data is None:
        refuse_data_options_without_data(batch_size, limit, rescale, unsafe, custom_objects, settings.build)
    other_inputs = {"--data": data, "--config": config, "--custom-objects": custom_objects}
    if update_baseline is None and settings.baseline is not None:
        other_inputs["--baseline"] = Path(settings.baseline)
    outputs = {"--output": output, "--update-baseline": update_baseline}
    with one_line_errors(debug):
        refuse_writing_inputs(outputs, paths, other_inputs)
        # Read before any model: a malformed baseline stops the run at once.
        accepted = _read_baseline(settings, update_baseline)
        if data is not None:
            reports = _check_with_data(paths, settings, data, batch_size or 32, limit, rescale, unsafe,
                                       custom_objects, debug, remote)
        else:
            items = targets(paths, remote)
            if changed_since is not None:
                items = _changed_only(items, paths, changed_since)
            # The models found in the directories are inputs too: compared before any is read.
            refuse_writing_inputs(outputs, [*paths, *(item.path for item in items)], other_inputs)
            building = _build_options(settings, unsafe, custom_objects, debug)
            with _progress(len(items)) as advance:
                reports = check_targets(items, settings, jobs=workers, on_done=advance, build=building)
    compared = _compare_with_baseline(accepted, reports, settings, update_baseline)
    code = exit_status(reports, settings, compared.is_known if compared is not None else None)
    suppressions = _suppressions(reports, settings) if show_suppressed else None
    emit(_render(reports, output_format, settings, code, output, verbose, statistics, compared, suppressions), output)
    _errors_to_stderr(reports)
    raise typer.Exit(code)


def _changed_only(items, paths, ref: str):
    """The targets with a file that differs from `ref`; error entries (a directory with no models)
    stay, they are a broken setup whatever changed. Raises ChangedFilesError (exit 2)."""
    from bninspect.changed import changed_files, is_changed

    changed = changed_files(paths, ref)
    return [item for item in items if item.error is not None or is_changed(item.path, changed)]


def _suppressions(reports, settings):
    from bninspect.checking import suppression_uses

    return suppression_uses(reports, settings)


def _read_baseline(settings, update_baseline: Optional[Path]):
    """The baseline the run is compared with: the file --update-baseline rewrites (none yet: an
    empty one), else --baseline or the config's `baseline`, else None. Raises BaselineError."""
    from bninspect.baseline import Baseline, read_baseline

    if update_baseline is not None:
        if update_baseline.exists():
            return read_baseline(update_baseline)
        return Baseline(directory=str(update_baseline.resolve().parent))
    return read_baseline(settings.baseline) if settings.baseline is not None else None


def _compare_with_baseline(accepted, reports, settings, update_baseline: Optional[Path]):
    """The run against the baseline (None without one). With --update-baseline, the file is
    rewritten first and every current finding is known; the dropped entries are the fixed ones."""
    from dataclasses import replace

    from bninspect.baseline import compare, render_baseline, updated_entries

    if accepted is None:
        return None
    file = str(update_baseline if update_baseline is not None else settings.baseline)
    compared = compare(accepted, reports, file, settings.enabled)
    if update_baseline is None:
        return compared
    entries = updated_entries(accepted, compared, reports)
    try:
        update_baseline.write_text(render_baseline(entries), encoding="utf-8")
    except OSError as error:
        fail(f"{update_baseline}: cannot write the baseline ({error.strerror or error})")
    return replace(compared, known=frozenset(entry.fingerprint for entry in entries))


def _build_options(settings, unsafe: bool, custom_objects: Optional[Path], debug: bool):
    """With --build (or `build = true`): how models are loaded to build them, else None."""
    if not settings.build:
        return None
    from bninspect.checking import build_options

    if not debug:
        quiet_backend("check --build")
    return build_options(unsafe, custom_objects)


def _errors_to_stderr(reports) -> None:
    """One line per model that could not be read (or run on the data) on stderr, whatever the
    format and wherever the report goes: a CI log shows why the job exits 2, and the report keeps
    its entry."""
    for report in reports:
        if report.error is not None:
            reason = " ".join(str(report.error).split())
            typer.echo(f"bninspect: error: {printable(report.source)}: {printable(reason)}", err=True)


def _check_with_data(paths: List[str], settings, data: Path, batch_size: int, limit: Optional[int],
                     rescale: Optional[str], unsafe: bool, custom_objects: Optional[Path], debug: bool, remote=None):
    """Static rules and the probe for every model, one after another; one report per model."""
    from bninspect.checking import BuildOptions, Target, probe_options, probe_targets
    from bninspect.loaders.kerashub_preset import is_preset_directory

    for path in map(Path, paths):
        if path.is_dir() and not (path / "saved_model.pb").is_file() and not is_preset_directory(path):
            fail(f"{path}: with --data, name model files, SavedModel or KerasHub preset directories, not a "
                 "directory to search "
                 "(one data set fits the inputs of one model; pass the checkpoints of one model explicitly, "
                 "e.g. checkpoints/*.keras)")
    if not data.exists():
        fail(f"--data {data}: no such file or directory")
    if not debug:
        quiet_backend("check --data")
    # Parsed once, up front: a bad --rescale is a usage error, and the custom-objects file runs once.
    options = probe_options(str(data), batch_size, limit, rescale, unsafe, custom_objects, progress=True)
    items = [Target(str(path), None, remote) for path in dict.fromkeys(paths)]
    # The custom-objects file ran once, for both: the classes the build loads are those the probe runs.
    building = BuildOptions(unsafe, options.custom_objects) if settings.build else None
    return probe_targets(items, settings, options, build=building)


def _render(reports, output_format: OutputFormat, settings, code: int, output: Optional[Path],
            verbose: bool = False, statistics: bool = False, baseline=None, suppressions=None) -> str:
    if output_format is OutputFormat.JSON:
        from bninspect.reporters import json_report

        return json_report.render(reports, baseline, suppressions)
    if output_format is OutputFormat.SARIF:
        from bninspect.reporters import sarif

        return sarif.render(reports, baseline)
    if output_format is OutputFormat.JUNIT:
        from bninspect.reporters import junit

        return junit.render(reports, fail_severity=settings.fail_severity, baseline=baseline, fails=settings.fails)
    if output_format is OutputFormat.GITHUB:
        from bninspect.reporters import github

        return github.render(reports, group_infos=not verbose, baseline=baseline)
    if output_format is OutputFormat.GITLAB:
        from bninspect.reporters import gitlab

        return gitlab.render(reports, root=os.getcwd())
    from bninspect.reporters import check_text

    return check_text.render(reports, fail_severity=settings.fail_severity, exit_code=code,
                             color=use_color(output), verbose=verbose, statistics=statistics, baseline=baseline,
                             suppressions=suppressions, fails=settings.fails,
                             per_file_strict=bool(settings.per_file_strict))


class _progress:
    """A progress bar on stderr while files are read, only for a terminal and more than a few files."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar = None

    def __enter__(self):
        if self.total < 5 or not sys.stderr.isatty():
            return lambda report: None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("checking", total=self.total)
        return lambda report: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
