"""Every relative link of README.md and docs/*.md resolves: the file exists and the anchor is a
heading of it (as GitHub names headings) or an explicit `<a id>`. The README sends newcomers into
docs/ for the details, so a moved section must not leave a dead link behind."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set(re.findall(r'<a id="([^"]+)"></a>', text))
    seen: Counter[str] = Counter()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        anchor = github_anchor(heading)
        found.add(anchor if not seen[anchor] else f"{anchor}-{seen[anchor]}")  # repeats get -1, -2, ...
        seen[anchor] += 1
    return found


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans: `[x](y)` there is not a link
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_github_anchor_matches_the_headings_the_docs_link_to():
    assert github_anchor("On real data: `--data`") == "on-real-data---data"
    assert github_anchor("Repairing statistics: `bninspect recalibrate`") == "repairing-statistics-bninspect-recalibrate"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[path.name for path in DOCUMENTS])
def test_every_relative_link_resolves(document):
    broken = []
    for target in relative_links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading or anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
