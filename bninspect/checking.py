"""The engine behind every command and the Python API: read a model (a file, or an in-memory
Keras model), run the static rules with the user's settings, optionally run the probes on data,
find model files under directories (optionally in worker processes), and decide the exit status.

Layer: engine, above loaders, rules, config, the report type and the probes; below the
reporters, the Python API and the commands. No CLI code here.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from bninspect.config import Settings
from bninspect.findings import Finding, Suppressed
from bninspect.model import CODE, NO_ARCHITECTURE, ModelDescription
from bninspect.report import ModelReport

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_FAILURE = 2


@dataclass(frozen=True)
class Target:
    """One thing to check: a model path, or a path that yielded none (with the reason)."""

    path: str
    error: str | None = None
    remote: Any = None  # loaders.remote.RemoteOptions for a URL: credentials, endpoint, --download


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


@dataclass(frozen=True)
class BuildOptions:
    """`--build`: build each model's architecture with Keras to read the layer configs and the
    graph its file does not store. Loading follows the rules of running a model: Lambda layers
    only with `unsafe`, the user's own classes only from `custom_objects` (a dict)."""

    unsafe: bool = False
    custom_objects: Mapping[str, Any] | None = None


PathLike = (str, os.PathLike)
CONFIG_UNAVAILABLE = "BN015"


def run_static_rules(description: ModelDescription, settings: Settings | None = None) -> tuple[Finding, ...]:
    """Every enabled static rule of the catalogue, with the settings applied (selection, severity
    overrides, per-layer and per-file ignores). A rule runs whenever its inputs are known: graph
    rules when the file holds the layer graph, per-layer rules on the BN layers whose config is
    known, BN017 when there is any architecture. BN015 names what was skipped and why."""
    return run_static_rules_tracked(description, settings)[0]


def run_static_rules_tracked(description: ModelDescription, settings: Settings | None = None
                             ) -> tuple[tuple[Finding, ...], tuple[Suppressed, ...]]:
    """`run_static_rules`, and the findings a per-layer or per-file ignore suppressed."""
    from bninspect.rules.base import NEEDS_ARCHITECTURE, NEEDS_GRAPH, NEEDS_LAYER_CONFIG, STATIC
    from bninspect.rules.catalogue import RULES

    settings = settings if settings is not None else Settings()
    findings: list[Finding] = []
    skipped: list[Any] = []
    without_config = [layer.path for layer in description.bn_layers if not layer.has_config]
    for rule in RULES:
        if rule.kind != STATIC or rule.check is None or not settings.enabled(rule.code):
            continue
        if (rule.needs == NEEDS_GRAPH and not description.has_config) or \
                (rule.needs == NEEDS_ARCHITECTURE and description.architecture.kind == NO_ARCHITECTURE):
            skipped.append(rule)
            continue
        if rule.needs == NEEDS_LAYER_CONFIG and without_config:
            skipped.append(rule)  # for those layers: the check itself passes over unknown values
        findings.extend(rule.run(description, settings.thresholds))
    if skipped:
        findings.append(_config_unavailable(description, skipped, without_config))
    return settings.apply_tracked(findings)


def _config_unavailable(description: ModelDescription, skipped: list[Any], without_config: list[str]) -> Finding:
    """BN015: what the file lacks, which rules that skipped, and how to get it."""
    from bninspect.rules.base import Hit
    from bninspect.rules.catalogue import RULES_BY_CODE

    names = ", ".join(f"{rule.code} {rule.name}" for rule in skipped)
    listed = f"{len(skipped)} rule{'s' if len(skipped) != 1 else ''} ({names})"
    architecture = description.architecture
    total = len(description.bn_layers)
    if description.tf1_graph:
        message = (f"TF1 checkpoint: the variables of a graph, with no layer configs: skipped {listed} that "
                   "need the layer configs or the graph")
        hint = ("axis, epsilon and momentum (decay in contrib/slim batch_norm) are set in the code that built the "
                "graph: check them there")
    elif architecture.kind == NO_ARCHITECTURE:
        message = f"weights-only file (no model config): skipped {listed} that need the layer configs or the graph"
        hint = "save the full model with model.save(...) and check that file to run every rule"
    elif architecture.kind == CODE and description.built:
        message = (f"the architecture is code (class {architecture.qualified_name}), built with Keras: its call() "
                   f"is Python, not a layer graph; skipped {listed} that need the graph")
        hint = "the graph rules need a Functional model (or a Functional subclass, as KerasHub's models are)"
    elif architecture.kind == CODE:
        missing = "the graph and the layer configs are" if without_config else "the graph is"
        if without_config and len(without_config) < total:
            missing = f"the graph and the configs of {len(without_config)} of {total} BN layers are"
        message = (f"the architecture is code (class {architecture.qualified_name}): {missing} not in the file; "
                   f"skipped {listed} that need them")
        hint = _code_hint(description)
    else:
        shown = ", ".join(without_config[:3]) + (f" and {len(without_config) - 3} more" if len(without_config) > 3
                                                 else "")
        message = (f"the configs of {len(without_config)} of {total} BN layers are not in the file "
                   f"(inside custom layers: {shown}): skipped {listed} on them")
        hint = "these BN layers are built by custom code: its source shows their config"
    return RULES_BY_CODE[CONFIG_UNAVAILABLE].finding(description.source, Hit(None, message, hint=hint))


