"""`bninspect.BNMonitor`: a Keras 3 callback that watches BatchNormalization while a model trains.

At train begin it runs the static rules on the live model (the configuration rules only: the
arrays of a model about to train say nothing yet). While training it reads the BN variables
(moving_mean, moving_variance, gamma, beta) at every check, which is all it costs: NaN/Inf (BN003),
negative (BN004) and collapsed (BN005) variances, statistics that should move and do not (BN001),
statistics that move although the layer is frozen or its base is called with training=False
(BN019). At train end BN018 reads the real step count. `monitor.report` is the ModelReport the CLI
renders.

Backends: written on `keras.callbacks.Callback` and variable `.numpy()` reads, nothing
TensorFlow-specific, and tested with `fit` on TensorFlow, JAX and PyTorch (on JAX, reading
`self.model` syncs the trainer's state into the variables first, as Keras' own callbacks rely on).
`validation_data` runs the probe on the backend's own engine. TensorBoard summaries need
tf.summary: on JAX and PyTorch the monitor warns once and keeps its numbers in `logs`/History.

Importing this module does not import Keras: the Keras callback class is made on first
instantiation (`BNMonitor(...)` returns an instance of a subclass of BNMonitor and
`keras.callbacks.Callback`).

Layer: api (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from bninspect.api import InspectionReport, resolve_settings
from bninspect.checking import in_memory_source, inspect_model
from bninspect.findings import Finding, Severity
from bninspect.model import BNLayer, ModelDescription
from bninspect.report import ModelReport

if TYPE_CHECKING:
    from bninspect.config import Settings

ON_FINDING = ("warn", "stop", "raise")
# The static rules that say something about a model about to train (its configuration and graph).
TRAIN_BEGIN_CODES = frozenset({"BN008", "BN009", "BN012", "BN013", "BN016", "BN019"})
# The array rules worth re-running on the live variables at every check.
WATCHED_CODES = ("BN003", "BN004", "BN005")
# Statistics that should move and do not: BN001 (untrained-moving-stats) is that finding in a file.
STALE_CODE = "BN001"
# Statistics that move although they should not: BN019 (fine-tune-training-mode) is the file's view.
MOVED_CODE = "BN019"
UNCONVERGED_CODE = "BN018"
# The probe's checks run on validation_data at epoch ends: stats drift and the train/inference gap.
VALIDATION_CODES = ("BN101", "BN102")
ISSUE_23364 = "keras-team/keras#23364"
_ARRAYS = ("gamma", "beta", "moving_mean", "moving_variance")


class BNMonitorError(RuntimeError):
    """Raised by `BNMonitor(on_finding="raise")`; `.finding` is the finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding_line(finding))
        self.finding = finding


def finding_line(finding: Finding) -> str:
    where = f"{finding.layer}: " if finding.layer else ""
    return f"{finding.code} {finding.name} ({finding.severity.value}) {where}{finding.message}"


@dataclass
class _Watched:
    """One live BN layer: the variables to read and what the monitor expects of them."""

    path: str
    layer: Any
    # Why the moving statistics should not move ("frozen (trainable=False)", "called with
    # training=False inside base"), None when the layer trains in training mode.
    inference_reason: str | None
    start: tuple[np.ndarray, np.ndarray]  # moving_mean, moving_variance at train begin

    def read(self) -> dict[str, np.ndarray]:
        arrays = {}
        for name in _ARRAYS:
            variable = getattr(self.layer, name, None)
            if variable is not None:
                arrays[name] = np.asarray(variable.numpy(), dtype=np.float64)
        return arrays

    def moved(self, arrays: dict[str, np.ndarray]) -> float:
        """The largest change of a moving statistic since train begin (0.0: unchanged, exactly)."""
        changes = [np.abs(arrays[name] - start) for name, start in zip(("moving_mean", "moving_variance"), self.start)]
        largest = max(float(np.max(change)) if change.size else 0.0 for change in changes)
        return largest if np.isfinite(largest) else float("inf")  # NaN: BN003 says more


