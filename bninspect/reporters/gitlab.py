"""GitLab Code Quality JSON (`artifacts: reports: codequality:`), the subset of the Code Climate
issue format GitLab documents: an array of issues with `description`, `check_name`,
`fingerprint`, `severity` and `location.path` / `location.lines.begin`.

A model file has no lines: every issue points at line 1 of the file, and the layer path goes in
the description. The fingerprint is the baseline's (model path, layer path, code; nothing from the
statistics), so GitLab's merge-request widget matches a finding of a retrained model with the one
on the target branch; GitLab keeps only the first issue of a fingerprint, so a repeated one gets a
counter.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import hashlib
import json

from bninspect.baseline import fingerprint, relative_model_path
from bninspect.findings import Severity
from bninspect.report import ModelReport

# GitLab's scale is info, minor, major, critical, blocker. An error fails the gate, so it ranks
# above a warning; a model that could not be read is a blocker (it never passes).
SEVERITIES = {Severity.INFO: "info", Severity.WARNING: "minor", Severity.ERROR: "critical"}
UNREADABLE = "blocker"


def _issue(description: str, check_name: str, mark: str, severity: str, path: str) -> dict:
    return {"description": description, "check_name": check_name, "fingerprint": mark, "severity": severity,
            "location": {"path": path, "lines": {"begin": 1}}}


def _unique(mark: str, seen: dict[str, int]) -> str:
    """`mark`, or for its n-th repeat a hash of it and n: unique, and stable across runs."""
    count = seen.get(mark, 0)
    seen[mark] = count + 1
    if count == 0:
        return mark
    return hashlib.sha256(f"{mark}\x00{count}".encode()).hexdigest()[:32]


def issues(reports: list[ModelReport], root: str = ".") -> list[dict]:
    """One issue per finding and per unreadable model; paths relative to `root` (the repository
    root GitLab resolves them against: the job's working directory)."""
    seen: dict[str, int] = {}
    found: list[dict] = []
    for report in reports:
        path = relative_model_path(report.source, root)
        if report.error is not None:
            mark = _unique(fingerprint(path, None, "unreadable-model"), seen)
            found.append(_issue(f"unreadable model: {report.error}", "bninspect/unreadable-model", mark,
                                UNREADABLE, path))
        for finding in report.findings:
            where = f"{finding.layer}: " if finding.layer else ""
            mark = _unique(fingerprint(path, finding.layer, finding.code), seen)
            found.append(_issue(f"{finding.code} {finding.name}: {where}{finding.message} (hint: {finding.hint})",
                                f"bninspect/{finding.code}", mark, SEVERITIES[finding.severity], path))
    return found


def render(reports: list[ModelReport], root: str = ".") -> str:
    return json.dumps(issues(reports, root), indent=2) + "\n"
