"""SARIF 2.1.0 for code scanning (GitHub, Azure DevOps, IDE viewers).

Every catalogue rule is listed in `tool.driver.rules` with its documentation; each finding is a
result pointing at the model file (physical location) and the layer path (logical location).
Unreadable models are tool execution notifications, and make `executionSuccessful` false.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import quote

from bninspect._version import __version__
from bninspect.baseline import ABSENT, BaselineEntry, BaselineResult
from bninspect.findings import Finding, Severity
from bninspect.loaders.remote import is_url
from bninspect.report import ModelReport
from bninspect.untrusted import redact_url

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


# The characters RFC 3986 allows unencoded besides the unreserved ones (which `quote` never
# encodes), `%` included for the escapes a URL already holds.
_URI_RESERVED = ":/?#[]@!$&'()*+,;=%"


def artifact_uri(path: str) -> str:
    """A valid URI for the model file, whatever its name holds (spaces, control characters,
    bytes that are not UTF-8: percent-encoded). A relative path stays relative (code scanning
    resolves it against the repository root); an absolute one becomes a file:// URI; a URL stays
    a URL, its secrets redacted."""
    if is_url(path):
        return quote(redact_url(path), safe=_URI_RESERVED, errors="surrogateescape")
    target = Path(path)
    if target.is_absolute():
        return target.as_uri()
    # surrogateescape: a file name that is not UTF-8 gets its own bytes back, as os.fsencode does.
    return quote(target.as_posix(), safe="/", errors="surrogateescape")


def _rule_descriptor(rule) -> dict:
    from bninspect.rules.docs import rule_markdown, rule_text

    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.what},
        "help": {"text": rule_text(rule), "markdown": rule_markdown(rule, heading_level=2)},
        "defaultConfiguration": {"level": LEVELS[rule.severity]},
        "properties": {"kind": rule.kind},
    }


def _location(source: str, layer: str | None) -> dict:
    location: dict = {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(source)}}}
    if layer is not None:
        location["logicalLocations"] = [{"name": layer, "fullyQualifiedName": layer, "kind": "member"}]
    return location


def _result(finding: Finding, rule_index: dict[str, int], baseline: BaselineResult | None = None) -> dict:
    result = {
        "ruleId": finding.code,
        "level": LEVELS[finding.severity],
        "message": {"text": f"{finding.message} (hint: {finding.hint})"},
        "locations": [_location(finding.source, finding.layer)],
        # A stable identity across runs, so code scanning can track a finding; binary files have no
        # line contents for it to hash. surrogatepass: a name that is not UTF-8 (a file name's raw
        # bytes, a lone surrogate in a JSON config) hashes instead of raising.
        "partialFingerprints": {"bninspectFinding/v1": hashlib.sha256(
            f"{finding.code}|{finding.source}|{finding.layer}".encode("utf-8", "surrogatepass")).hexdigest()},
    }
    if finding.code in rule_index:
        result["ruleIndex"] = rule_index[finding.code]
    if baseline is not None:
        result["baselineState"] = baseline.state(finding)
        # The baseline's fingerprint: the model path relative to the baseline file, so it is the
        # same in every checkout and from every working directory.
        result["partialFingerprints"]["bninspectBaseline/v1"] = baseline.fingerprint(finding)
    return result


def _fixed_result(entry: BaselineEntry, baseline: BaselineResult, rule_index: dict[str, int]) -> dict:
    """A baseline entry whose finding is gone: SARIF's baselineState "absent"."""
    from bninspect.rules.catalogue import RULES_BY_CODE

    rule = RULES_BY_CODE.get(entry.code)
    result = {
        "ruleId": entry.code,
        "level": LEVELS[rule.severity] if rule is not None else "note",
        "message": {"text": f"fixed: {entry.code} {entry.name} is no longer found (it was in the baseline)"},
        "locations": [_location(baseline.fixed_path(entry), entry.layer)],
        "partialFingerprints": {"bninspectBaseline/v1": entry.fingerprint},
        "baselineState": ABSENT,
    }
    if entry.code in rule_index:
        result["ruleIndex"] = rule_index[entry.code]
    return result


def document(reports: list[ModelReport], baseline: BaselineResult | None = None) -> dict:
    from bninspect.rules.catalogue import RULES

    rule_index = {rule.code: index for index, rule in enumerate(RULES)}
    results = [_result(finding, rule_index, baseline) for report in reports for finding in report.findings]
    if baseline is not None:
        results.extend(_fixed_result(entry, baseline, rule_index) for entry in baseline.fixed)
    notifications = [{
        "level": "error",
        "message": {"text": f"{report.source}: {report.error}"},
        "locations": [_location(report.source, None)],
        "descriptor": {"id": "unreadable-model"},
    } for report in reports if report.error is not None]
    return {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "bninspect", "version": __version__, "semanticVersion": __version__,
                                "rules": [_rule_descriptor(rule) for rule in RULES]}},
            "invocations": [{"executionSuccessful": not notifications,
                             "toolExecutionNotifications": notifications}],
            "artifacts": [{"location": {"uri": artifact_uri(report.source)}} for report in reports],
            "results": results,
        }],
    }


def render(reports: list[ModelReport], baseline: BaselineResult | None = None) -> str:
    return json.dumps(document(reports, baseline), indent=2) + "\n"