class BNMonitor:
    """A Keras 3 callback that reports BatchNormalization problems while `fit` runs.

        monitor = bninspect.BNMonitor()                    # checks at every epoch end
        model.fit(x, y, epochs=5, callbacks=[monitor])
        monitor.report                                     # the ModelReport `bninspect` renders

    select / ignore / settings / config: which rules, as for `bninspect.inspect` (the nearest
    pyproject.toml's [tool.bninspect] by default). every_n_steps: check every N training steps
    (and at every epoch end); None checks at epoch ends only, and adds no per-batch hook (Keras
    then keeps dispatching batch callbacks asynchronously). on_finding: "warn" (warnings.warn, one
    per group of findings), "stop" (also `model.stop_training = True`; `monitor.stop_reason` is the
    finding) or "raise" (BNMonitorError); stop and raise act on warnings and errors, infos are
    only reported. validation_data: inputs (arrays, or a path, as `bninspect.inspect(data=...)`)
    on which the model runs in inference mode at every epoch end for BN101 (stats drift) and BN102
    (train/inference gap), with `bninspect probe`'s thresholds and messages, on the first
    `validation_samples` samples in batches of `validation_batch_size`. log_dir: write the
    per-layer numbers (and histograms of the moving statistics) at every check as TensorBoard
    summaries there (tf.summary: TensorFlow backend only; other backends get one warning).
    log_layers: also put per-layer summaries into `logs` (and so History):
    `bn/<layer>/moving_variance_min` and `bn/<layer>/moving_mean_abs_max`; the model-wide
    `bn/moving_variance_min` is always there.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> BNMonitor:
        # Bad options fail before Keras is imported; BNMonitor(...) then makes the Keras callback
        # subclass (and Python runs its __init__).
        _check_options(kwargs.get("on_finding", "warn"), kwargs.get("every_n_steps"))
        made = _keras_class(per_step=kwargs.get("every_n_steps") is not None) if cls is BNMonitor else cls
        return super().__new__(made)

    def __init__(self, *, select: Iterable[str] | str | None = None, ignore: Iterable[str] | str | None = None,
                 settings: "Settings | None" = None, config: str | os.PathLike | None = None,
                 every_n_steps: int | None = None, on_finding: str = "warn", log_layers: bool = False,
                 validation_data: Any = None, validation_samples: int = 256, validation_batch_size: int = 32,
                 log_dir: str | os.PathLike | None = None) -> None:
        super().__init__()  # keras.callbacks.Callback's (__new__ checked on_finding and every_n_steps)
        self.settings = resolve_settings(settings, config, select, ignore)
        self.every_n_steps = every_n_steps
        self.on_finding = on_finding
        self.log_layers = log_layers
        self.validation_data = validation_data
        self.validation_samples = validation_samples
        self.validation_batch_size = validation_batch_size
        self.log_dir = log_dir
        self._writer: Any = None  # a tf.summary writer, made at train begin when log_dir is given
        self.findings: list[Finding] = []
        self.stop_reason: Finding | None = None
        self.step = 0  # training steps of this fit at the last check
        self._batches = 0  # batches of this fit so far (every_n_steps counts them)
        self._start_iterations = 0
        self._description: ModelDescription | None = None
        self._watched: list[_Watched] = []
        self._reported: set[tuple[str, str | None]] = set()
        self._last_check_step = 0
        self._since_step = 0  # where movement is measured from

    # --- Keras hooks --------------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.step = self._batches = self._last_check_step = self._since_step = 0
        self._start_iterations = self._iterations() or 0
        self._description = None
        self._watched = []
        if self.log_dir is not None and self._writer is None:
            self._writer = _summary_writer(self.log_dir)
        # A subclassed model that was never called builds its BN layers in the first step: the
        # monitor then starts at the first check, and movement is measured from there.
        if _bn_built(self.model):
            self._start()

    def _start(self) -> None:
        """Describe the live model, run the configuration rules once and note where the moving
        statistics start."""
        report = inspect_model(self.model, self.settings)
        self._description = report.description
        self._watched = list(_watch(self.model, report.description))
        self._since_step = self.step
        self._emit([finding for finding in report.findings if finding.code in TRAIN_BEGIN_CODES])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        readings = self._check()
        if self.validation_data is not None:
            self._emit(self._validation_findings(epoch))
        if logs is not None:
            logs.update(self._summaries(readings))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._steps_done() != self._last_check_step:
            self._check()
        if self._writer is not None:
            self._writer.flush()
        self._emit(self._unconverged())

    # --- checks -------------------------------------------------------------------------------

    def _check(self) -> list[dict[str, np.ndarray]]:
        """Read every BN layer's variables once and report what is new; returns the readings."""
        self.step = self._last_check_step = self._steps_done()
        started_here = self._description is None
        if started_here:
            self._start()
        readings = [watched.read() for watched in self._watched]
        self._description = _with_arrays(self._description, self._watched, readings)
        if self._writer is not None:
            self._write_summaries(readings)
        found = self._rule_findings(self._description)
        if self.step > self._since_step and not started_here:
            found += [finding for watched, arrays in zip(self._watched, readings)
                      for finding in self._movement(watched, arrays)]
        self._emit(found)
        return readings

    def _rule_findings(self, description: ModelDescription) -> list[Finding]:
        from bninspect.rules.catalogue import RULES_BY_CODE

        found = [finding for code in WATCHED_CODES if self.settings.enabled(code)
                 for finding in RULES_BY_CODE[code].run(description, self.settings.thresholds)]
        return [replace(finding, message=f"{finding.message} (first seen at step {self.step}"
                                         f"{self._cadence()})")
                for finding in self.settings.apply(found) if (finding.code, finding.layer) not in self._reported]

    def _validation_findings(self, epoch: int) -> list[Finding]:
        """BN101/BN102 from the probe, run on the validation samples with the weights of now."""
        from bninspect.probes import run_probe

        if not any(self.settings.enabled(code) for code in VALIDATION_CODES):
            return []
        probe = run_probe(self.model, self.validation_data, batch_size=self.validation_batch_size,
                          limit=self.validation_samples, thresholds=self.settings.thresholds, progress=False)
        found = [finding for finding in self.settings.apply(probe.findings) if finding.code in VALIDATION_CODES]
        return [replace(finding, message=f"{finding.message} (validation data, end of epoch {epoch + 1}, step "
                                         f"{self.step})")
                for finding in found if (finding.code, finding.layer) not in self._reported]

    def _cadence(self) -> str:
        """How often the values are read: a problem first seen at step N may have started after
        the check before."""
        interval = self.every_n_steps
        if interval is None or interval == 1:
            return "" if interval == 1 else ", checked at epoch ends"
        return f", checked every {interval} steps"

    def _movement(self, watched: _Watched, arrays: dict[str, np.ndarray]) -> list[Finding]:
        """BN001 for a training-mode layer whose statistics have not moved since train begin; BN019
        for a frozen or training=False layer whose statistics moved."""
        moved = watched.moved(arrays)
        if watched.inference_reason is None and moved == 0.0:
            return self._finding(STALE_CODE, watched.path, Severity.WARNING,
                                 f"moving statistics unchanged {self._span()} although the layer "
                                 "is trainable and not called with training=False: it always runs in inference mode "
                                 "(e.g. a base called with training=False in a subclassed model's call) or has "
                                 "momentum 1",
                                 "call the layer in training mode if it should adapt to your data; freeze it "
                                 "(layer.trainable = False) to say that it should not")
        if watched.inference_reason is not None and moved > 0.0:
            known_bug = ISSUE_23364 if "training=False" in watched.inference_reason else None
            cause = f" (a Keras 3 bug before 3.16, {known_bug})" if known_bug else ""
            return self._finding(MOVED_CODE, watched.path, Severity.WARNING,
                                 f"moving statistics changed by up to {moved:.3g} {self._span()} although the "
                                 f"layer is {watched.inference_reason}{cause}: fit overwrites the pretrained "
                                 "statistics with batch statistics",
                                 "freeze the BatchNormalization layers (layer.trainable = False for each): frozen BN "
                                 "layers run in inference mode in every Keras version")
        return []

    def _span(self) -> str:
        """The training steps a movement was measured over."""
        if self._since_step == 0:
            return f"in the first {self.step} training steps"
        return f"from step {self._since_step} to step {self.step}"

    def _finding(self, code: str, layer: str, severity: Severity, message: str, hint: str) -> list[Finding]:
        from bninspect.rules.catalogue import RULES_BY_CODE

        if (code, layer) in self._reported:
            return []
        rule = RULES_BY_CODE[code]
        finding = Finding(code=code, name=rule.name, severity=severity, source=self._description.source,
                          layer=layer, message=message, hint=hint)
        return list(self.settings.apply([finding]))

    def _iterations(self) -> int | None:
        """The optimizer's step counter (all fits so far), None without an optimizer."""
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return None if iterations is None else int(np.asarray(iterations.numpy()))

    def _steps_done(self) -> int:
        """Training steps of this fit: the optimizer's count, which is what updated the variables;
        the batches seen when there is no optimizer to ask."""
        iterations = self._iterations()
        return self._batches if iterations is None else iterations - self._start_iterations

    def _unconverged(self) -> list[Finding]:
        """BN018 from the optimizer's real step count (a live model's description has none)."""
        from bninspect.rules.catalogue import RULES_BY_CODE

        steps = self._iterations()
        if steps is None or not self.settings.enabled(UNCONVERGED_CODE):
            return []
        described = replace(self._description, training_steps=steps)
        found = RULES_BY_CODE[UNCONVERGED_CODE].run(described, self.settings.thresholds)
        return [finding for finding in self.settings.apply(found)
                if (finding.code, finding.layer) not in self._reported]

    # --- reporting ----------------------------------------------------------------------------

    def _emit(self, findings: list[Finding]) -> None:
        """Record new findings, warn once per group, then stop or raise on the first warning or error."""
        if not findings:
            return
        from bninspect.reporters.grouping import group_findings

        self._reported.update((finding.code, finding.layer) for finding in findings)
        self.findings.extend(findings)
        for group in group_findings(findings):
            layers = f" in {group.layers_text()}" if group.findings[0].layer else ""
            warnings.warn(f"bninspect.BNMonitor: {group.code} {group.name} ({group.severity.value}){layers}: "
                          f"{group.message()}; hint: {group.hint}", stacklevel=2)
        serious = [finding for finding in findings if finding.severity.rank >= Severity.WARNING.rank]
        if not serious or self.on_finding == "warn":
            return
        if self.on_finding == "raise":
            raise BNMonitorError(serious[0])
        self.stop_reason = self.stop_reason or serious[0]
        self.model.stop_training = True

    def _summaries(self, readings: list[dict[str, np.ndarray]]) -> dict[str, float]:
        """Small per-epoch numbers for `logs`/History: the lowest moving variance over all layers and,
        with log_layers, two numbers per layer."""
        lows = {watched.path: float(np.min(arrays["moving_variance"]))
                for watched, arrays in zip(self._watched, readings) if arrays["moving_variance"].size}
        summaries = {"bn/moving_variance_min": min(lows.values())} if lows else {}
        if self.log_layers:
            for watched, arrays in zip(self._watched, readings):
                if watched.path in lows:
                    summaries[f"bn/{watched.path}/moving_variance_min"] = lows[watched.path]
                    summaries[f"bn/{watched.path}/moving_mean_abs_max"] = float(np.max(np.abs(arrays["moving_mean"])))
        return summaries

    def _write_summaries(self, readings: list[dict[str, np.ndarray]]) -> None:
        """TensorBoard scalars (the `logs` numbers of every layer) and histograms of the moving
        statistics, at the optimizer's step."""
        step = self._iterations() or self.step
        for watched, arrays in zip(self._watched, readings):
            if arrays["moving_variance"].size:
                self._writer.scalar(f"bn/{watched.path}/moving_variance_min", np.min(arrays["moving_variance"]), step)
                self._writer.scalar(f"bn/{watched.path}/moving_mean_abs_max",
                                    np.max(np.abs(arrays["moving_mean"])), step)
                self._writer.histogram(f"bn/{watched.path}/moving_mean", arrays["moving_mean"], step)
                self._writer.histogram(f"bn/{watched.path}/moving_variance", arrays["moving_variance"], step)

    @property
    def report(self) -> ModelReport:
        """The findings so far, with the BN layers as last read: the ModelReport the CLI renders
        (and a notebook shows)."""
        if self._description is None:
            source = in_memory_source(self.model) if self.model is not None else "<no model yet>"
            return InspectionReport(source=source, description=None, findings=tuple(self.findings))
        return InspectionReport(source=self._description.source, description=self._description,
                                findings=tuple(self.findings))


