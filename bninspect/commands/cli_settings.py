"""Settings for a command: the config file (explicit or the nearest pyproject.toml) with the
command-line flags on top. A bad config is a one-line error and exit 2.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.common import fail

ConfigOption = typer.Option(None, "--config", help="Read settings from FILE (a pyproject.toml's [tool.bninspect], "
                                                   "or a TOML file with the same keys) instead of the nearest pyproject.toml.",
                            dir_okay=False)
SelectOption = typer.Option(None, "--select", help="Only these rules: codes, names or prefixes, comma-separated "
                                                   "or repeated (replaces the configured selection).")
IgnoreOption = typer.Option(None, "--ignore", help="Skip these rules: codes, names or prefixes (added to the configured ignores).")


def command_settings(config: Optional[Path] = None, select: Optional[List[str]] = None,
                     ignore: Optional[List[str]] = None, strict: Optional[bool] = None, debug: bool = False,
                     build: Optional[bool] = None, baseline: Optional[str] = None):
    from bninspect.config import SettingsError, load_settings

    try:
        return load_settings(config).with_overrides(select=select, ignore=ignore, strict=strict, build=build,
                                                         baseline=baseline)
    except SettingsError as error:
        if debug:
            raise
        fail(str(error))