def _code_hint(description: ModelDescription) -> str:
    """BN015's hint for a code architecture that was not built: --build, unless the file already
    holds all that building reads (`ModelDescription.nothing_to_build`)."""
    name = description.architecture.qualified_name
    if description.nothing_to_build:
        return (f"{name} is not a Functional model: its call() is Python, so --build cannot give it a graph "
                "either; the graph rules need a Functional model (or a Functional subclass)")
    return (f"the file stores the class and its constructor arguments, not the layers: --build builds {name} "
            "with Keras for every layer's config (and the graph of a Functional subclass)")


def inspect_path(path: str | os.PathLike, settings=None, remote=None,
                 build: BuildOptions | None = None) -> ModelReport:
    """Read one model file (or URL, reached with `remote` options) statically and run the static
    rules. With `build`, first build the architecture with Keras for the configs and graph the
    file does not store (TensorFlow is imported only then). Raises ModelReadError, and with `build`
    ModelRefused (a UsageProblem)."""
    from bninspect import loaders

    description = loaders.load(path, remote)
    if build is not None:
        from bninspect.probes.build import build_description

        description, _ = build_description(description, unsafe=build.unsafe, custom_objects=build.custom_objects)
    findings, suppressed = run_static_rules_tracked(description, settings)
    return ModelReport(source=str(path), description=description, findings=findings, suppressed=suppressed)


def build_options(unsafe: bool, custom_objects: Mapping[str, Any] | str | os.PathLike | None) -> BuildOptions:
    """BuildOptions from the command line's values: a --custom-objects file runs once, here. Keras
    is imported on its backend first, before any model is read: one backend per process."""
    from bninspect.keras_runtime import import_keras
    from bninspect.probes.loading import load_custom_objects

    import_keras(needed_for="building a model (--build)")
    if isinstance(custom_objects, PathLike):
        custom_objects = load_custom_objects(custom_objects)
    return BuildOptions(unsafe=unsafe, custom_objects=custom_objects)


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


def add_probe(report: ModelReport, model: Any, settings: Settings, options: ProbeOptions,
              remote=None) -> ModelReport:
    """Run the dynamic analysis on `options.data` and merge its findings (after the settings'
    selection, per-layer ignores and severity overrides) into `report`; the probe's measurements go
    to the `probe` entry of the JSON model entry, as with `bninspect probe --format json`.

    Raises ModelReadError and UsageProblem subclasses (ModelRefused, DataError, ThresholdError).
    A model at a URL is downloaded to a temporary directory for Keras (`remote`: how to reach it).
    """
    probe = _run_probe(model, settings, options, remote).with_findings(settings.apply)
    return replace(report, findings=tuple(report.findings) + tuple(probe.findings),
                   extra={**report.extra, "probe": probe.to_dict()}, probe=probe)


def _run_probe(model: Any, settings: Settings, options: ProbeOptions, remote=None):
    """The probe's report on `model`; a model at a URL runs from a downloaded copy, and its report
    names the URL (redacted), not the copy."""
    from bninspect.loaders.remote import NO_OPTIONS, is_url, local_copy
    from bninspect.probes import run_probe

    if isinstance(model, str) and is_url(model):
        with local_copy(model, remote or NO_OPTIONS) as local:
            return _run_probe(local, settings, options).named(model)
    return run_probe(model, options.data, batch_size=options.batch_size, limit=options.limit,
                     rescale=options.rescale, unsafe=options.unsafe, custom_objects=options.custom_objects,
                     thresholds=settings.thresholds, progress=options.progress)


