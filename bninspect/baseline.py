"""The baseline of `bninspect check`: findings a team has reviewed and accepted, in a JSON file
kept in the repository, so that the gate fails only on new ones (the ratchet of Bandit's
`-b baseline.json` and SARIF's `baselineState`).

A finding is identified by its fingerprint: a hash of the model path (relative to the baseline
file's directory, so the file works from any checkout and any working directory), the layer path
and the code. Nothing from the statistics or the message goes in: retraining a model and saving it
again keeps its findings' fingerprints.

The file, sorted and one key a line so that a review diff shows exactly what changed:

    {"bninspect_baseline": 1,
     "findings": [{"model": "models/a.h5", "layer": "bn1", "code": "BN001",
                   "name": "untrained-moving-stats", "fingerprint": "...", "reason": ""}]}

`reason` is for the reviewer's words; `--update-baseline` keeps it.

Layer: results (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from bninspect.errors import UsageProblem
from bninspect.findings import Finding
from bninspect.loaders.remote import is_url
from bninspect.report import ModelReport

FORMAT_KEY = "bninspect_baseline"
FORMAT_VERSION = 1

NEW = "new"
UNCHANGED = "unchanged"
ABSENT = "absent"  # SARIF's name for a baseline finding that is gone (fixed)


class BaselineError(UsageProblem):
    """A baseline file that cannot be read or is not a bninspect baseline: one line, exit 2."""


@dataclass(frozen=True)
class BaselineEntry:
    model: str  # posix path relative to the baseline file's directory (a URL stays a URL)
    layer: str | None
    code: str
    name: str
    fingerprint: str
    reason: str = ""

    def to_dict(self) -> dict:
        return {"model": self.model, "layer": self.layer, "code": self.code, "name": self.name,
                "fingerprint": self.fingerprint, "reason": self.reason}


@dataclass(frozen=True)
class Baseline:
    """A baseline file's entries; `directory` is where model paths are relative to."""

    directory: str
    entries: tuple[BaselineEntry, ...] = ()


@dataclass(frozen=True)
class BaselineResult:
    """How a run compares with a baseline: the fingerprint of every finding (keyed by the
    finding's (source, layer, code)), which fingerprints are known, and the entries whose finding
    is gone from a model that was checked (fixed)."""

    file: str
    fingerprints: Mapping[tuple[str, str | None, str], str]
    known: frozenset[str]
    fixed: tuple[BaselineEntry, ...] = ()
    directory: str = "."

    def fingerprint(self, finding: Finding) -> str:
        return self.fingerprints[(finding.source, finding.layer, finding.code)]

    def state(self, finding: Finding) -> str:
        """"unchanged" for a finding in the baseline, else "new": one dict lookup and one set test."""
        return UNCHANGED if self.fingerprint(finding) in self.known else NEW

    def is_known(self, finding: Finding) -> bool:
        return self.state(finding) == UNCHANGED

    def counts(self, reports: Iterable[ModelReport]) -> tuple[int, int]:
        """(known, new) over every finding of `reports`."""
        known = new = 0
        for report in reports:
            for finding in report.findings:
                if self.is_known(finding):
                    known += 1
                else:
                    new += 1
        return known, new

    def fixed_path(self, entry: BaselineEntry) -> str:
        """The fixed entry's model as the user's command line would name it (relative to the
        working directory when it can be)."""
        return model_location(entry.model, self.directory)


def relative_model_path(source: str, directory: str) -> str:
    """`source` relative to the baseline's directory, with forward slashes; a URL unchanged."""
    if is_url(source):
        return source
    try:
        relative = os.path.relpath(os.path.abspath(source), directory)
    except ValueError:  # another drive on Windows: no relative path exists
        relative = os.path.abspath(source)
    return Path(relative).as_posix()


def model_location(model: str, directory: str) -> str:
    """A baseline entry's model path, as a path from the working directory."""
    if is_url(model):
        return model
    absolute = os.path.normpath(os.path.join(directory, model))
    try:
        return Path(os.path.relpath(absolute)).as_posix()
    except ValueError:
        return absolute


def fingerprint(model: str, layer: str | None, code: str) -> str:
    """Stable across retraining: only where the finding is and what rule found it. surrogatepass:
    a name that is not UTF-8 (a file name's raw bytes) hashes instead of raising."""
    key = "\x00".join((model, layer if layer is not None else "", code))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# --- reading and writing ------------------------------------------------------------------------

