"""The report of `bninspect recalibrate`: moving statistics before and after, then `check` on the
new file. Text (a rich table) or JSON; both take plain data and return a string.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import io
import json
import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bninspect._version import __version__
from bninspect.findings import Severity
from bninspect.recalibration import RecalibratedLayer, RecalibrationSummary
from bninspect.report import ModelReport
from bninspect.reporters import check_text
from bninspect.reporters.json_report import _finite_or_text
from bninspect.summary import array_stats, fmt_number, fmt_range
from bninspect.untrusted import printable, rich_literal


def _median(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _largest_shift(layer: RecalibratedLayer) -> float | None:
    """How far the moving mean moved, in units of the new standard deviation, worst channel."""
    with np.errstate(all="ignore"):
        shift = np.abs(layer.after_mean - layer.before_mean) / np.sqrt(layer.after_variance)
    finite = shift[np.isfinite(shift)]
    return float(finite.max()) if finite.size else None


def render_text(summary: RecalibrationSummary, color: bool = False, width: int | None = None) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, width=width or 200, highlight=False)
    header = Text()
    header.append(printable(summary.source), style="bold")
    header.append(f" → {printable(summary.output)}", style="bold")
    header.append(f"  {summary.keras} · {summary.samples} samples in {summary.batches} batches of "
                  f"{summary.batch_size} · {len(summary.layers)} BN layers recalibrated")
    console.print(header)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("layer", "channels", "moving_mean before", "moving_mean after", "moving_variance before",
                   "moving_variance after", "largest mean shift (new std)"):
        table.add_column(column, overflow="fold")
    for layer in summary.layers:
        table.add_row(rich_literal(layer.path), str(layer.before_mean.size), fmt_range(layer.before_mean),
                      fmt_range(layer.after_mean),
                      f"{fmt_number(_median(layer.before_variance))} ({fmt_range(layer.before_variance)})",
                      f"{fmt_number(_median(layer.after_variance))} ({fmt_range(layer.after_variance)})",
                      fmt_number(_largest_shift(layer)))
    console.print(table)
    for path, reason in summary.kept:
        console.print(rich_literal(f"kept {path}: {reason}", style="dim"))
    for note in summary.notes:
        console.print(rich_literal(f"note: {note}", style="dim"))
    console.print()
    console.print(rich_literal(f"check {summary.output}:", style="bold"))
    checked = check_text.render([summary.check], Severity.ERROR, exit_code=_check_exit(summary.check),
                                color=color, width=width)
    # Already rendered (names escaped, colours as ANSI codes): a Text, so that rich does not read
    # a `[bold]` in a layer name as markup.
    console.print(Text(checked), end="")
    return buffer.getvalue()


def _check_exit(report: ModelReport) -> int:
    return 1 if report.count(Severity.ERROR) else 0


def to_dict(summary: RecalibrationSummary) -> dict:
    return {
        "source": summary.source,
        "output": summary.output,
        "keras": summary.keras,
        "samples": summary.samples,
        "batches": summary.batches,
        "batch_size": summary.batch_size,
        "layers": [{"path": layer.path, "samples": layer.samples,
                    "before": {"moving_mean": array_stats(layer.before_mean),
                               "moving_variance": array_stats(layer.before_variance)},
                    "after": {"moving_mean": array_stats(layer.after_mean),
                              "moving_variance": array_stats(layer.after_variance)},
                    "largest_mean_shift": _largest_shift(layer)}
                   for layer in summary.layers],
        "kept": [{"path": path, "reason": reason} for path, reason in summary.kept],
        "notes": list(summary.notes),
        "check": summary.check.to_dict(),
    }


def render_json(summary: RecalibrationSummary) -> str:
    document = {"schema_version": 1, "tool": {"name": "bninspect", "version": __version__},
                "recalibration": to_dict(summary)}
    return json.dumps(_finite_or_text(document), indent=2, allow_nan=False) + "\n"
