"""Repeated findings of one model grouped for people: one entry per code, severity and hint.

Real backbones have 50-300 BN layers, and some rules fire on most of them (121 "frozen-bn" infos
for a frozen DenseNet121). The human outputs (`check` text, the table view, the HTML report, the
GitHub annotations of infos) show one entry per group: the count, the first layers, and one
message in which the numbers that differ from layer to layer are ranges. Machine outputs (JSON,
SARIF, JUnit) keep one finding per layer.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from bninspect.findings import Finding, Severity

# A number as the rules write them (`num`: 4 significant digits, maybe an exponent), not the
# digits inside a layer name such as `conv2_block1_0_bn`.
_NUMBER = re.compile(r"(?<![\w./-])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w/])")
# The channel lists the rules end their messages with ("channels 1, 5, 9 and 3 more").
_CHANNEL_LIST = re.compile(r"\bchannels? \d+(?:, \d+)*(?: and \d+ more)?")
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
        names = [finding.layer or "(model)" for finding in self.findings]
        if len(names) <= shown + 1:
            return ", ".join(names)
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"

    def message(self) -> str:
        """One message for the whole group.

        When the messages differ only in their numbers (and channel lists), the message with each
        differing number replaced by its range over the group, and the layer with the largest first
        differing number (not a channel total) named as the worst. Otherwise the first message, as
        an example.
        """
        if self.count == 1:
            return self.findings[0].message
        shapes = [_CHANNEL_LIST.sub("channels …", finding.message) for finding in self.findings]
        skeletons = {_NUMBER.sub("#", shape) for shape in shapes}
        if len(skeletons) != 1:
            first = self.findings[0]
            return f"e.g. {first.layer or '(model)'}: {first.message}"
        numbers = [_NUMBER.findall(shape) for shape in shapes]
        pieces = _NUMBER.split(shapes[0])
        out = [pieces[0]]
        worst = None
        for slot, piece in enumerate(pieces[1:]):
            column = [row[slot] for row in numbers]
            values = [float(text) for text in column]
            if len(set(values)) == 1:
                out.append(column[0])
            else:
                low, high = column[values.index(min(values))], column[values.index(max(values))]
                out.append(f"{low}…{high}")
                # A channel total ("3 of 64") says nothing about how bad a layer is.
                if worst is None and not out[-2].endswith(" of "):
                    worst = self.findings[values.index(max(values))].layer
            out.append(piece)
        text = "".join(out)
        return f"{text} (worst: {worst})" if worst else text


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