def read_baseline(path: str | os.PathLike) -> Baseline:
    """The baseline at `path`. Raises BaselineError (one line) for a missing, unreadable or
    malformed file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such baseline file (write one with `bninspect check "
                            f"--update-baseline {path} PATHS`)") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise BaselineError(f"{path}: cannot read the baseline ({reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BaselineError(f"{path}: not a bninspect baseline: invalid JSON ({error})") from None
    entries = _entries(data, path)
    return Baseline(directory=str(path.resolve().parent), entries=entries)


def _entries(data: object, path: Path) -> tuple[BaselineEntry, ...]:
    if (not isinstance(data, dict) or data.get(FORMAT_KEY) != FORMAT_VERSION
            or not isinstance(data.get("findings"), list)):
        raise BaselineError(f"{path}: not a bninspect baseline (expected an object with "
                            f"\"{FORMAT_KEY}\": {FORMAT_VERSION} and a \"findings\" list)")
    return tuple(_entry(item, index, path) for index, item in enumerate(data["findings"]))


def _entry(item: object, index: int, path: Path) -> BaselineEntry:
    where = f"{path}: findings[{index}]"
    if not isinstance(item, dict):
        raise BaselineError(f"{where}: expected an object")
    for key in ("model", "code"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise BaselineError(f"{where}: \"{key}\" must be a non-empty string")
    layer = item.get("layer")
    if layer is not None and not isinstance(layer, str):
        raise BaselineError(f"{where}: \"layer\" must be a string or null")
    reason = item.get("reason", "")
    if not isinstance(reason, str):
        raise BaselineError(f"{where}: \"reason\" must be a string")
    name = item.get("name", "")
    # The fingerprint is recomputed, not trusted: an entry edited by hand (a model moved) still
    # matches what it names.
    return BaselineEntry(model=item["model"], layer=layer, code=item["code"], name=str(name),
                         fingerprint=fingerprint(item["model"], layer, item["code"]), reason=reason)


def render_baseline(entries: Iterable[BaselineEntry]) -> str:
    """The file's text: entries sorted by model, layer and code, one per fingerprint."""
    unique = {entry.fingerprint: entry for entry in entries}
    ordered = sorted(unique.values(), key=lambda entry: (entry.model, entry.layer or "", entry.code))
    document = {FORMAT_KEY: FORMAT_VERSION, "findings": [entry.to_dict() for entry in ordered]}
    # ASCII (\u escapes): a file name that is not UTF-8 (surrogates) must not stop the write.
    return json.dumps(document, indent=2) + "\n"


# --- comparing a run with a baseline ------------------------------------------------------------

def fingerprints(reports: Iterable[ModelReport], directory: str) -> dict[tuple[str, str | None, str], str]:
    """The fingerprint of every finding, keyed by (source, layer, code); each model's relative path
    is computed once."""
    result: dict[tuple[str, str | None, str], str] = {}
    for report in reports:
        model = relative_model_path(report.source, directory)
        for finding in report.findings:
            result[(finding.source, finding.layer, finding.code)] = fingerprint(model, finding.layer, finding.code)
    return result


def compare(baseline: Baseline, reports: list[ModelReport], file: str,
            checks_code: Callable[[str], bool] = lambda code: True) -> BaselineResult:
    """Which findings of `reports` the baseline knows, and which of its entries are fixed.

    An entry is fixed when its model was read in this run and no longer has the finding, or when
    its model file is gone. Entries of models not checked in this run (other paths, models that
    could not be read) and of codes this run did not check (`checks_code`) are neither: a partial
    run must not report, or drop, what it did not look at."""
    found = fingerprints(reports, baseline.directory)
    current = set(found.values())
    checked = {relative_model_path(report.source, baseline.directory)
               for report in reports if report.error is None}
    fixed = tuple(entry for entry in baseline.entries if entry.fingerprint not in current
                  and checks_code(entry.code) and (entry.model in checked or _gone(entry, baseline.directory)))
    return BaselineResult(file=file, fingerprints=found,
                          known=frozenset(entry.fingerprint for entry in baseline.entries),
                          fixed=fixed, directory=baseline.directory)


def _gone(entry: BaselineEntry, directory: str) -> bool:
    return not is_url(entry.model) and not os.path.exists(os.path.join(directory, entry.model))


def updated_entries(baseline: Baseline, result: BaselineResult, reports: list[ModelReport]) -> list[BaselineEntry]:
    """The entries `--update-baseline` writes: every current finding (keeping the reason of the
    entry it matches), the old entries of models this run did not check, and not the fixed ones."""
    reasons = {entry.fingerprint: entry.reason for entry in baseline.entries}
    fixed = {entry.fingerprint for entry in result.fixed}
    current = set(result.fingerprints.values())
    entries = [entry for entry in baseline.entries
               if entry.fingerprint not in fixed and entry.fingerprint not in current]
    for report in reports:
        model = relative_model_path(report.source, baseline.directory)
        for finding in report.findings:
            mark = result.fingerprint(finding)
            entries.append(BaselineEntry(model=model, layer=finding.layer, code=finding.code, name=finding.name,
                                         fingerprint=mark, reason=reasons.get(mark, "")))
    return entries
