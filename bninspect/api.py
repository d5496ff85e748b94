"""The Python API: `bninspect.inspect(path_or_model)` and `bninspect.check(...)`.

Everything heavy is imported inside the functions: reading a model file statically never imports
TensorFlow or Keras; only `data=...` (the dynamic analysis) does.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from bninspect.report import ModelReport

if TYPE_CHECKING:
    from bninspect.checking import ProbeOptions
    from bninspect.config import Settings
    from bninspect.findings import Finding

PathLike = (str, os.PathLike)


def inspect_path(path: str | os.PathLike, settings=None) -> ModelReport:
    """Read one model file statically and run the static rules. Raises ModelReadError."""
    from bninspect import loaders
    from bninspect.rules import run_static_rules

    description = loaders.load(path)
    return ModelReport(source=str(path), description=description,
                       findings=run_static_rules(description, settings))


def in_memory_source(model: Any) -> str:
    """How findings name an in-memory model (the same name `run_probe` gives it)."""
    return f"<in-memory model {getattr(model, 'name', type(model).__name__)!r}>"


def is_keras_model(value: Any) -> bool:
    """Duck-typed, so that asking does not import Keras: a Keras 3 or tf-keras model."""
    return (not isinstance(value, PathLike) and callable(value) and hasattr(value, "layers")
            and hasattr(value, "get_config"))


def inspect_model(model: Any, settings=None) -> ModelReport:
    """Describe a live Keras 3 / tf-keras model and run the static rules. Raises ModelReadError
    when the model cannot be described (e.g. a BN layer that was never built)."""
    from bninspect.loaders.graph import ConfigError
    from bninspect.loaders.in_memory import describe_keras_model
    from bninspect.model import ModelReadError
    from bninspect.rules import run_static_rules

    source = in_memory_source(model)
    try:
        description = describe_keras_model(model, source)
    except ConfigError as error:
        raise ModelReadError(source, " ".join(str(error).split())) from error
    return ModelReport(source=source, description=description, findings=run_static_rules(description, settings))


def add_probe(report: ModelReport, model: Any, settings: "Settings", options: "ProbeOptions") -> ModelReport:
    """Run the dynamic analysis on `options.data` and merge its findings (after the settings'
    selection, per-layer ignores and severity overrides) into `report`; the probe's measurements go
    to the `probe` entry of the JSON model entry, as with `bninspect probe --format json`.

    Raises ModelReadError and UsageProblem subclasses (ModelRefused, DataError, ThresholdError).
    """
    from bninspect.probes import run_probe

    probe = run_probe(model, options.data, batch_size=options.batch_size, limit=options.limit,
                      rescale=options.rescale, unsafe=options.unsafe, custom_objects=options.custom_objects,
                      thresholds=settings.thresholds, progress=options.progress)
    probe = probe.with_findings(settings.apply)
    return replace(report, findings=tuple(report.findings) + tuple(probe.findings),
                   extra={**report.extra, "probe": probe.to_dict()})


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


def probe_options(data: Any, batch_size: int, limit: int | None, rescale: float | str | None, unsafe: bool,
                   custom_objects: Mapping[str, Any] | str | os.PathLike | None, progress: bool) -> "ProbeOptions":
    from bninspect.checking import ProbeOptions
    from bninspect.data import parse_rescale
    from bninspect.probes.loading import load_custom_objects

    if isinstance(rescale, str):
        rescale = parse_rescale(rescale)
    if isinstance(custom_objects, PathLike):
        custom_objects = load_custom_objects(custom_objects)  # runs the file, once for all models
    return ProbeOptions(data=data, batch_size=batch_size, limit=limit, rescale=rescale, unsafe=unsafe,
                        custom_objects=custom_objects, progress=progress)


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
    if data is None:
        return report
    options = probe_options(data, batch_size, limit, rescale, unsafe, custom_objects, progress)
    return add_probe(report, str(model) if isinstance(model, PathLike) else model, resolved, options)


def check(models: Any, data: Any = None, *, batch_size: int = 32, limit: int | None = None,
          rescale: float | str | None = None, unsafe: bool = False,
          custom_objects: Mapping[str, Any] | str | os.PathLike | None = None,
          select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None,
          config: str | os.PathLike | None = None, settings: "Settings | None" = None,
          unreadable: str = "raise", progress: bool = False) -> tuple["Finding", ...]:
    """See `bninspect.check`."""
    from bninspect.checking import targets
    from bninspect.commands.common import UsageProblem
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
                from bninspect.checking import reason_without_source

                warnings.warn(f"bninspect.check: skipped {target.path}: {reason_without_source(error, target.path)}", stacklevel=3)
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
