"""The schema_version 1 JSON document.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import json
import math

from bninspect.baseline import ABSENT, BaselineResult
from bninspect.checking import SuppressionUse
from bninspect.report import ModelReport, document, finding_dict
from bninspect.untrusted import redact


def _finite_or_text(value):
    # JSON has no NaN/Inf; the document stays parseable by strict parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite_or_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_text(item) for item in value]
    return value


def add_baseline(data: dict, reports: list[ModelReport], baseline: BaselineResult) -> dict:
    """Additive to schema_version 1: `baseline_state` ("new" or "unchanged") on every finding, and
    a top-level `baseline` with the file, the counts and the fixed entries."""
    for report, entry in zip(reports, data["models"]):
        for finding, finding_entry in zip(report.findings, entry["findings"]):
            finding_entry["baseline_state"] = baseline.state(finding)
    known, new = baseline.counts(reports)
    data["baseline"] = {
        "file": redact(baseline.file), "known": known, "new": new,
        "fixed": [{**entry.to_dict(), "path": baseline.fixed_path(entry), "baseline_state": ABSENT}
                  for entry in baseline.fixed],
    }
    return data


def add_suppressions(data: dict, reports: list[ModelReport], uses: tuple[SuppressionUse, ...]) -> dict:
    """Additive to schema_version 1 (`--show-suppressed`): the suppressed findings, with the entry
    that suppressed each, and every per-layer/per-file ignore entry with its use in this run."""
    data["suppressions"] = {
        "suppressed": [{**finding_dict(item.finding), "suppressed_by": item.by}
                       for report in reports for item in report.suppressed],
        "entries": [{"kind": use.kind, "pattern": use.pattern, "code": use.code, "suppressed": use.count,
                     "in_scope": use.in_scope, "unused": use.unused} for use in uses],
    }
    return data


def render(reports: list[ModelReport], baseline: BaselineResult | None = None,
           suppressions: tuple[SuppressionUse, ...] | None = None) -> str:
    # Compact: indent=None lets json use its C encoder, which matters for files with thousands of layers.
    data = document(reports)
    if baseline is not None:
        data = add_baseline(data, reports, baseline)
    if suppressions is not None:
        data = add_suppressions(data, reports, suppressions)
    try:
        return json.dumps(data, allow_nan=False) + "\n"
    except ValueError:
        # Only a document with a NaN/Inf somewhere (rare) pays for the walk that spells them out.
        return json.dumps(_finite_or_text(data), allow_nan=False) + "\n"
