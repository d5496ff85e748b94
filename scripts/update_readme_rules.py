"""Fill the README rules section (between <!-- rules:start --> and <!-- rules:end -->) from the
rule catalogue. `--check` only reports whether it is stale (exit 1), for CI.

    python scripts/update_readme_rules.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bninspect.rules.docs import catalogue_markdown, replace_readme_section  # noqa: E402


def main(argv: list[str]) -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = replace_readme_section(readme, catalogue_markdown())
    if "--check" in argv:
        if updated != readme:
            print("README.md rules section is stale: run python scripts/update_readme_rules.py", file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        readme_path.write_text(updated, encoding="utf-8")
        print("README.md rules section updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
