"""Every rule case file (tests/rules/cases/BNxxx.toml) runs through this one parametrised test.

A case builds a small ModelDescription from a compact spec (see rule_case_specs.py), runs the static
rules with the case's settings, and checks the codes it must and must not produce.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bninspect.findings import Severity
from bninspect.checking import run_static_rules
from bninspect.rules.base import STATIC
from bninspect.rules.catalogue import RULES
from rule_case_specs import build_description, build_settings

CASES_DIR = Path(__file__).parent / "cases"


def _load_cases() -> list:
    params = []
    for path in sorted(CASES_DIR.glob("*.toml")):
        with open(path, "rb") as handle:
            for case in tomllib.load(handle)["case"]:
                params.append(pytest.param(path.stem, case, id=f"{path.stem}:{case['name']}"))
    return params


CASES = _load_cases()


@pytest.mark.parametrize(("rule_file", "case"), CASES)
def test_rule_case(rule_file: str, case: dict) -> None:
    findings = run_static_rules(build_description(case), build_settings(case))
    found = {finding.code for finding in findings}
    missing = set(case.get("expect", [])) - found
    unwanted = set(case.get("must_not", [])) & found
    listing = "\n".join(f"  {f.code} {f.severity.value} {f.layer}: {f.message}" for f in findings)
    assert not missing, f"expected {sorted(missing)} not found; got:\n{listing}"
    assert not unwanted, f"must not find {sorted(unwanted)}; got:\n{listing}"
    if case.get("exact"):
        assert found == set(case["expect"]), f"expected exactly {case['expect']}; got:\n{listing}"
    for detail in case.get("detail", []):
        matching = [f for f in findings if f.code == detail["code"]
                    and ("layer" not in detail or f.layer == detail["layer"])]
        assert matching, f"no {detail['code']} finding for layer {detail.get('layer')}; got:\n{listing}"
        finding = matching[0]
        if "severity" in detail:
            assert finding.severity is Severity(detail["severity"])
        for fragment in detail.get("message", []):
            assert fragment in finding.message, f"{fragment!r} not in {finding.message!r}"
        if "count" in detail:
            assert len(matching) == detail["count"], listing


def test_every_static_rule_has_a_case_file_with_positive_and_negative_cases() -> None:
    by_file: dict[str, list[dict]] = {}
    for param in CASES:
        rule_file, case = param.values
        by_file.setdefault(rule_file, []).append(case)
    for rule in RULES:
        if rule.kind != STATIC:
            continue
        cases = by_file.get(rule.code, [])
        assert any(rule.code in case.get("expect", []) for case in cases), f"{rule.code}: no positive case"
        assert any(rule.code in case.get("must_not", []) for case in cases), f"{rule.code}: no negative case"
