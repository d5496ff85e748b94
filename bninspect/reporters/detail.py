"""Which BN layers of a report get detailed per-layer figures.

Drawing one layer's figures costs tens of milliseconds of matplotlib, so a page cannot draw them
for every layer of a deep model: every channel of every layer is in the heatmaps and the layer
table, and the detailed figures go to the layers a reader looks at first. Without a pattern: the
layers with findings, at most DETAIL_LIMIT, chosen so that every finding group (code and severity,
errors first) shows its first layer before a group shows a second one. With `--layers PATTERN`:
every matching layer, however many.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import fnmatch
from typing import Sequence

from bninspect.findings import Finding
from bninspect.reporters.grouping import group_findings

DETAIL_LIMIT = 6


def matches(path: str, pattern: str) -> bool:
    """A glob over the layer path or its last component, as `recalibrate --layers` matches."""
    return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def detail_layers(paths: Sequence[str], findings: Sequence[Finding], pattern: str | None = None,
                  limit: int = DETAIL_LIMIT) -> list[str]:
    """The layer paths to draw in detail, in graph order (the order of `paths`)."""
    if pattern is not None:
        return [path for path in paths if matches(path, pattern)]
    if len(paths) <= limit:
        return list(paths)  # a small model: every layer, findings or not
    known = set(paths)
    columns = [[f.layer for f in group.findings if f.layer in known] for group in group_findings(findings)]
    chosen: set[str] = set()
    depth = 0
    # Round robin over the groups: each group's first layer, then each group's second, ...
    while len(chosen) < limit and any(depth < len(column) for column in columns):
        for column in columns:
            if depth < len(column) and len(chosen) < limit:
                chosen.add(column[depth])
        depth += 1
    return [path for path in paths if path in chosen]
