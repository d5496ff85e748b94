"""Write the rule reference `docs/rules.md` and the README's rule summary table (between
<!-- rules:start --> and <!-- rules:end -->) from the rule catalogue. `--check` only reports
whether either is stale (exit 1), for CI.

    python scripts/update_rule_docs.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bninspect.rules.docs import RULES_DOC, catalogue_markdown, reference_markdown, replace_readme_section  # noqa: E402


def expected() -> dict[Path, str]:
    """Each generated file and the text it should have."""
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    return {readme_path: replace_readme_section(readme, catalogue_markdown()),
            ROOT / RULES_DOC: reference_markdown()}


def main(argv: list[str]) -> int:
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if "--check" not in argv:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"{path.relative_to(ROOT)} updated")
    if "--check" in argv and stale:
        print(f"stale: {', '.join(map(str, stale))}: run python scripts/update_rule_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
