"""The engine behind `bninspect check`: find model files, read them (optionally in worker
processes), run the static rules, and decide the exit status. No CLI code here, so the Python API
and other commands can use it too.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from bninspect.config import Settings
from bninspect.report import ModelReport

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_FAILURE = 2


@dataclass(frozen=True)
class Target:
    """One thing to check: a model path, or a path that yielded none (with the reason)."""

    path: str
    error: str | None = None


def targets(paths: Iterable[str | os.PathLike]) -> list[Target]:
    """Model files under `paths`, in a stable order. A directory without model files becomes an
    error entry rather than silently passing: an empty model registry is a broken CI setup."""
    from bninspect.loaders import discover

    found: list[Target] = []
    for path in paths:
        models = discover([path])
        if not models and Path(path).is_dir():
            found.append(Target(str(path), "directory holds no model files (.h5, .hdf5, .keras or SavedModel)"))
        found.extend(Target(model) for model in models)
    unique = {target.path: target for target in found}
    return list(unique.values())


def check_one(target: Target, settings: Settings) -> ModelReport:
    """Read and check one model. Unreadable files become a report with `error` set."""
    from bninspect.api import inspect_path
    from bninspect.model import ModelReadError

    if target.error is not None:
        return ModelReport(source=target.path, description=None, error=target.error)
    try:
        return inspect_path(target.path, settings)
    except ModelReadError as error:
        return ModelReport(source=target.path, description=None, error=error.reason)


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


def probe_one(target: Target, settings: Settings, options: ProbeOptions) -> ModelReport:
    """Check one model statically, then run it on the data and merge the dynamic findings.

    A model that cannot be read, loaded or run on the data (refused Lambda or custom classes,
    weights-only file, data that does not fit its inputs) becomes a report with `error` set, like
    an unreadable file: the static findings stay in the report, but it never passes.
    """
    from bninspect.api import add_probe
    from bninspect.commands.common import UsageProblem
    from bninspect.model import ModelReadError

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
