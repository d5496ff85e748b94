"""The Python API: `bninspect.inspect(path_or_model)` and `bninspect.check(...)`."""

from __future__ import annotations

import os

from bninspect.report import ModelReport


def inspect_path(path: str | os.PathLike, settings=None) -> ModelReport:
    """Read one model file statically and run the static rules. Raises ModelReadError."""
    from bninspect import loaders
    from bninspect.rules import run_static_rules

    description = loaders.load(path)
    return ModelReport(source=str(path), description=description,
                       findings=run_static_rules(description, settings))
