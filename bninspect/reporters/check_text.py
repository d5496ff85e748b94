"""The text output of `bninspect check`: one line per model file, its findings below it grouped
by code (`--verbose`: one by one), and a summary line. Compact on purpose: a CI log over a model
registry, or over one backbone with 100+ BN layers, must stay readable. (`bninspect MODEL` shows
the full table of one model.)

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import io
from typing import Callable

from rich.console import Console
from rich.text import Text

from bninspect.baseline import BaselineResult
from bninspect.checking import SuppressionUse
from bninspect.findings import Finding, Severity
from bninspect.model import GRAPH
from bninspect.report import ModelReport, architecture_label
from bninspect.reporters.grouping import group_findings, one_by_one
from bninspect.reporters.table import SEVERITY_STYLE, FittingText, group_lines
from bninspect.untrusted import printable

_LABELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "info"}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _counts(report: ModelReport) -> str:
    parts = [_plural(report.count(severity), _LABELS[severity]) for severity in
             (Severity.ERROR, Severity.WARNING, Severity.INFO) if report.count(severity)]
    return ", ".join(parts)


def _model_lines(report: ModelReport, fail_severity: Severity, verbose: bool = False,
                 statistics: bool = False, baseline: BaselineResult | None = None,
                 fails: Callable[[Finding], bool] | None = None) -> Text:
    text = Text()
    text.append(printable(report.source), style="bold")
    if report.error is not None and report.description is None:
        text.append("  unreadable: ", style="bold red")
        text.append(f"{printable(report.error)}\n")
        return text
    description = report.description
    about = []
    if description is not None:
        about.append(description.format)
        if description.keras_version:
            about.append(f"Keras {description.keras_version}")
        if description.keras_hub_version:
            about.append(f"KerasHub {description.keras_hub_version}")
        if description.architecture.kind != GRAPH:
            about.append(architecture_label(description))
        about.append(_plural(len(description.bn_layers), "BN layer"))
    new, known = _split(report, baseline)
    fails = fails or (lambda finding: finding.severity.rank >= fail_severity.rank)
    failing = any(fails(f) for f in new)
    status = _counts(report) or ("no static findings" if report.error else "ok")
    if baseline is not None and report.findings:
        status += f" ({len(known)} known, {len(new)} new)"
    text.append(f"  {status}", style="bold red" if failing else ("yellow" if report.findings else "green"))
    text.append(f"  ({printable(', '.join(about))})\n" if about else "\n", style="dim")
    if report.error is not None:
        # Read, but not checked to the end (with --data: could not be loaded or run on the data).
        text.append("  error: ", style="bold red")
        text.append(f"{printable(report.error)}\n")
    if statistics:
        return text
    grouped = one_by_one if verbose else group_findings
    for group in grouped(new):
        group_lines(text, group, indent="  ", name=True)
    if known:
        text.append("  known (in the baseline, not failing):\n", style="dim")
        for group in grouped(known):
            group_lines(text, group, indent="    ", name=True)
    return text


def _split(report: ModelReport, baseline: BaselineResult | None) -> tuple[list[Finding], list[Finding]]:
    """(new, known) findings of a model; without a baseline every finding is new."""
    if baseline is None:
        return list(report.findings), []
    new: list[Finding] = []
    known: list[Finding] = []
    for finding in report.findings:
        (known if baseline.is_known(finding) else new).append(finding)
    return new, known


def suppression_lines(reports: list[ModelReport], uses: tuple[SuppressionUse, ...]) -> Text:
    """`--show-suppressed`: what the per-layer and per-file ignores suppressed, and by which entry;
    then the entries that suppressed nothing in this run."""
    text = Text()
    suppressed = [(report, item) for report in reports for item in report.suppressed]
    text.append(f"suppressed: {_plural(len(suppressed), 'finding')}\n", style="bold")
    for report, item in suppressed:
        finding = item.finding
        text.append(printable(f"  {report.source}  {finding.layer or '(model)'}  {finding.code} {finding.name}  "
                              f"by {item.by}") + "\n", style="dim")
    for use in uses:
        if use.unused:
            text.append("  unused ", style="yellow")
            text.append(printable(f"{use.kind} {use.pattern!r} = {use.code}: suppressed nothing in this run") + "\n")
    return text


def baseline_lines(reports: list[ModelReport], baseline: BaselineResult) -> Text:
    """What the baseline changed: how many findings it knows, and the entries that were fixed."""
    known, new = baseline.counts(reports)
    text = Text()
    text.append(printable(f"baseline {baseline.file}: {known} known, {new} new, {len(baseline.fixed)} fixed") + "\n")
    for entry in baseline.fixed:
        text.append("  fixed ", style="green")
        text.append(printable(f"{baseline.fixed_path(entry)}  {entry.layer or '(model)'}  {entry.code} {entry.name}")
                    + "\n")
    return text


def statistics_lines(reports: list[ModelReport]) -> Text:
    """`--statistics`: the number of findings per code over all files, most frequent first."""
    counts: dict[tuple[str, str, Severity], int] = {}
    for report in reports:
        for finding in report.findings:
            key = (finding.code, finding.name, finding.severity)
            counts[key] = counts.get(key, 0) + 1
    text = Text()
    width = len(str(max(counts.values(), default=0)))
    for (code, name, severity), count in sorted(counts.items(), key=lambda item: (-item[1], item[0][0])):
        text.append(f"{count:>{width}}  ")
        text.append(f"{code}  {severity.value:<7}", style=SEVERITY_STYLE[severity])
        text.append(f"  {name}\n")
    return text


def summary_line(reports: list[ModelReport], fail_severity: Severity, exit_code: int,
                 per_file_strict: bool = False) -> Text:
    counts = {severity: sum(report.count(severity) for report in reports) for severity in Severity}
    unreadable = sum(1 for report in reports if report.error is not None and report.description is None)
    not_run = sum(1 for report in reports if report.error is not None and report.description is not None)
    text = Text()
    text.append(f"{_plural(len(reports), 'model')} checked: "
                f"{_plural(counts[Severity.ERROR], 'error')}, {_plural(counts[Severity.WARNING], 'warning')}, "
                f"{_plural(counts[Severity.INFO], 'info')}, {unreadable} unreadable"
                + (f", {not_run} could not be run on the data" if not_run else ""))
    failing = "errors and warnings fail" if fail_severity is Severity.WARNING else "errors fail"
    if per_file_strict:  # the config's per-file-strict decides for some models
        failing += ", per-file-strict elsewhere"
    verdict = "passed" if exit_code == 0 else "FAILED"
    text.append(f"  ({failing}) ")
    text.append(verdict, style="bold green" if exit_code == 0 else "bold red")
    return text


def render(reports: list[ModelReport], fail_severity: Severity = Severity.ERROR, exit_code: int = 0,
           color: bool = False, width: int | None = None, verbose: bool = False,
           statistics: bool = False, baseline: BaselineResult | None = None,
           suppressions: tuple[SuppressionUse, ...] | None = None,
           fails: Callable[[Finding], bool] | None = None, per_file_strict: bool = False) -> str:
    """Per model a line, its findings grouped by code (`verbose`: one by one; `statistics`: none,
    the counts per code over all models instead), and the verdict last. `fails` (`Settings.fails`)
    decides which findings fail when it is not `fail_severity` for every model."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, width=width or 200,
                      highlight=False, soft_wrap=True)
    for report in reports:
        lines = _model_lines(report, fail_severity, verbose, statistics, baseline, fails)
        lines.end = ""  # the lines end in a newline already
        console.print(FittingText(lines))
    if reports:
        console.print()
    if statistics and any(report.findings for report in reports):
        counts = statistics_lines(reports)
        counts.end = ""
        console.print(FittingText(counts))
        console.print()
    if suppressions is not None:
        lines = suppression_lines(reports, suppressions)
        lines.end = ""
        console.print(FittingText(lines))
    if baseline is not None:
        lines = baseline_lines(reports, baseline)
        lines.end = ""
        console.print(FittingText(lines))
    console.print(summary_line(reports, fail_severity, exit_code, per_file_strict))
    return buffer.getvalue()
