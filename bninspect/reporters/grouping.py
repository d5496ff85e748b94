"""Repeated findings of one model grouped for people: one entry per code, severity and hint.

Real backbones have 50-300 BN layers, and some rules fire on most of them (121 "frozen-bn" infos
for a frozen DenseNet121). The human outputs (`check` text, the table view, the HTML report, the
GitHub annotations of infos) show one entry per group: the count, the first layers, and one
message: the worst layer's own (every number in it that layer's), then the range over the layers
of each quantity that differs. Machine outputs (JSON, SARIF, JUnit) keep one finding per layer.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from bninspect.findings import HIGHER, Finding, Quantity, Severity

LAYERS_SHOWN = 2


@dataclass(frozen=True)
class FindingGroup:
    """The findings of one code at one severity with one hint in one model, in the order the rules
    gave them. The hint is part of what makes a group: findings that need different fixes (a Lambda
    whose code the file stores, a class it only names) are not one problem."""

    code: str
    name: str
    severity: Severity
    findings: tuple[Finding, ...]

    @property
    def count(self) -> int:
        return len(self.findings)

    @property
    def hint(self) -> str:
        """The hint every finding of the group has."""
        return self.findings[0].hint

    def layers_text(self, shown: int = LAYERS_SHOWN) -> str:
        """"a, b and 119 more"; every layer when there are at most one more than `shown`."""
        names = [_where(finding) for finding in self.findings]
        if len(names) <= shown + 1:
            return ", ".join(names)
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"

    def message(self) -> str:
        """One message for the whole group, in which every number is one layer's own.

        The same message in every layer: that message. Otherwise the message of the worst layer
        ("worst: block3_bn, 45 of 264 channels ..."), or of the first layer as an example when the
        rule does not rank them, then the range over the layers of each quantity that differs
        ("per layer: 2…45 amplified collapsed channels, effective scale up to 15.81…63.25"). A range
        never stands in a sentence of one layer's numbers.
        """
        first = self.findings[0]
        if all(finding.message == first.message for finding in self.findings):
            return first.message
        worst = worst_finding(self.findings)
        lead = (f"worst: {_where(worst)}, {worst.message}" if worst is not None
                else f"e.g. {_where(first)}: {first.message}")
        ranges = quantity_ranges(self.findings)
        return f"{lead}; per layer: {ranges}" if ranges else lead


def _where(finding: Finding) -> str:
    return finding.layer or "(model)"


def _shared(findings: tuple[Finding, ...]) -> list[list[Quantity]]:
    """Per quantity label that every finding has with a finite value (in the first finding's
    order), each finding's quantity of that label."""
    by_label = [{quantity.label: quantity for quantity in finding.quantities} for finding in findings]
    columns = []
    for label in (quantity.label for quantity in findings[0].quantities):
        column = [quantities.get(label) for quantities in by_label]
        if all(item is not None and math.isfinite(item.value) for item in column):
            columns.append(column)
    return columns


def worst_finding(findings: tuple[Finding, ...]) -> Finding | None:
    """The finding whose layer is worst by the first shared quantity that measures it; None when
    there is none, or every layer has the same value (then no layer is worse than another)."""
    for column in _shared(findings):
        direction = column[0].worse
        if direction is None:
            continue
        values = [quantity.value for quantity in column]
        if len(set(values)) == 1:
            return None
        pick = max if direction == HIGHER else min
        return findings[values.index(pick(values))]
    return None


def quantity_ranges(findings: tuple[Finding, ...]) -> str:
    """"2…45 amplified collapsed channels, momentum 0.1…0.3": each shared quantity whose value differs
    between the layers, its lowest and highest value as the messages write them."""
    parts = []
    for column in _shared(findings):
        values = [quantity.value for quantity in column]
        if len(set(values)) == 1:
            continue
        low, high = column[values.index(min(values))], column[values.index(max(values))]
        parts.append(column[0].label.format(f"{low.text}…{high.text}"))
    return ", ".join(parts)


def group_findings(findings: Iterable[Finding]) -> list[FindingGroup]:
    """Groups by code, severity and hint: errors first, then warnings, then infos, each by code
    (groups of one code in the order of their first finding)."""
    by_key: dict[tuple[str, Severity, str], list[Finding]] = {}
    for finding in findings:
        by_key.setdefault((finding.code, finding.severity, finding.hint), []).append(finding)
    groups = [FindingGroup(code, members[0].name, severity, tuple(members))
              for (code, severity, _), members in by_key.items()]
    return sorted(groups, key=lambda group: (-group.severity.rank, group.code))


def one_by_one(findings: Iterable[Finding]) -> list[FindingGroup]:
    """Every finding as a group of its own (`--verbose`), in the same order: errors first, then
    by code and layer."""
    ordered = sorted(findings, key=lambda f: (-f.severity.rank, f.code, f.layer or ""))
    return [FindingGroup(f.code, f.name, f.severity, (f,)) for f in ordered]
