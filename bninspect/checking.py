"""The engine behind every command and the Python API: read a model (a file, or an in-memory
Keras model), run the static rules with the user's settings, optionally run the probes on data,
find model files under directories (optionally in worker processes), and decide the exit status.

Layer: engine, above loaders, rules, config, the report type and the probes; below the
reporters, the Python API and the commands. No CLI code here.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from bninspect.config import Settings
from bninspect.findings import Finding
from bninspect.model import ModelDescription
from bninspect.report import ModelReport

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_FAILURE = 2


@dataclass(frozen=True)
class Target:
    """One thing to check: a model path, or a path that yielded none (with the reason)."""

    path: str
    error: str | None = None


@dataclass(frozen=True)
class ProbeOptions:
    """What `bninspect check --data` / `bninspect.check(..., data=...)` run every model on.

    `rescale` is a number (parse "1/255" with `bninspect.data.parse_rescale` first) and
    `custom_objects` a dict (the CLI runs the user's --custom-objects file once, up front).
    """

    data: Any  # a path (.npy, .npz, directory of images) or arrays
    batch_size: int = 32
    limit: int | None = None
    rescale: float | None = None
    unsafe: bool = False
    custom_objects: Mapping[str, Any] | None = None
    progress: bool = False


PathLike = (str, os.PathLike)
CONFIG_UNAVAILABLE = "BN015"


def run_static_rules(description: ModelDescription, settings: Settings | None = None) -> tuple[Finding, ...]:
    """Every enabled static rule of the catalogue, with the settings applied (selection, severity
    overrides, per-layer ignores). For weights-only files the rules that need the config or the
    graph are skipped, and BN015 names them."""
    from bninspect.rules.base import STATIC, Hit
    from bninspect.rules.catalogue import RULES, RULES_BY_CODE

    settings = settings if settings is not None else Settings()
    findings: list[Finding] = []
    skipped: list[str] = []
    for rule in RULES:
        if rule.kind != STATIC or rule.check is None or not settings.enabled(rule.code):
            continue
        if rule.needs_config and not description.has_config:
            skipped.append(rule.code)
            continue
        findings.extend(rule.run(description, settings.thresholds))
    if not description.has_config:
        names = ", ".join(f"{code} {RULES_BY_CODE[code].name}" for code in skipped) or "none"
        findings.append(RULES_BY_CODE[CONFIG_UNAVAILABLE].finding(description.source, Hit(
            None, f"weights-only file, no model config: skipped {len(skipped)} rules that need it ({names})")))
    return settings.apply(findings)


def inspect_path(path: str | os.PathLike, settings=None) -> ModelReport:
    """Read one model file statically and run the static rules. Raises ModelReadError."""
    from bninspect import loaders

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
    from bninspect.errors import ModelReadError

    source = in_memory_source(model)
    try:
        description = describe_keras_model(model, source)
    except ConfigError as error:
        raise ModelReadError(source, " ".join(str(error).split())) from error
    return ModelReport(source=source, description=description, findings=run_static_rules(description, settings))


def add_probe(report: ModelReport, model: Any, settings: Settings, options: ProbeOptions) -> ModelReport:
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
                   extra={**report.extra, "probe": probe.to_dict()}, probe=probe)


def probe_options(data: Any, batch_size: int, limit: int | None, rescale: float | str | None, unsafe: bool,
                   custom_objects: Mapping[str, Any] | str | os.PathLike | None, progress: bool) -> ProbeOptions:
    from bninspect.data import parse_rescale
    from bninspect.probes.loading import load_custom_objects

    if isinstance(rescale, str):
        rescale = parse_rescale(rescale)
    if isinstance(custom_objects, PathLike):
        custom_objects = load_custom_objects(custom_objects)  # runs the file, once for all models
    return ProbeOptions(data=data, batch_size=batch_size, limit=limit, rescale=rescale, unsafe=unsafe,
                        custom_objects=custom_objects, progress=progress)


def targets(paths: Iterable[str | os.PathLike]) -> list[Target]:
    """Model files under `paths`, in a stable order. A directory without model files becomes an
    error entry rather than silently passing: an empty model registry is a broken CI setup."""
    from bninspect.loaders import discover

    found: list[Target] = []
    for path in paths:
        models = discover([path])
        if not models and Path(path).is_dir():
            found.append(Target(str(path), "directory holds no model files (.h5, .hdf5, .keras, SavedModel or TF checkpoint)"))
        found.extend(Target(model) for model in models)
    unique = {target.path: target for target in found}
    return list(unique.values())


def check_one(target: Target, settings: Settings) -> ModelReport:
    """Read and check one model. Unreadable files become a report with `error` set."""
    from bninspect.errors import ModelReadError

    if target.error is not None:
        return ModelReport(source=target.path, description=None, error=target.error)
    try:
        return inspect_path(target.path, settings)
    except ModelReadError as error:
        return ModelReport(source=target.path, description=None, error=error.reason)


def probe_one(target: Target, settings: Settings, options: ProbeOptions) -> ModelReport:
    """Check one model statically, then run it on the data and merge the dynamic findings.

    A model that cannot be read, loaded or run on the data (refused Lambda or custom classes,
    weights-only file, data that does not fit its inputs) becomes a report with `error` set, like
    an unreadable file: the static findings stay in the report, but it never passes.
    """
    from bninspect.errors import UsageProblem
    from bninspect.errors import ModelReadError

    report = check_one(target, settings)
    if report.error is not None:
        return report
    try:
        return add_probe(report, target.path, settings, options)
    except (ModelReadError, UsageProblem) as error:
        return replace(report, error=f"cannot run on the data: {reason_without_source(error, target.path)}")


def reason_without_source(error: BaseException, source: str) -> str:
    """The one-line message without the model path the report already names."""
    text = " ".join(str(error).split())
    prefix = f"{source}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def probe_targets(items: list[Target], settings: Settings, options: ProbeOptions,
                  on_done: Callable[[ModelReport], None] | None = None) -> list[ModelReport]:
    """`probe_one` for every target, one after another in this process (the models run under
    TensorFlow, which worker processes would each have to import again)."""
    return _collect((probe_one(item, settings, options) for item in items), on_done)


def _check_star(args: tuple[Target, Settings]) -> ModelReport:
    return check_one(*args)


def check_targets(items: list[Target], settings: Settings, jobs: int = 1,
                  on_done: Callable[[ModelReport], None] | None = None) -> list[ModelReport]:
    """Check every target, in `jobs` worker processes when jobs > 1; results in input order."""
    results: Iterator[ModelReport]
    if jobs <= 1 or len(items) <= 1:
        results = (check_one(item, settings) for item in items)
        return _collect(results, on_done)
    import multiprocessing

    # spawn, not fork: the parent may have threads (or TensorFlow) that a forked child would inherit
    # in a locked state.
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(items) // (jobs * 4)))
    with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=context) as pool:
        return _collect(pool.map(_check_star, [(item, settings) for item in items], chunksize=chunk), on_done)


def _collect(results: Iterable[ModelReport], on_done) -> list[ModelReport]:
    reports = []
    for report in results:
        reports.append(report)
        if on_done is not None:
            on_done(report)
    return reports


def exit_status(reports: list[ModelReport], settings: Settings) -> int:
    """2 when any file was unreadable, else 1 when any finding is at the failing severity, else 0."""
    if any(report.error is not None for report in reports):
        return EXIT_FAILURE
    if any(settings.fails(finding) for report in reports for finding in report.findings):
        return EXIT_FINDINGS
    return EXIT_OK
