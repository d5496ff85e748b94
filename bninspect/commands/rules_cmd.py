"""`bninspect rules` (the catalogue) and `bninspect explain CODE|NAME` (one rule's documentation).

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from bninspect.commands.common import VersionOption, OutputOption, emit, fail, terminal_width, use_color
from bninspect.reporters import OutputFormat


def _text_or_json(output_format: OutputFormat) -> None:
    if output_format not in (OutputFormat.TEXT, OutputFormat.JSON):
        fail(f"--format {output_format.value}: this command writes text or json")


def _rule_dict(rule) -> dict:
    return {"code": rule.code, "name": rule.name, "severity": rule.severity.value, "kind": rule.kind,
            "needs_config": rule.needs_config, "needs": rule.needs, "summary": rule.summary, "what": rule.what, "why": rule.why,
            "example": rule.example, "fix": rule.fix, "hint": rule.hint}


def rules(
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    version: bool = VersionOption,
) -> None:
    """List every rule: code, name, default severity and what it finds."""
    from bninspect.rules.catalogue import RULES

    _text_or_json(output_format)
    if output_format is OutputFormat.JSON:
        emit(json.dumps({"rules": [_rule_dict(rule) for rule in RULES]}, indent=2) + "\n", output)
        return
    import io

    from rich.console import Console
    from rich.table import Table

    from bninspect.reporters.table import SEVERITY_STYLE

    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("code", "name", "severity", "finds"):
        table.add_column(column, overflow="fold")
    for rule in RULES:
        finds = rule.summary + (" [needs --data]" if rule.kind == "dynamic" else "")
        table.add_row(rule.code, rule.name, f"[{SEVERITY_STYLE[rule.severity]}]{rule.severity.value}[/]", finds)
    color = use_color(output)
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=color, no_color=not color, width=terminal_width() or 200,
            highlight=False).print(table)
    emit(buffer.getvalue() + "\n`bninspect explain CODE` shows a rule's documentation.\n", output)


def explain(
    rule_id: str = typer.Argument(..., metavar="CODE|NAME", help="A rule code (BN001) or name (untrained-moving-stats)."),
    output_format: OutputFormat = typer.Option(OutputFormat.TEXT, "--format", "-f", help="text or json."),
    output: Optional[Path] = OutputOption,
    version: bool = VersionOption,
) -> None:
    """Show one rule's documentation: what it does, why it matters, an example, how to fix it."""
    from bninspect.rules.catalogue import find_rule
    from bninspect.rules.docs import rule_text

    _text_or_json(output_format)
    rule = find_rule(rule_id)
    if rule is None:
        fail(f"unknown rule {rule_id!r} (see `bninspect rules`)")
    if output_format is OutputFormat.JSON:
        emit(json.dumps(_rule_dict(rule), indent=2) + "\n", output)
    else:
        emit(rule_text(rule), output)
