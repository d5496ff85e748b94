"""The two small types every rule shares: `Rule` (one catalogue entry) and `Hit` (one problem).

A rule's check is a pure function `(ModelDescription, Thresholds) -> Iterable[Hit]`. A Hit carries
only what the check knows (the layer, the message with its numbers, optionally a more specific hint
or severity); `Rule.finding` adds what the catalogue knows (code, name, default severity and hint)
so those are written down once, in the catalogue.

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from bninspect.findings import Finding, Quantity, Severity
from bninspect.model import ModelDescription

if TYPE_CHECKING:
    from bninspect.thresholds import Thresholds

STATIC = "static"
DYNAMIC = "dynamic"

# What a static rule reads besides the arrays (`Rule.needs`), so the engine runs it wherever that
# is known and BN015 names what was skipped.
NEEDS_LAYER_CONFIG = "layer config"  # each BN layer's own config (axis, momentum, trainable, ...)
NEEDS_GRAPH = "graph"  # the layer graph: which layer feeds which, the model outputs
NEEDS_ARCHITECTURE = "architecture"  # the model's config, a layer graph or a class


@dataclass(frozen=True)
class Hit:
    layer: str | None
    message: str
    hint: str | None = None  # None: the rule's default hint
    severity: Severity | None = None  # None: the rule's default severity
    quantities: tuple[Quantity, ...] = ()  # the message's numbers, for grouped outputs


Check = Callable[[ModelDescription, "Thresholds"], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    """One rule of the catalogue. The four doc sections follow ruff's fixed form (Markdown)."""

    code: str
    name: str
    severity: Severity
    summary: str  # one line: what it finds
    what: str  # What it does
    why: str  # Why is this bad?
    example: str  # Example (Markdown, usually a code block)
    fix: str  # How to fix
    hint: str  # the default one-line hint on every finding
    kind: str = STATIC
    # NEEDS_LAYER_CONFIG, NEEDS_GRAPH, NEEDS_ARCHITECTURE, or None for rules on the arrays alone.
    needs: str | None = None
    check: Check | None = None  # None for dynamic rules: the probes report those

    @property
    def needs_config(self) -> bool:
        """Whether the rule reads anything of the config (it cannot run on weights-only files)."""
        return self.needs is not None

    def finding(self, source: str, hit: Hit) -> Finding:
        return Finding(code=self.code, name=self.name, severity=hit.severity or self.severity,
                       source=source, layer=hit.layer, message=hit.message,
                       hint=hit.hint or self.hint, quantities=hit.quantities)

    def run(self, description: ModelDescription, thresholds: "Thresholds") -> list[Finding]:
        if self.check is None:
            return []
        return [self.finding(description.source, hit) for hit in self.check(description, thresholds)]
