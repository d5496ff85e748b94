"""The text report of `bninspect probe`: what the data did to every BN layer, then the findings.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bninspect.findings import Finding, Severity
from bninspect.probes.results import LayerProbe, ProbeReport, drifting_channels
from bninspect.summary import fmt_number, fmt_range
from bninspect.untrusted import printable, rich_literal

SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _maximum(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else None


def _header(report: ProbeReport) -> Text:
    text = Text()
    text.append(printable(report.source), style="bold")
    text.append(f"  {report.keras} · {report.samples} samples in {report.batches} batches of {report.batch_size}"
                f" · {report.seconds:.1f} s")
    return text


def _codes(findings: tuple[Finding, ...]) -> Text:
    text = Text()
    for finding in sorted(findings, key=lambda f: (-f.severity.rank, f.code)):
        if text:
            text.append(" ")
        text.append(finding.code, style=SEVERITY_STYLE[finding.severity])
    return text


def _row(layer: LayerProbe, report: ProbeReport) -> list:
    codes = _codes(report.findings_for(layer.path))
    path = rich_literal(layer.path)  # a Text: rich parses a str cell as markup
    if not layer.reached:
        return [path, str(layer.channels), "not reached by the data", "", "", "", "", codes]
    shift, ratio = layer.mean_shift, layer.variance_ratio
    ratio_text = f"{fmt_number(_median(ratio))} ({fmt_range(ratio[np.isfinite(ratio)])})"
    drifting = int(drifting_channels(layer, report.thresholds).sum())
    derived = "" if layer.output_measured else "*"
    return [path, str(layer.channels),
            f"{fmt_number(_median(shift))} / {fmt_number(_maximum(shift))}", ratio_text, f"{drifting}/{layer.channels}",
            fmt_range(layer.output.mean) + derived, fmt_range(layer.output.std) + derived, codes]


def _layers_table(report: ProbeReport) -> Table:
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("layer", "ch", "input mean shift (median / max, stored std)", "input var ratio (median (range))",
                   "drifting", "output mean", "output std", "findings"):
        table.add_column(column, overflow="fold")
    for layer in sorted(report.layers, key=lambda item: (item.order is None, item.order or 0)):
        table.add_row(*_row(layer, report))
    return table


def _comparisons(report: ProbeReport) -> Text:
    text = Text()
    if report.gap is not None:
        text.append(f"batch statistics vs moving statistics: predictions differ by {report.gap.relative_difference:.1%} "
                    f"(relative L2 over {report.gap.batches} batch(es); BN102 above "
                    f"{report.thresholds.train_inference_gap:.1%} when a BN layer's moving statistics "
                    f"disagree with the data, else it is batch-to-batch noise)\n")
    if report.consistency is not None:
        text.append(f"one sample alone vs inside a batch of {report.consistency.batch_size}: "
                    f"max relative difference {report.consistency.relative_difference:.2g} "
                    f"(BN102 above {report.thresholds.batch_consistency:g})\n")
    return text


def _finding_lines(findings: tuple[Finding, ...]) -> Text:
    text = Text()
    for finding in findings:
        text.append(f"{finding.code} ", style=SEVERITY_STYLE[finding.severity])
        text.append(f"{finding.severity.value:<7} ", style=SEVERITY_STYLE[finding.severity])
        text.append(printable(f"{finding.layer or '(model)'}: {finding.message}") + "\n")
        text.append(f"        hint: {printable(finding.hint)}\n", style="dim")
    return text


def renderable(report: ProbeReport):
    parts = [_header(report)]
    if report.layers:
        parts.append(_layers_table(report))
        if any(not layer.output_measured for layer in report.layers if layer.reached):
            parts.append(Text("* output statistics follow from the input's through the layer's inference transform",
                              style="dim"))
    else:
        parts.append(Text("no BatchNormalization layers found", style="dim"))
    parts.append(_comparisons(report))
    parts.append(_finding_lines(report.findings) if report.findings else Text("no findings", style="green"))
    return Group(*parts)


def render(report: ProbeReport, color: bool = False, width: int | None = None) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, width=width or 200,
                      highlight=False, soft_wrap=False)
    console.print(renderable(report))
    return buffer.getvalue()
