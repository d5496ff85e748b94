"""Static rules: pure functions over a ModelDescription, one catalogue (`catalogue.RULES`).

`run_static_rules` runs every enabled static rule and applies the settings (selection, severity
overrides, per-layer ignores). For weights-only files the rules that need the config or the graph
are skipped, and BN015 names them.
"""

from __future__ import annotations

from bninspect.findings import Finding
from bninspect.model import ModelDescription

CONFIG_UNAVAILABLE = "BN015"


def run_static_rules(description: ModelDescription, settings=None) -> tuple[Finding, ...]:
    from bninspect.config import Settings
    from bninspect.rules.base import STATIC, Hit
    from bninspect.rules.catalogue import RULES, RULES_BY_CODE

    settings = settings if settings is not None else Settings()
    findings: list[Finding] = []
    skipped: list[str] = []
    for rule in RULES:
        if rule.kind != STATIC or rule.check is None or not settings.enabled(rule.code):
            continue
        if rule.needs_config and not description.has_config:
            skipped.append(rule.code)
            continue
        findings.extend(rule.run(description, settings.thresholds))
    if not description.has_config:
        names = ", ".join(f"{code} {RULES_BY_CODE[code].name}" for code in skipped) or "none"
        findings.append(RULES_BY_CODE[CONFIG_UNAVAILABLE].finding(description.source, Hit(
            None, f"weights-only file, no model config: skipped {len(skipped)} rules that need it ({names})")))
    return settings.apply(findings)
