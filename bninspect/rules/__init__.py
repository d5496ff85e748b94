"""Static rules: pure functions over a ModelDescription. (Filled in by the rules work.)"""

from __future__ import annotations

from bninspect.findings import Finding
from bninspect.model import ModelDescription


def run_static_rules(description: ModelDescription, settings=None) -> tuple[Finding, ...]:
    return ()
