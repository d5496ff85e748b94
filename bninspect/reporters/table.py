"""The rich table of `bninspect MODEL`: a header, one row per BN layer, the findings below."""

from __future__ import annotations

import fnmatch
import io

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bninspect.findings import Finding, Severity
from bninspect.model import BNLayer
from bninspect.report import ModelReport
from bninspect.summary import fmt_number, fmt_range, histogram

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _header(report: ModelReport) -> Text:
    description = report.description
    text = Text()
    text.append(report.source, style="bold")
    if description is None:
        return text
    parts = [description.format]
    if description.keras_version:
        parts.append(f"Keras {description.keras_version}")
    if description.has_config:
        parts.append(f"{description.layer_count} layers")
    else:
        parts.append("weights only, no config")
    parts.append(f"{len(description.bn_layers)} BatchNormalization")
    text.append("  " + " · ".join(parts))
    return text


def _codes(findings: list[Finding]) -> Text:
    text = Text()
    for finding in sorted(findings, key=lambda f: (-f.severity.rank, f.code)):
        if text:
            text.append(" ")
        text.append(finding.code, style=SEVERITY_STYLE[finding.severity])
    return text


def _layers_table(report: ModelReport) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("layer", "axis", "ch", "eps", "mom", "gamma", "beta", "moving mean",
                   "moving variance", "var hist", "findings"):
        table.add_column(column, overflow="fold")
    for layer in report.bn_layers:
        findings = [f for f in report.findings if f.layer == layer.path]
        table.add_row(
            layer.path,
            "?" if layer.axis is None else ",".join(str(a) for a in layer.axis),
            str(layer.channels), fmt_number(layer.epsilon), fmt_number(layer.momentum),
            fmt_range(layer.gamma), fmt_range(layer.beta), fmt_range(layer.moving_mean),
            fmt_range(layer.moving_variance), histogram(layer.moving_variance), _codes(findings),
        )
    return table


def _finding_lines(findings: tuple[Finding, ...]) -> Text:
    text = Text()
    for finding in sorted(findings, key=lambda f: (-f.severity.rank, f.code, f.layer or "")):
        text.append(f"{finding.code} ", style=SEVERITY_STYLE[finding.severity])
        text.append(f"{finding.severity.value:<7} ", style=SEVERITY_STYLE[finding.severity])
        text.append(f"{finding.layer or '(model)'}: {finding.message}\n")
        text.append(f"        hint: {finding.hint}\n", style="dim")
    return text


def model_renderable(report: ModelReport):
    parts = [_header(report)]
    if report.error is not None:
        parts.append(Text(f"error: {report.error}", style="bold red"))
        return Group(*parts)
    if report.bn_layers:
        parts.append(_layers_table(report))
    else:
        parts.append(Text("no BatchNormalization layers found", style="dim"))
    if report.findings:
        parts.append(_finding_lines(report.findings))
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
        parts.append(Text(f"no BN layer matches {pattern!r} (BN layers: {names})", style="bold red"))
        return Group(*parts)
    for layer in layers:
        eps = layer.epsilon if layer.epsilon is not None else 0.0
        table = Table(title=f"{layer.path}  ({layer.channels} channels)", show_edge=False, header_style="bold")
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
           layer_pattern: str | None = None) -> str:
    buffer = io.StringIO()
    console = _console(buffer, color, width)
    for index, report in enumerate(reports):
        if index:
            console.print()
        console.print(channel_renderable(report, layer_pattern) if layer_pattern else model_renderable(report))
    return buffer.getvalue()


def render_html(reports: list[ModelReport]) -> str:
    console = Console(record=True, file=io.StringIO(), width=160, force_terminal=True, color_system="truecolor")
    for report in reports:
        console.print(model_renderable(report))
    return console.export_html(inline_styles=True)