def _check_options(on_finding: Any, every_n_steps: Any) -> None:
    if on_finding not in ON_FINDING:
        raise ValueError(f"on_finding must be one of {', '.join(ON_FINDING)}, not {on_finding!r}")
    if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                      or every_n_steps < 1):
        raise ValueError(f"every_n_steps must be a positive integer or None, not {every_n_steps!r}")


class _EveryNSteps:
    """The per-batch hook, only on monitors given every_n_steps: a callback with a batch hook
    makes Keras call every callback synchronously after each batch."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._batches += 1
        if self._batches % self.every_n_steps == 0:
            self._check()


@functools.cache
def _keras_class(per_step: bool) -> type:
    """BNMonitor joined with keras.callbacks.Callback, made once per kind: the Keras import
    happens here, when the first monitor is made."""
    import keras

    bases = (_EveryNSteps, BNMonitor, keras.callbacks.Callback) if per_step else (BNMonitor, keras.callbacks.Callback)
    return type("BNMonitor", bases, {"__module__": __name__, "__doc__": BNMonitor.__doc__,
                                     "__qualname__": "BNMonitor"})


class _SummaryWriter:
    """TensorBoard summaries through TensorFlow's own summary ops (`tf.summary.write`), in the
    formats of TensorBoard's scalar and histogram plugins: `tf.summary.scalar` and
    `tf.summary.histogram` are TensorBoard's code, which a TensorFlow install may not have."""

    HISTOGRAM_BINS = 30

    def __init__(self, tf: Any, log_dir: str) -> None:
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(log_dir)
        self._metadata = {}
        for plugin in ("scalars", "histograms"):
            metadata = summary_pb2.SummaryMetadata()
            metadata.plugin_data.plugin_name = plugin
            self._metadata[plugin] = metadata

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._write(tag, np.float32(value), "scalars", step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        finite = values[np.isfinite(values)]
        if not finite.size:
            return
        counts, edges = np.histogram(finite, bins=min(self.HISTOGRAM_BINS, finite.size))
        # TensorBoard's histogram format: one row (left edge, right edge, count) per bucket.
        self._write(tag, np.stack([edges[:-1], edges[1:], counts]).T.astype(np.float64), "histograms", step)

    def _write(self, tag: str, tensor: np.ndarray, plugin: str, step: int) -> None:
        with self._writer.as_default(step=step):
            self._tf.summary.write(tag, self._tf.constant(tensor), metadata=self._metadata[plugin])

    def flush(self) -> None:
        self._writer.flush()


def _summary_writer(log_dir: str | os.PathLike) -> _SummaryWriter | None:
    """A TensorBoard writer, or None (with one warning) on a backend other than TensorFlow."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        warnings.warn(f"bninspect.BNMonitor: log_dir needs the TensorFlow backend (tf.summary), not {backend}: "
                      "no TensorBoard summaries; the numbers are still in logs/History", stacklevel=3)
        return None
    from bninspect.tf_runtime import import_tensorflow

    return _SummaryWriter(import_tensorflow(needed_for="TensorBoard summaries"), os.fspath(log_dir))


def _bn_built(model: Any) -> bool:
    """Whether every BN layer has its variables (a subclassed model builds them when first called)."""
    from bninspect.loaders.in_memory import bn_layers_by_path

    return all(getattr(layer, "built", True) for _, layer in bn_layers_by_path(model))


def _watch(model: Any, description: ModelDescription) -> Iterable[_Watched]:
    """The live BN layers with their starting statistics and whether they should move."""
    from bninspect.loaders.in_memory import bn_layers_by_path

    described = {layer.path: layer for layer in description.bn_layers}
    called_false = _inference_bases(description)
    for path, layer in bn_layers_by_path(model):
        bn = described.get(path)
        if bn is None:
            continue
        yield _Watched(path, layer, _inference_reason(bn, called_false), (bn.moving_mean.copy(),
                                                                           bn.moving_variance.copy()))


def _inference_bases(description: ModelDescription) -> list[str]:
    """Paths of the nested models the graph calls with training=False (every call)."""
    return [layer.path for layer in description.layers
            if layer.call_training and all(value is False for value in layer.call_training)]


def _inference_reason(bn: BNLayer, called_false: list[str]) -> str | None:
    if bn.trainable is False:
        return "frozen (trainable=False)"
    for base in called_false:
        if bn.path.startswith(base + "/"):
            return f"inside {base}, called with training=False"
    return None


def _with_arrays(description: ModelDescription, watched: list[_Watched],
                 readings: list[dict[str, np.ndarray]]) -> ModelDescription:
    """The description with the watched layers' arrays replaced by the values just read."""
    read = {item.path: arrays for item, arrays in zip(watched, readings)}
    layers = tuple(replace(layer, **read[layer.path]) if layer.path in read else layer
                   for layer in description.bn_layers)
    return replace(description, bn_layers=layers)
