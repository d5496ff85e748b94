"""The Python API: `bninspect.inspect(path_or_model)` and `bninspect.check(...)`.

Layer: api. The Python API sits above the engine (`bninspect.checking`) and the reporters, which render the
report in a notebook; only the `bninspect` facade and the commands are above it.
Everything heavy is imported inside the functions: reading a model file statically never imports
TensorFlow or Keras; only `data=...` (the dynamic analysis) does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from bninspect.checking import (PathLike, add_probe, inspect_model, inspect_path, is_keras_model, probe_options,
                                reason_without_source, targets)
from bninspect.report import ModelReport
from bninspect.untrusted import printable

if TYPE_CHECKING:
    from bninspect.config import Settings
    from bninspect.findings import Finding


@dataclass(frozen=True)
class InspectionReport(ModelReport):
    """What `bninspect.inspect` returns: a ModelReport that renders itself in a notebook (Jupyter,
    Colab) and with rich as the same table as `bninspect MODEL`."""

    @classmethod
    def of(cls, report: ModelReport) -> "InspectionReport":
        return cls(**{item.name: getattr(report, item.name) for item in fields(ModelReport)})

    def __rich__(self):
        from bninspect.reporters.table import model_renderable

        return model_renderable(self)

    def _repr_html_(self) -> str:
        from bninspect.reporters.table import render_html

        return render_html([self])

    def to_html(self) -> str:
        """The page `bninspect report` writes for this model: self-contained HTML with per-layer
        plots (and, when it was run on data, stored vs observed statistics)."""
        from bninspect.reporters.html_report import render_html

        return render_html([self])

    def overview(self) -> "Figure":
        """The overview figure along the depth; a notebook shows it, `.svg` is the inline SVG."""
        from bninspect.reporters.plots import overview_svg

        return Figure(overview_svg(self))


@dataclass(frozen=True)
class Figure:
    """An SVG picture that Jupyter displays."""

    svg: str

    def _repr_svg_(self) -> str:
        return self.svg


def resolve_settings(settings: "Settings | None" = None, config: str | os.PathLike | None = None,
                     select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None,
                     start: Path | None = None) -> "Settings":
    """`settings` as given, else those of `config` (a TOML file), else those of the nearest
    pyproject.toml's [tool.bninspect] (like the CLI); then `select` / `ignore` on top, with the
    CLI's meaning (`select` replaces the configured selection, `ignore` adds to it).
    Raises SettingsError (a ValueError)."""
    from bninspect.config import SettingsError, load_settings

    if settings is not None and config is not None:
        raise SettingsError("pass either settings or config, not both")
    base = settings if settings is not None else load_settings(config, start=start)
    if isinstance(select, str):
        select = [select]
    if isinstance(ignore, str):
        ignore = [ignore]
    return base.with_overrides(select=select, ignore=ignore)


def inspect(model: Any, data: Any = None, *, batch_size: int = 32, limit: int | None = None,
            rescale: float | str | None = None, unsafe: bool = False,
            custom_objects: Mapping[str, Any] | str | os.PathLike | None = None,
            select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None,
            config: str | os.PathLike | None = None, settings: "Settings | None" = None,
            progress: bool = False) -> ModelReport:
    """See `bninspect.inspect`."""
    resolved = resolve_settings(settings, config, select, ignore)
    if isinstance(model, PathLike):
        report = inspect_path(model, resolved)
    elif is_keras_model(model):
        report = inspect_model(model, resolved)
    else:
        raise TypeError(f"expected a model file path or a Keras model, not {type(model).__name__}")
    if data is not None:
        options = probe_options(data, batch_size, limit, rescale, unsafe, custom_objects, progress)
        report = add_probe(report, str(model) if isinstance(model, PathLike) else model, resolved, options)
    return InspectionReport.of(report)


def check(models: Any, data: Any = None, *, batch_size: int = 32, limit: int | None = None,
          rescale: float | str | None = None, unsafe: bool = False,
          custom_objects: Mapping[str, Any] | str | os.PathLike | None = None,
          select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None,
          config: str | os.PathLike | None = None, settings: "Settings | None" = None,
          unreadable: str = "raise", progress: bool = False) -> tuple["Finding", ...]:
    """See `bninspect.check`."""
    from bninspect.errors import UsageProblem
    from bninspect.model import ModelReadError

    if unreadable not in ("raise", "skip"):
        raise ValueError(f"unreadable must be 'raise' or 'skip', not {unreadable!r}")
    resolved = resolve_settings(settings, config, select, ignore)
    items = [models] if isinstance(models, PathLike) or is_keras_model(models) else list(models)
    options = None
    if data is not None:
        options = probe_options(data, batch_size, limit, rescale, unsafe, custom_objects, progress)
    findings: list = []
    for item in items:
        if is_keras_model(item):
            report = inspect_model(item, resolved)
            if options is not None:
                report = add_probe(report, item, resolved, options)
            findings.extend(report.findings)
            continue
        if not isinstance(item, PathLike):
            raise TypeError(f"expected model file paths or Keras models, not {type(item).__name__}")
        for target in targets([item]):
            try:
                if target.error is not None:
                    raise ModelReadError(target.path, target.error)
                report = inspect_path(target.path, resolved)
                if options is not None:
                    report = add_probe(report, target.path, resolved, options)
            except (ModelReadError, UsageProblem) as error:  # unreadable, or (with data) could not run
                if unreadable == "raise":
                    raise
                # Shown on stderr like the CLI's one-line errors, and escaped (and redacted) the same way.
                reason = reason_without_source(error, target.path)
                warnings.warn(f"bninspect.check: skipped {printable(target.path)}: {printable(reason)}", stacklevel=3)
                continue
            findings.extend(report.findings)
    return tuple(findings)



def recalibrate(model: Any, data: Any, *, layers: str | None = None, batch_size: int = 32, limit: int | None = None,
                rescale: float | str | None = None, progress: bool = False) -> tuple:
    """See `bninspect.recalibrate`."""
    if not is_keras_model(model):
        raise TypeError(f"expected an in-memory Keras model, not {type(model).__name__} "
                        "(for model files: bninspect recalibrate MODEL --data FILE -o OUT)")
    from bninspect.probes.recalibrate import assign, recompute

    result = recompute(model, data, batch_size=batch_size, limit=limit, rescale=rescale, layers=layers,
                       progress=progress)
    assign(result)
    return result.layers
