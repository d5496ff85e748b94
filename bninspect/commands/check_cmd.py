"""`bninspect check PATH...`: the CI gate. Exit 0 clean, 1 findings at the failing severity,
2 bad usage or an unreadable file (every other file is still checked and reported)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.cli_settings import ConfigOption, IgnoreOption, SelectOption, command_settings
from bninspect.commands.common import DebugOption, OutputOption, emit, fail, one_line_errors, use_color
from bninspect.reporters import OutputFormat


def check(
    paths: List[Path] = typer.Argument(..., help="Model files, SavedModel directories, or directories to search "
                                                 "recursively for them."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict",
                                          help="Fail on warnings too (default: the config's `strict`, else off)."),
    select: Optional[List[str]] = SelectOption,
    ignore: Optional[List[str]] = IgnoreOption,
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f",
                                               help="text, json, sarif, junit or github."),
    output: Optional[Path] = OutputOption,
    config: Optional[Path] = ConfigOption,
    jobs: int = typer.Option(1, "--jobs", "-j", help="Read files in N worker processes (0: one per CPU)."),
    debug: bool = DebugOption,
) -> None:
    """Check model files for BatchNormalization problems; the exit code says whether they pass."""
    from bninspect.checking import check_targets, exit_status, targets

    settings = command_settings(config, select, ignore, strict, debug)
    if jobs < 0:
        fail(f"--jobs must be 0 (one per CPU) or more, got {jobs}")
    workers = jobs or os.cpu_count() or 1
    with one_line_errors(debug):
        items = targets(paths)
        with _progress(len(items)) as advance:
            reports = check_targets(items, settings, jobs=workers, on_done=advance)
    code = exit_status(reports, settings)
    emit(_render(reports, output_format, settings, code, output), output)
    raise typer.Exit(code)


def _render(reports, output_format: OutputFormat, settings, code: int, output: Optional[Path]) -> str:
    if output_format is OutputFormat.JSON:
        from bninspect.reporters import json_report

        return json_report.render(reports)
    if output_format is OutputFormat.SARIF:
        from bninspect.reporters import sarif

        return sarif.render(reports)
    if output_format is OutputFormat.JUNIT:
        from bninspect.reporters import junit

        return junit.render(reports, fail_severity=settings.fail_severity)
    if output_format is OutputFormat.GITHUB:
        from bninspect.reporters import github

        return github.render(reports)
    from bninspect.reporters import check_text

    return check_text.render(reports, fail_severity=settings.fail_severity, exit_code=code,
                             color=use_color(output))


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
