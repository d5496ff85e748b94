"""The `bninspect` command line. Commands live in `bninspect.commands`; this file wires them up.

Layer: cli (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from bninspect.commands import check_cmd, diff_cmd, inspect_cmd, probe_cmd, recalibrate_cmd, report_cmd, rules_cmd
from bninspect.commands.common import VersionOption

app = typer.Typer(
    name="bninspect",
    help="Find BatchNormalization problems in saved Keras models. `bninspect MODEL` is `bninspect inspect MODEL`.",
    # `bninspect --install-completion` / `--show-completion`: Typer's shell completion (bash, zsh,
    # fish, PowerShell) of commands, options and file arguments.
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(version: bool = VersionOption) -> None:
    """Find BatchNormalization problems in saved Keras models."""


app.command("inspect")(inspect_cmd.inspect)
# --- commands registered below (one line each) ---
app.command("diff")(diff_cmd.diff)
app.command("check")(check_cmd.check)
app.command("rules")(rules_cmd.rules)
app.command("explain")(rules_cmd.explain)
app.command("probe")(probe_cmd.probe)
app.command("recalibrate")(recalibrate_cmd.recalibrate)
app.command("report")(report_cmd.report)
# --- end of command registrations ---

# Options of `bninspect` itself: what follows them is not a model to inspect (`--show-completion bash`).
ROOT_OPTIONS = ("-h", "--help", "-V", "--version", "--install-completion", "--show-completion")

COMMANDS = ("inspect", "check", "probe", "rules", "explain", "recalibrate", "diff", "report")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point. `bninspect MODEL ...` is short for `bninspect inspect MODEL ...`."""
    args = list(sys.argv[1:] if argv is None else argv)
    registered = {command.name for command in app.registered_commands}
    first_positional = next((arg for arg in args if not arg.startswith("-")), None)
    if first_positional is not None and first_positional not in registered and args and args[0] not in ROOT_OPTIONS:
        args.insert(0, "inspect")
    app(args=args, prog_name="bninspect")
