"""The rich table of `bninspect MODEL`: a header, one row per BN layer, the findings below.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import fnmatch
import io
from typing import Iterable, Iterator

import numpy as np
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Span, Text

from bninspect.findings import Finding, Severity
from bninspect.model import BNLayer
from bninspect.report import ModelReport, architecture_label
from bninspect.reporters.grouping import FindingGroup, group_findings, one_by_one
from bninspect.summary import fmt_number, fmt_range, histogram
from bninspect.untrusted import printable

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _header(report: ModelReport) -> Text:
    """The file, its format and what wrote it. Names, versions and classes come from the file: here
    and in every cell below they go through `printable`, and reach rich as Text, never as markup."""
    description = report.description
    text = Text()
    text.append(printable(report.source), style="bold")
    if description is None:
        return text
    parts = [description.format]
    if description.keras_version:
        parts.append(f"Keras {description.keras_version}")
    if description.keras_hub_version:
        parts.append(f"KerasHub {description.keras_hub_version}")
    parts.append(architecture_label(description))
    parts.append(f"{len(description.bn_layers)} BatchNormalization")
    if description.training_steps is not None:
        parts.append(f"{description.training_steps} training steps")
    text.append(printable("  " + " · ".join(parts)))
    return text


LAYER_COLUMNS = ("layer", "axis", "ch", "eps", "mom", "gamma", "beta", "moving mean",
                 "moving variance", "var hist", "findings")


def _layer_rows(report: ModelReport) -> list[tuple[list[str], list[Finding]]]:
    """Per BN layer: the plain-text cells before the findings column, and the layer's findings in
    display order. Findings are grouped by layer once: a scan per layer is quadratic, and files with
    thousands of BN layers have thousands of findings."""
    by_layer: dict[str | None, list[Finding]] = {}
    for finding in report.findings:
        by_layer.setdefault(finding.layer, []).append(finding)
    rows = []
    for layer in report.bn_layers:
        findings = sorted(by_layer.get(layer.path, ()), key=lambda f: (-f.severity.rank, f.code))
        rows.append(([
            printable(layer.path),
            "?" if layer.axis is None else ",".join(str(a) for a in layer.axis),
            str(layer.channels), fmt_number(layer.epsilon), fmt_number(layer.momentum),
            fmt_range(layer.gamma), fmt_range(layer.beta), fmt_range(layer.moving_mean),
            fmt_range(layer.moving_variance), histogram(layer.moving_variance),
        ], findings))
    return rows


def _codes(findings: list[Finding]) -> Text:
    text = Text()
    for finding in findings:
        if text:
            text.append(" ")
        text.append(finding.code, style=SEVERITY_STYLE[finding.severity])
    return text


def _rich_table(rows: list[tuple[list[str], list[Finding]]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in LAYER_COLUMNS:
        table.add_column(column, overflow="fold")
    for cells, findings in rows:
        # Text, not str: a layer name is data, never console markup or an :emoji: code.
        table.add_row(*(Text(cell) for cell in cells), _codes(findings))
    return table


def _plain_table(rows: list[tuple[list[str], list[Finding]]], max_width: int) -> Text | None:
    """The same table as `_rich_table`, laid out directly, when every cell fits on one line.

    rich measures and wraps each of the ~10 cells of every row, which takes seconds for thousands of
    BN layers. When the widest cell of every column fits in `max_width`, rich's layout is simple:
    each column as wide as its widest cell, ` ┃ ` / ` │ ` between columns, a `━╇━` rule under the
    header. Anything else (a table too wide, a cell that rich would clean or measure specially)
    returns None and rich lays it out.
    """
    table = [(list(LAYER_COLUMNS), None)]
    for cells, findings in rows:
        table.append((cells + [" ".join(finding.code for finding in findings)], findings))
    widths = [0] * len(LAYER_COLUMNS)
    for cells, _ in table:
        for index, cell in enumerate(cells):
            if not cell.isprintable():
                return None  # control characters, tabs: rich strips or expands them
            length = cell_len(cell)
            if length > widths[index]:
                widths[index] = length
    if sum(widths) + 3 * (len(widths) - 1) > max_width:
        return None
    last = len(widths) - 1
    lines: list[str] = []
    spans: list[Span] = []
    offset = 0
    for row_index, (cells, findings) in enumerate(table):
        padded = [cell + " " * (width - cell_len(cell)) for cell, width in zip(cells, widths)]
        separator = " ┃ " if row_index == 0 else " │ "
        line = separator.join(padded)
        if row_index == 0:
            start = offset
            for index, cell in enumerate(padded):
                spans.append(Span(start, start + len(cell), "bold"))
                start += len(cell) + len(separator)
        elif findings:
            start = offset + len(line) - len(padded[last])
            for finding in findings:
                spans.append(Span(start, start + len(finding.code), SEVERITY_STYLE[finding.severity]))
                start += len(finding.code) + 1
        lines.append(line)
        offset += len(line) + 1
        if row_index == 0:
            rule = "╇".join("━" * (width + (1 if index in (0, last) else 2)) for index, width in enumerate(widths))
            lines.append(rule)
            offset += len(rule) + 1
    return Text("\n".join(lines), spans=spans, no_wrap=True, overflow="ignore")


def _fitting_segments(text: Text, console: Console, options: ConsoleOptions):
    """The segments of `text` straight from `Text.render` when every line fits the width and
    there is nothing for rich's line wrapping to change (no tabs); None otherwise.

    rich wraps a Text line by line (split, look for wrap points, render each line), which costs
    tens of microseconds a line: seconds for the table and findings of a model with thousands of
    BN layers. For lines that fit, the wrapping changes nothing, so the output is the same.
    """
    plain = text.plain
    if "\t" in plain or text.style or text.justify not in (None, "default") \
            or options.justify not in (None, "default"):
        return None
    width = options.max_width
    if not all(cell_len(line) <= width for line in plain.split("\n")):
        return None
    if console.color_system is None and not console.record:
        # Without colour (and nothing recording styles for export), styles print nothing: skip
        # resolving them span by span.
        return _split_lines([Segment(plain + text.end)])
    return _split_lines(text.render(console, end=text.end))


def _split_lines(segments: Iterable[Segment]) -> Iterator[Segment]:
    """Each newline a plain segment of its own, as rich's line-by-line rendering leaves them (and
    no segment spanning many lines, which rich would split again by repeated `partition`)."""
    newline = Segment("\n")
    for segment in segments:
        if "\n" not in segment.text or segment.control:
            yield segment
            continue
        for index, part in enumerate(segment.text.split("\n")):
            if index:
                yield newline
            if part:
                yield Segment(part, segment.style)


class _LayersTable:
    """The BN layer table: laid out directly when it fits the width, by rich's Table otherwise."""

    def __init__(self, report: ModelReport) -> None:
        self.rows = _layer_rows(report)

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        plain = _plain_table(self.rows, options.max_width)
        segments = _fitting_segments(plain, console, options) if plain is not None else None
        if segments is not None:
            yield from segments
        else:
            yield plain if plain is not None else _rich_table(self.rows)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, _rich_table(self.rows))


