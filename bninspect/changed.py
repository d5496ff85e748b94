"""`check --changed-since REF`: the model files that differ from a git ref (added, modified, or
renamed, the rename followed to its new name; deleted files are gone and not checked), from
`git diff --name-status -M REF` run in the repository of each path.

Layer: engine (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable

from bninspect.errors import UsageProblem

# The statuses whose new path exists in the working tree: Added, Modified, Renamed, Copied, Type
# changed. (D: deleted, nothing to check; U: unmerged, which `git diff REF` does not list alone.)
_KEPT = ("A", "M", "R", "C", "T")


class ChangedFilesError(UsageProblem):
    """Not in a git repository, git missing, or a ref git does not know: one line, exit 2."""


def _git(arguments: list[str], cwd: Path) -> str:
    try:
        result = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=False,
                                errors="surrogateescape")
    except FileNotFoundError:
        raise ChangedFilesError("--changed-since needs git, which is not installed (or not on PATH)") from None
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"git exited {result.returncode}"
        raise ChangedFilesError(f"--changed-since: {reason}")
    return result.stdout


def repository_root(path: str | os.PathLike) -> Path:
    """The top level of the git work tree holding `path`. Raises ChangedFilesError outside one."""
    start = Path(path)
    directory = start if start.is_dir() else start.parent
    if not directory.exists():
        raise ChangedFilesError(f"{path}: no such file or directory")
    try:
        top = _git(["rev-parse", "--show-toplevel"], directory)
    except ChangedFilesError:
        raise ChangedFilesError(f"--changed-since: {path} is not inside a git repository") from None
    return Path(top.strip())


def parse_name_status(output: str) -> list[str]:
    """The paths (relative to the repository root) of the added, modified, renamed (the new name),
    copied and type-changed files in `git diff --name-status -M` output."""
    paths = []
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or fields[0][0] not in _KEPT:
            continue
        paths.append(fields[-1])  # R100<TAB>old<TAB>new: the new name
    return paths


def changed_files(paths: Iterable[str | os.PathLike], ref: str) -> set[Path]:
    """The resolved paths of the files that differ from `ref` in the repositories of `paths`."""
    if ref.startswith("-"):
        raise ChangedFilesError(f"--changed-since {ref}: a git ref cannot start with '-'")
    changed: set[Path] = set()
    for root in {repository_root(path) for path in paths}:
        # core.quotePath=off: non-ASCII names come as they are, not as quoted octal escapes.
        output = _git(["-c", "core.quotePath=off", "diff", "--name-status", "-M", ref, "--"], root)
        changed.update(Path(os.path.realpath(root / name)) for name in parse_name_status(output))
    return changed


def is_changed(model: str, changed: set[Path]) -> bool:
    """Whether the model at `model` (a file, a model directory or a TF checkpoint prefix) has a
    changed file: the model file itself, or one of its parts (footprint knows which files belong to
    a model, for refusing to overwrite them)."""
    from bninspect.loaders.footprint import overwritten_input

    if Path(os.path.realpath(model)) in changed:
        return True
    if Path(model).is_file():
        return False
    return any(overwritten_input(path, model) is not None for path in changed)
