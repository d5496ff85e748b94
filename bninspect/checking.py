"""The engine behind `bninspect check`: find model files, read them (optionally in worker
processes), run the static rules, and decide the exit status. No CLI code here, so the Python API
and other commands can use it too.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

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