def _finding_lines(findings: tuple[Finding, ...], verbose: bool) -> Text:
    """The findings under the table: grouped by code, or with `verbose` one by one."""
    text = Text()
    for group in (one_by_one if verbose else group_findings)(findings):
        group_lines(text, group, indent="", name=False)
    return text


def group_lines(text: Text, group: FindingGroup, indent: str, name: bool) -> None:
    """A group as the text outputs show it: one finding as one line, more as the count and the
    first layers, then the group's message; the hint below (with the rule name when `name`)."""
    style = SEVERITY_STYLE[group.severity]
    text.append(f"{indent}{group.code} ", style=style)
    text.append(f"{group.severity.value:<7} ", style=style)
    if group.count == 1:
        text.append(printable(f"{group.findings[0].layer or '(model)'}: {group.message()}") + "\n")
    else:
        text.append(printable(f"{group.count} layers: {group.layers_text()}") + "\n")
        text.append(f"{indent}      {printable(group.message())}\n")
    hint = f"{group.name}; hint: {group.hint}" if name else f"hint: {group.hint}"
    text.append(f"{indent}      {printable(hint)}\n", style="dim")




class FittingText:
    """A Text rendered without rich's line wrapping when it has nothing to wrap (the finding
    lines: thousands for a large model). The output is the same."""

    def __init__(self, text: Text) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions):
        segments = _fitting_segments(self.text, console, options)
        if segments is not None:
            yield from segments
        else:
            yield self.text

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.text)