def probe_options(data: Any, batch_size: int, limit: int | None, rescale: float | str | None, unsafe: bool,
                   custom_objects: Mapping[str, Any] | str | os.PathLike | None, progress: bool) -> ProbeOptions:
    from bninspect.data import parse_rescale
    from bninspect.keras_runtime import import_keras
    from bninspect.probes.loading import load_custom_objects

    # Keras on its backend before any model is read: a SavedModel would otherwise import
    # TensorFlow into a run on JAX or PyTorch (one backend per process).
    import_keras(needed_for="running a model on data")
    if isinstance(rescale, str):
        rescale = parse_rescale(rescale)
    if isinstance(custom_objects, PathLike):
        custom_objects = load_custom_objects(custom_objects)  # runs the file, once for all models
    return ProbeOptions(data=data, batch_size=batch_size, limit=limit, rescale=rescale, unsafe=unsafe,
                        custom_objects=custom_objects, progress=progress)


def targets(paths: Iterable[str | os.PathLike], remote=None) -> list[Target]:
    """Model files under `paths` (directories, or URL prefixes reached with `remote` options), in a
    stable order. A directory without model files becomes an error entry rather than silently
    passing: an empty model registry is a broken CI setup."""
    from bninspect.errors import ModelReadError
    from bninspect.loaders import discover
    from bninspect.loaders.remote import is_url

    found: list[Target] = []
    for path in paths:
        url = is_url(str(path))
        try:
            models = discover([path], remote)
        except ModelReadError as error:  # a prefix that cannot be listed
            found.append(Target(str(path), error.reason, remote))
            continue
        if not models and (url or Path(path).is_dir()):
            found.append(Target(str(path), f"{'prefix' if url else 'directory'} holds no model files (.h5, .hdf5, "
                                           ".keras, SavedModel, TF checkpoint or KerasHub preset)", remote))
        found.extend(Target(model, None, remote) for model in models)
    unique = {target.path: target for target in found}
    return list(unique.values())


def check_one(target: Target, settings: Settings, build: BuildOptions | None = None) -> ModelReport:
    """Read and check one model. Unreadable files (and with `build`, models Keras would not or
    could not build) become a report with `error` set."""
    from bninspect.errors import ModelReadError, UsageProblem

    if target.error is not None:
        return ModelReport(source=target.path, description=None, error=target.error)
    try:
        return inspect_path(target.path, settings, target.remote, build)
    except ModelReadError as error:
        return ModelReport(source=target.path, description=None, error=error.reason)
    except UsageProblem as error:
        return ModelReport(source=target.path, description=None,
                           error=f"cannot build: {reason_without_source(error, target.path)}")


def probe_one(target: Target, settings: Settings, options: ProbeOptions,
              build: BuildOptions | None = None) -> ModelReport:
    """Check one model statically, then run it on the data and merge the dynamic findings.

    A model that cannot be read, loaded or run on the data (refused Lambda or custom classes,
    weights-only file, data that does not fit its inputs) becomes a report with `error` set, like
    an unreadable file: the static findings stay in the report, but it never passes.
    """
    from bninspect.errors import UsageProblem
    from bninspect.errors import ModelReadError

    report = check_one(target, settings, build)
    if report.error is not None:
        return report
    try:
        return add_probe(report, target.path, settings, options, target.remote)
    except (ModelReadError, UsageProblem) as error:
        return replace(report, error=f"cannot run on the data: {reason_without_source(error, target.path)}")


def reason_without_source(error: BaseException, source: str) -> str:
    """The one-line message without the model path the report already names (errors hold it
    redacted, see bninspect.errors)."""
    from bninspect.untrusted import redact

    text = " ".join(str(error).split())
    prefix = f"{redact(source)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def probe_targets(items: list[Target], settings: Settings, options: ProbeOptions,
                  on_done: Callable[[ModelReport], None] | None = None,
                  build: BuildOptions | None = None) -> list[ModelReport]:
    """`probe_one` for every target, one after another in this process (the models run under
    TensorFlow, which worker processes would each have to import again)."""
    return _collect((probe_one(item, settings, options, build) for item in items), on_done)


def _check_star(args: tuple[Target, Settings]) -> ModelReport:
    return check_one(*args)


