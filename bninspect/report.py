"""The result of inspecting one model, and the JSON document (schema_version 1) built from them.

Layer: results (result types), above the model description and the findings, below the probes, the engine
and the reporters (which render it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bninspect._version import __version__
from bninspect.findings import Finding, Severity, Suppressed
from bninspect.model import CODE, GRAPH, BNLayer, ModelDescription
from bninspect.summary import array_stats, array_stats_many
from bninspect.untrusted import redact

SCHEMA_VERSION = 1


def finding_dict(finding: Finding) -> dict:
    """The JSON entry of one finding: `Finding.to_dict()` (which does without `dataclasses.asdict`,
    whose deep copies cost more than the rest of the JSON document for files with thousands of
    findings)."""
    return finding.to_dict()


_ARRAY_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def bn_layer_dict(layer: BNLayer, stats: list[dict] | None = None) -> dict:
    """The JSON entry of one BN layer. `stats`: its arrays' `array_stats`, when already computed."""
    if stats is None:
        stats = [array_stats(getattr(layer, name)) for name in _ARRAY_NAMES]
    return {
        "path": layer.path, "class_name": layer.class_name,
        "axis": list(layer.axis) if layer.axis is not None else None,
        "channels": layer.channels, "epsilon": layer.epsilon, "momentum": layer.momentum,
        "center": layer.center, "scale": layer.scale, "trainable": layer.trainable,
        "dtype_policy": layer.dtype_policy,
        "gamma": stats[0], "beta": stats[1], "moving_mean": stats[2], "moving_variance": stats[3],
    }


def bn_layer_dicts(layers: tuple[BNLayer, ...]) -> list[dict]:
    """`[bn_layer_dict(layer) for layer in layers]`, with the array statistics computed together."""
    stats = array_stats_many([getattr(layer, name) for layer in layers for name in _ARRAY_NAMES])
    width = len(_ARRAY_NAMES)
    return [bn_layer_dict(layer, stats[index * width:(index + 1) * width]) for index, layer in enumerate(layers)]


def architecture_dict(description: ModelDescription) -> dict:
    """The JSON `architecture` entry: kind graph|code|none, the class for code (null otherwise),
    and the library that provides it ("keras_hub"; null for the user's own class)."""
    architecture = description.architecture
    return {"kind": architecture.kind, "class": architecture.qualified_name if architecture.kind == CODE else None,
            "library": architecture.library}


def architecture_label(description: ModelDescription) -> str:
    """How headers name the architecture: "12 layers" for a graph, "code: my_package>Net",
    "weights only, no config"."""
    architecture = description.architecture
    if architecture.kind == GRAPH:
        return f"{description.layer_count} layers"
    if architecture.kind == CODE:
        return f"code: {architecture.qualified_name or 'unknown class'}"
    return "weights only, no config"


@dataclass(frozen=True)
class ModelReport:
    """One model: what was read (or why it could not be), and what was found.

    `bninspect.inspect` returns it as an `api.InspectionReport`, which renders in a notebook.
    """

    source: str
    description: ModelDescription | None
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    # Extra per-model data a command adds to the JSON entry (e.g. the probe's statistics).
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # The dynamic analysis of this model (a `bninspect.probes.ProbeReport`) when it was run on data;
    # its JSON is extra["probe"]. Kept whole for the reporters that plot its measurements.
    probe: Any = field(default=None, compare=False, repr=False)
    # The findings a per-layer or per-file ignore dropped (`check --show-suppressed`).
    suppressed: tuple[Suppressed, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        # What every output shows of the model (the JSON `path`, SARIF, JUnit, HTML, stderr): a
        # URL's password and signature never enter it. Whoever reads the model keeps the real URL.
        object.__setattr__(self, "source", redact(self.source))
        if self.error is not None:
            object.__setattr__(self, "error", redact(self.error))

    @property
    def bn_layers(self) -> tuple[BNLayer, ...]:
        return self.description.bn_layers if self.description else ()

    def count(self, severity: Severity) -> int:
        return sum(1 for finding in self.findings if finding.severity == severity)

    def to_dict(self) -> dict:
        description = self.description
        entry = {
            "path": self.source,
            "format": description.format if description else None,
            "keras_version": description.keras_version if description else None,
            "training_steps": description.training_steps if description else None,
            "architecture": architecture_dict(description) if description else None,
            # Whether the layer configs (and graph) come from the model Keras built (--build, a live model).
            "built": description.built if description else None,
            "keras_hub_version": description.keras_hub_version if description else None,
            "error": self.error,
            "bn_layers": bn_layer_dicts(self.bn_layers),
            "findings": [finding_dict(finding) for finding in self.findings],
        }
        entry.update(self.extra)
        return entry


def document(reports: list[ModelReport]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "bninspect", "version": __version__},
        "models": [report.to_dict() for report in reports],
        "summary": {
            "models": len(reports),
            "errors": sum(report.count(Severity.ERROR) for report in reports),
            "warnings": sum(report.count(Severity.WARNING) for report in reports),
            "infos": sum(report.count(Severity.INFO) for report in reports),
            "unreadable": sum(1 for report in reports if report.error is not None),
        },
    }
