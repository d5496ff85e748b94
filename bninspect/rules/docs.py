"""Rule documentation as Markdown (README, SARIF help) and plain text (`bninspect explain`),
generated from the catalogue so that there is one text to keep right.

Layer: rules (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import re

from bninspect.rules.base import Rule

SECTIONS = (("What it does", "what"), ("Why is this bad?", "why"), ("Example", "example"),
            ("How to fix", "fix"))


def _title(rule: Rule) -> str:
    severity = rule.severity.value
    if rule.code == "BN009":
        severity += "; error for the batch axis"
    kind = "; needs `--data`" if rule.kind == "dynamic" else ""
    return f"{rule.code} {rule.name} ({severity}{kind})"


def rule_markdown(rule: Rule, heading_level: int = 3) -> str:
    hashes = "#" * heading_level
    parts = [f"{hashes} {_title(rule)}"]
    for heading, attribute in SECTIONS:
        parts.append(f"**{heading}**\n\n{getattr(rule, attribute)}")
    return "\n\n".join(parts) + "\n"


def _plain(markdown: str) -> str:
    """Markdown of the rule docs as terminal text: code fences dropped, code indented, and the
    backticks of inline code (which may span lines) removed."""
    parts = re.split(r"^```[a-z]*\n(.*?)^```$", markdown, flags=re.M | re.S)
    out = []
    for index, part in enumerate(parts):
        if index % 2:  # inside a fence
            out.append("\n".join("    " + line for line in part.rstrip("\n").splitlines()))
        else:
            out.append(re.sub(r"`([^`]*)`", r"\1", part))
    return "".join(out)


def rule_text(rule: Rule) -> str:
    parts = [_plain(_title(rule)), rule.summary]
    for heading, attribute in SECTIONS:
        parts.append(f"{heading}\n{_plain(getattr(rule, attribute))}")
    return "\n\n".join(parts) + "\n"


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _summary_table(rules: tuple[Rule, ...], link: str) -> list[str]:
    lines = [
        "Codes are stable: use them (or the names) in `--select`, `--ignore` and `[tool.bninspect]`.",
        "BN0xx rules read the file statically; BN1xx rules need `--data`. "
        "`bninspect explain CODE` prints one rule's documentation.",
        "",
        "| code | name | severity | finds |",
        "|---|---|---|---|",
    ]
    for rule in rules:
        severity = rule.severity.value + (" (error for the batch axis)" if rule.code == "BN009" else "")
        lines.append(f"| [{rule.code}]({link}#{rule.code.lower()}) | {rule.name} | {severity} | {_table_cell(rule.summary)} |")
    return lines


def _catalogue(rules: tuple[Rule, ...] | None) -> tuple[Rule, ...]:
    from bninspect.rules.catalogue import RULES

    return RULES if rules is None else rules


RULES_DOC = "docs/rules.md"


def catalogue_markdown(rules: tuple[Rule, ...] | None = None) -> str:
    """The README rules section: the summary table, each code linking into `docs/rules.md`."""
    return "\n".join(_summary_table(_catalogue(rules), RULES_DOC)) + "\n"


def reference_markdown(rules: tuple[Rule, ...] | None = None) -> str:
    """`docs/rules.md`: the summary table, then every rule's documentation under its anchor."""
    rules = _catalogue(rules)
    lines = ["# bninspect rules", "",
             "<!-- generated from bninspect/rules/catalogue.py by scripts/update_rule_docs.py: do not edit -->", ""]
    lines.extend(_summary_table(rules, ""))
    lines.append("")
    for rule in rules:
        lines.append(f'<a id="{rule.code.lower()}"></a>')
        lines.append("")
        lines.append(rule_markdown(rule, heading_level=2).rstrip("\n"))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


README_START = "<!-- rules:start -->"
README_END = "<!-- rules:end -->"


def replace_readme_section(readme: str, section: str) -> str:
    """README text with the rules region replaced; only the text between the markers changes."""
    start = readme.find(README_START)
    end = readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} ... {README_END} region")
    head = readme[:start + len(README_START)]
    return head + "\n" + section + readme[end:]
