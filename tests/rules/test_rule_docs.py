"""The catalogue is complete and consistent, and the README rules section is generated from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bninspect.findings import Severity
from bninspect.rules.base import DYNAMIC, STATIC
from bninspect.rules.catalogue import RULES, find_rule
from bninspect.rules.docs import (README_END, README_START, catalogue_markdown, reference_markdown,
                                  replace_readme_section, rule_text)

ROOT = Path(__file__).resolve().parents[2]
SPEC_TABLE = {  # code: (name, severity) as the specification lists them
    "BN001": ("untrained-moving-stats", "error"), "BN002": ("untrained-affine", "warning"),
    "BN003": ("non-finite", "error"), "BN004": ("negative-variance", "error"),
    "BN005": ("collapsed-variance", "warning"), "BN006": ("zero-gamma", "info"),
    "BN007": ("extreme-scale", "warning"), "BN008": ("pytorch-momentum", "warning"),
    "BN009": ("axis-mismatch", "warning"), "BN010": ("bn-output-layer", "warning"),
    "BN011": ("redundant-bias", "info"), "BN012": ("dropout-before-bn", "warning"),
    "BN013": ("frozen-bn", "info"), "BN014": ("partially-untrained", "warning"),
    "BN015": ("config-unavailable", "info"), "BN016": ("fp16-epsilon", "warning"),
    "BN017": ("code-in-model", "info"), "BN018": ("unconverged-moving-stats", "warning"),
    "BN019": ("fine-tune-training-mode", "warning"),
    "BN101": ("stats-drift", "warning"),
    "BN102": ("train-inference-gap", "warning"), "BN103": ("non-finite-activation", "error"),
    "BN104": ("dead-channel", "info"),
}


def test_catalogue_matches_the_specification():
    assert {rule.code: (rule.name, rule.severity.value) for rule in RULES} == SPEC_TABLE
    assert [rule.code for rule in RULES] == sorted(SPEC_TABLE)


def test_every_rule_is_documented_in_the_fixed_form():
    for rule in RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule.name)
        assert isinstance(rule.severity, Severity)
        for part in (rule.summary, rule.what, rule.why, rule.example, rule.fix, rule.hint):
            assert part.strip() and part == part.strip(), rule.code
        assert "\n" not in rule.summary and "\n" not in rule.hint
        assert rule.example.startswith("```") and rule.example.endswith("```"), rule.code
        # static rules have a check (BN015 is emitted by the runner); dynamic ones are the probes'
        assert (rule.check is not None) == (rule.kind == STATIC and rule.code != "BN015"), rule.code
        assert rule.kind in (STATIC, DYNAMIC) and (rule.kind == DYNAMIC) == rule.code.startswith("BN1")


def test_explain_text_has_the_sections_and_no_markdown_fences():
    text = rule_text(find_rule("BN008"))
    assert text.startswith("BN008 pytorch-momentum (warning)")
    assert "```" not in text and "    keras.layers.BatchNormalization(momentum=0.1)" in text
    assert [line for line in text.splitlines() if line in ("What it does", "Why is this bad?", "Example",
                                                           "How to fix")] == [
        "What it does", "Why is this bad?", "Example", "How to fix"]


def test_readme_rules_section_is_up_to_date():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert replace_readme_section(readme, catalogue_markdown()) == readme, (
        "README.md rules section is stale: run python scripts/update_rule_docs.py")


def test_rule_reference_is_up_to_date():
    reference = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    assert reference == reference_markdown(), "docs/rules.md is stale: run python scripts/update_rule_docs.py"


def test_readme_table_links_every_rule_into_the_reference_which_documents_it():
    section = catalogue_markdown()
    reference = reference_markdown()
    for rule in RULES:
        assert f"| [{rule.code}](docs/rules.md#{rule.code.lower()}) | {rule.name} |" in section
        assert f'<a id="{rule.code.lower()}"></a>' in reference
        assert f"## {rule.code} {rule.name} (" in reference
        for part in (rule.what, rule.why, rule.example, rule.fix):
            assert part in reference, rule.code


def test_replace_touches_only_the_region():
    readme = f"intro\n{README_START}\nold\n{README_END}\noutro\n"
    assert replace_readme_section(readme, "new\n") == f"intro\n{README_START}\nnew\n{README_END}\noutro\n"


def test_update_script_check_mode(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_rule_docs.py"), "--check"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
