"""Text and JSON for `bninspect diff`.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import io
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bninspect._version import __version__
from bninspect.diff import ARRAY_NAMES, ModelDiff
from bninspect.model import ModelDescription
from bninspect.reporters.json_report import _finite_or_text
from bninspect.summary import fmt_number
from bninspect.untrusted import printable, rich_literal

STATUS_STYLE = {"changed": "yellow", "unchanged": "dim", "only_in_a": "red", "only_in_b": "green"}


def _side(description: ModelDescription) -> str:
    """`path (format)`, with the training step count when the file records it."""
    details = description.format
    if description.training_steps is not None:
        details += f", {description.training_steps} training steps"
    return f"{printable(description.source)} ({details})"


def render_json(model_diff: ModelDiff) -> str:
    data = {"schema_version": 1, "tool": {"name": "bninspect", "version": __version__}, **model_diff.to_dict()}
    return json.dumps(_finite_or_text(data), indent=2, allow_nan=False) + "\n"


def render_text(model_diff: ModelDiff, color: bool = False, width: int | None = None) -> str:
    """The two files, a table row per BN layer, the counts per status. Every name reaches rich as a
    Text (through printable): a str would be parsed as markup, and `[/]` in a name raises."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, width=width or 200, highlight=False)
    console.print(Text(f"A: {_side(model_diff.a)}\nB: {_side(model_diff.b)}"))
    table = Table(show_edge=False, header_style="bold", caption="largest change: absolute (relative to max |value| in A or B)")
    table.add_column("layer")
    table.add_column("status")
    for name in ARRAY_NAMES:
        table.add_column(name.replace("_", " "), justify="right")
    for layer in model_diff.layers:
        cells = []
        for name in ARRAY_NAMES:
            change = layer.changes.get(name)
            cells.append("-" if change is None else f"{fmt_number(change.max_abs)} ({change.max_rel:.1%})")
        status = Text(layer.status, style=STATUS_STYLE[layer.status])
        if layer.note:
            status.append(f" {layer.note}")
        table.add_row(rich_literal(layer.path), status, *cells)
    console.print(table)
    summary = model_diff.to_dict()["summary"]
    unchanged = [layer.path for layer in model_diff.layers if layer.status == "unchanged"]
    console.print(", ".join(f"{count} {status.replace('_', ' ')}" for status, count in summary.items()))
    if unchanged:
        console.print(rich_literal(f"did not move at all: {', '.join(unchanged)}"))
    return buffer.getvalue()