def model_renderable(report: ModelReport, verbose: bool = False):
    parts = [_header(report)]
    if report.error is not None:
        parts.append(Text(f"error: {printable(report.error)}", style="bold red"))
        return Group(*parts)
    if report.bn_layers:
        parts.append(_LayersTable(report))
    else:
        parts.append(Text("no BatchNormalization layers found", style="dim"))
    if report.findings:
        parts.append(FittingText(_finding_lines(report.findings, verbose)))
    else:
        parts.append(Text("no findings", style="green"))
    return Group(*parts)


def _matches(layer: BNLayer, pattern: str) -> bool:
    return fnmatch.fnmatchcase(layer.path, pattern) or fnmatch.fnmatchcase(layer.name, pattern) or pattern == layer.path


def channel_renderable(report: ModelReport, pattern: str):
    """`--layer PATTERN`: every channel of each matching BN layer."""
    parts = [_header(report)]
    layers = [layer for layer in report.bn_layers if _matches(layer, pattern)]
    if not layers:
        names = ", ".join(layer.path for layer in report.bn_layers) or "none"
        parts.append(Text(printable(f"no BN layer matches {pattern!r} (BN layers: {names})"), style="bold red"))
        return Group(*parts)
    for layer in layers:
        eps = layer.epsilon if layer.epsilon is not None else 0.0
        # A Text title: a str would be parsed as markup, and `[/]` in a layer name raises.
        table = Table(title=Text(printable(f"{layer.path}  ({layer.channels} channels)"), style="table.title"),
                      show_edge=False, header_style="bold")
        for column in ("channel", "gamma", "beta", "moving mean", "moving variance", "effective scale"):
            table.add_column(column, justify="right")
        gamma = layer.gamma if layer.gamma is not None else np.ones(layer.channels)
        with np.errstate(all="ignore"):
            scale = np.abs(gamma) / np.sqrt(layer.moving_variance + eps)
        for channel in range(layer.channels):
            table.add_row(
                str(channel),
                fmt_number(float(layer.gamma[channel])) if layer.gamma is not None else "-",
                fmt_number(float(layer.beta[channel])) if layer.beta is not None else "-",
                fmt_number(float(layer.moving_mean[channel])),
                fmt_number(float(layer.moving_variance[channel])),
                fmt_number(float(scale[channel])),
            )
        parts.append(table)
    return Group(*parts)


def matching_layers(report: ModelReport, pattern: str) -> list[BNLayer]:
    return [layer for layer in report.bn_layers if _matches(layer, pattern)]


def _console(buffer: io.StringIO, color: bool, width: int | None) -> Console:
    return Console(file=buffer, force_terminal=color, no_color=not color,
                   color_system="standard" if color else None, width=width or 200,
                   highlight=False, soft_wrap=False)


def render(reports: list[ModelReport], color: bool = False, width: int | None = None,
           layer_pattern: str | None = None, verbose: bool = False) -> str:
    buffer = io.StringIO()
    console = _console(buffer, color, width)
    for index, report in enumerate(reports):
        if index:
            console.print()
        console.print(channel_renderable(report, layer_pattern) if layer_pattern
                      else model_renderable(report, verbose))
    return buffer.getvalue()


def render_html(reports: list[ModelReport]) -> str:
    console = Console(record=True, file=io.StringIO(), width=160, force_terminal=True, color_system="truecolor")
    for report in reports:
        console.print(model_renderable(report))
    return console.export_html(inline_styles=True)