def check_targets(items: list[Target], settings: Settings, jobs: int = 1,
                  on_done: Callable[[ModelReport], None] | None = None,
                  build: BuildOptions | None = None) -> list[ModelReport]:
    """Check every target, in `jobs` worker processes when jobs > 1; results in input order.
    With `build` in this process only: each worker would import TensorFlow again, and the
    custom objects are live classes."""
    results: Iterator[ModelReport]
    if jobs <= 1 or len(items) <= 1 or build is not None:
        results = (check_one(item, settings, build) for item in items)
        return _collect(results, on_done)
    import multiprocessing

    # spawn, not fork: the parent may have threads (or TensorFlow) that a forked child would inherit
    # in a locked state.
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(items) // (jobs * 4)))
    reports: list[ModelReport] = []
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(items)), mp_context=context) as pool:
            _collect(pool.map(_check_star, [(item, settings) for item in items], chunksize=chunk), on_done,
                     into=reports)
    except BrokenProcessPool:
        # A worker died (a signal, the out-of-memory killer) reading one of the files still to
        # come; which one is found by halving, so the others are still checked.
        rest = _check_isolating_crashes(items[len(reports):], settings, jobs, context)
        reports.extend(_collect(rest, on_done))
    return reports


def _check_isolating_crashes(items: list[Target], settings: Settings, jobs: int, context: Any) -> list[ModelReport]:
    """`check_one` for every item in worker processes; an item whose worker dies alone in its
    pool gets a report with that error. Results in input order."""
    done: dict[int, ModelReport] = {}
    batches = [list(range(len(items)))]
    while batches:
        batch = batches.pop()
        unfinished = []
        with ProcessPoolExecutor(max_workers=min(jobs, len(batch)), mp_context=context) as pool:
            futures = {index: pool.submit(check_one, items[index], settings) for index in batch}
            for index, future in futures.items():
                try:
                    done[index] = future.result()
                except BrokenProcessPool:
                    unfinished.append(index)
        if len(unfinished) == 1 and len(batch) == 1:
            done[batch[0]] = ModelReport(source=items[batch[0]].path, description=None,
                                         error="the reading process died on this file (a crash in a reading library)")
        elif unfinished:
            half = len(unfinished) // 2 or 1
            batches.extend(part for part in (unfinished[half:], unfinished[:half]) if part)
    return [done[index] for index in range(len(items))]


def _collect(results: Iterable[ModelReport], on_done, into: list[ModelReport] | None = None) -> list[ModelReport]:
    """The reports of `results`, each passed to `on_done` as it comes; appended to `into` as they
    come when given (what came before a failure of the iteration is kept)."""
    reports = [] if into is None else into
    for report in results:
        reports.append(report)
        if on_done is not None:
            on_done(report)
    return reports


@dataclass(frozen=True)
class SuppressionUse:
    """One (pattern, code) of the per-layer or per-file ignores, and how a run used it."""

    kind: str  # "per-layer-ignores" or "per-file-ignores"
    pattern: str
    code: str
    count: int  # findings it suppressed in this run
    # per-file-ignores: whether the glob matched a model of this run at all. One that did not is
    # out of scope (a run over some of the models, a pre-commit hook), not unused.
    in_scope: bool = True

    @property
    def unused(self) -> bool:
        return self.in_scope and self.count == 0


def suppression_uses(reports: list[ModelReport], settings: Settings) -> tuple[SuppressionUse, ...]:
    """Every configured per-layer and per-file ignore, with the number of findings it suppressed
    over `reports` (unreadable models do not count as in scope: nothing was checked there)."""
    from bninspect.config import model_matches

    counts: dict[tuple[str, str], int] = {}
    for report in reports:
        for item in report.suppressed:
            key = (item.by, item.finding.code)
            counts[key] = counts.get(key, 0) + 1
    read = [report.source for report in reports if report.error is None]
    uses = [SuppressionUse("per-layer-ignores", pattern, code,
                           counts.get((f"per-layer-ignores {pattern!r}", code), 0))
            for pattern, codes in settings.per_layer_ignores for code in sorted(codes)]
    for pattern, codes in settings.per_file_ignores:
        in_scope = any(model_matches(source, pattern, settings.root) for source in read)
        uses.extend(SuppressionUse("per-file-ignores", pattern, code,
                                   counts.get((f"per-file-ignores {pattern!r}", code), 0), in_scope)
                    for code in sorted(codes))
    return tuple(uses)


def exit_status(reports: list[ModelReport], settings: Settings,
                known: Callable[[Finding], bool] | None = None) -> int:
    """2 when any file was unreadable, else 1 when any finding is at the failing severity, else 0.
    `known`: findings accepted in a baseline (`BaselineResult.is_known`), which never fail."""
    if any(report.error is not None for report in reports):
        return EXIT_FAILURE
    if any(settings.fails(finding) and not (known is not None and known(finding))
           for report in reports for finding in report.findings):
        return EXIT_FINDINGS
    return EXIT_OK
