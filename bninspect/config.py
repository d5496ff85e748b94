"""Settings: which rules run, at what severity, with which thresholds.

Read from `[tool.bninspect]` in the nearest `pyproject.toml` that has that table (searched upward
from the current directory, like ruff does), or from an explicit `--config FILE`. Command-line
flags are applied on top with `Settings.with_overrides`.

    [tool.bninspect]
    select = ["BN0"]                 # codes, names or code prefixes; default: every rule
    ignore = ["BN013", "zero-gamma"]
    strict = false                   # true: warnings fail `bninspect check` too
    build = false                    # true: as --build (check, inspect, report)
    baseline = "bninspect-baseline.json"  # as `check --baseline`, relative to this file

    [tool.bninspect.severity]        # override a rule's severity: error, warning or info
    BN013 = "warning"

    [tool.bninspect.per-layer-ignores]   # glob on the layer path ("outer/inner/bn")
    "head/*" = ["BN010"]

    [tool.bninspect.per-file-ignores]    # glob on the model path, relative to this file (as ruff)
    "legacy/*.h5" = ["BN001"]        # a glob without "/" also matches the file name anywhere

    [tool.bninspect.per-file-severity]   # same globs: severities for the models matching one
    "legacy/**" = { BN001 = "warning" }

    [tool.bninspect.per-file-strict]     # same globs: `strict` for the models matching one
    "experiments/*.keras" = false

    [tool.bninspect.thresholds]      # keys of `Thresholds`, kebab- or snake_case
    extreme-scale = 1000.0

Everything is frozen and picklable: `bninspect check --jobs N` sends Settings to worker processes.

Layer: settings (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from bninspect.errors import SettingsError
from bninspect.findings import Finding, Severity, Suppressed
from bninspect.thresholds import Thresholds

TABLE_KEYS = ("select", "ignore", "strict", "build", "baseline", "severity", "per-layer-ignores",
              "per-file-ignores", "per-file-severity", "per-file-strict", "thresholds")


@dataclass(frozen=True)
class Settings:
    """The effective configuration. `select=None` means every rule."""

    select: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    strict: bool = False
    # Build code architectures with Keras to read the configs and graph their files do not store.
    build: bool = False
    severity_overrides: tuple[tuple[str, Severity], ...] = ()
    # (glob on the layer path, codes ignored for layers matching it)
    per_layer_ignores: tuple[tuple[str, frozenset[str]], ...] = ()
    # (glob on the model path relative to `root`, codes ignored in the models matching it)
    per_file_ignores: tuple[tuple[str, frozenset[str]], ...] = ()
    # (glob on the model path, severity overrides for the models matching it), in config order:
    # the last matching entry that names a code wins over earlier ones and over `severity`.
    per_file_severity: tuple[tuple[str, tuple[tuple[str, Severity], ...]], ...] = ()
    # (glob on the model path, `strict` for the models matching it); the last match wins. Empty
    # when --strict/--no-strict was given: the command line decides for every model.
    per_file_strict: tuple[tuple[str, bool], ...] = ()
    # The config file's directory, which per-file-ignores globs are relative to; None: the
    # working directory.
    root: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    config_file: str | None = None  # where these came from, for messages
    # The baseline file of `check` (`baseline` in the config, resolved against the config's
    # directory; `--baseline` on the command line); None: no baseline.
    baseline: str | None = None

    @property
    def fail_severity(self) -> Severity:
        """The lowest severity that makes `bninspect check` fail."""
        return Severity.WARNING if self.strict else Severity.ERROR

    def enabled(self, code: str) -> bool:
        return (self.select is None or code in self.select) and code not in self.ignore

    def severity_for(self, code: str, severity: Severity, source: str | None = None) -> Severity:
        """`code`'s severity in the model at `source`: the last matching per-file-severity entry
        that names it, else `severity` in the config, else the rule's own."""
        if source is not None:
            for pattern, overrides in reversed(self.per_file_severity):
                found = _override(overrides, code)
                if found is not None and model_matches(source, pattern, self.root):
                    return found
        found = _override(self.severity_overrides, code)
        return severity if found is None else found

    def strict_for(self, source: str) -> bool:
        """`strict` for the model at `source`: the last matching per-file-strict entry, else the
        global one."""
        for pattern, strict in reversed(self.per_file_strict):
            if model_matches(source, pattern, self.root):
                return strict
        return self.strict

    def ignored_for_layer(self, code: str, layer: str | None) -> bool:
        if layer is None:
            return False
        return any(code in codes and fnmatch.fnmatchcase(layer, pattern)
                   for pattern, codes in self.per_layer_ignores)

    def suppression(self, finding: Finding) -> str | None:
        """The per-layer or per-file ignore that suppresses `finding` ("per-file-ignores
        'legacy/*'"), or None. (`select`/`ignore` deselect a rule everywhere: not a suppression.)"""
        if finding.layer is not None:
            for pattern, codes in self.per_layer_ignores:
                if finding.code in codes and fnmatch.fnmatchcase(finding.layer, pattern):
                    return f"per-layer-ignores {pattern!r}"
        for pattern, codes in self.per_file_ignores:
            if finding.code in codes and model_matches(finding.source, pattern, self.root):
                return f"per-file-ignores {pattern!r}"
        return None

    def apply(self, findings: Iterable[Finding]) -> tuple[Finding, ...]:
        """Drop deselected and per-layer/per-file-ignored findings; apply severity overrides.

        Static rules go through this in `run_static_rules`; the dynamic probes call it too.
        """
        return self.apply_tracked(findings)[0]

    def apply_tracked(self, findings: Iterable[Finding]) -> tuple[tuple[Finding, ...], tuple[Suppressed, ...]]:
        """`apply`, and the findings a per-layer or per-file ignore dropped, with which one."""
        kept = []
        suppressed = []
        for finding in findings:
            if not self.enabled(finding.code):
                continue
            by = self.suppression(finding) if (self.per_layer_ignores or self.per_file_ignores) else None
            if by is not None:
                suppressed.append(Suppressed(finding, by))
                continue
            severity = self.severity_for(finding.code, finding.severity, finding.source)
            kept.append(finding if severity == finding.severity else replace(finding, severity=severity))
        return tuple(kept), tuple(suppressed)

    def fails(self, finding: Finding) -> bool:
        lowest = Severity.WARNING if self.strict_for(finding.source) else Severity.ERROR
        return finding.severity.rank >= lowest.rank

    def with_overrides(self, select: Iterable[str] | None = None, ignore: Iterable[str] | None = None,
                       strict: bool | None = None, build: bool | None = None,
                       baseline: str | None = None) -> "Settings":
        """Command-line flags on top of the config, the way ruff layers them: a `--select`
        replaces the configured selection (and its ignores); `--ignore` adds to what is ignored.
        Raises SettingsError for unknown codes."""
        cli_select = _codes(select, "--select") if select else None
        cli_ignore = _codes(ignore, "--ignore") if ignore else frozenset()
        if cli_select is not None:
            updated = replace(self, select=cli_select, ignore=cli_ignore)
        else:
            updated = replace(self, ignore=self.ignore | cli_ignore)
        if strict is not None:  # --strict/--no-strict wins over the config, per-file entries too
            updated = replace(updated, per_file_strict=())
        return replace(updated, strict=self.strict if strict is None else strict,
                       build=self.build if build is None else build,
                       baseline=self.baseline if baseline is None else baseline)


def _override(overrides: tuple[tuple[str, Severity], ...], code: str) -> Severity | None:
    for overridden, severity in overrides:
        if overridden == code:
            return severity
    return None


@lru_cache(maxsize=4096)
def _relative_posix(absolute: str, root: str) -> str:
    # Cached on absolute paths: one relpath per model, not per finding and pattern.
    try:
        return Path(os.path.relpath(absolute, root)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(absolute).as_posix()


def model_matches(source: str, pattern: str, root: str | None) -> bool:
    """Whether a per-file-ignores (-severity, -strict) glob matches the model at `source`: on its path relative to
    `root` (None: the working directory), and for a glob without "/" also on its file name (as
    ruff matches "__init__.py"). A URL is matched as it is."""
    if "://" in source:
        relative = source
    else:
        relative = _relative_posix(os.path.abspath(source), root or os.getcwd())
    if fnmatch.fnmatchcase(relative, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(relative.rpartition("/")[2], pattern)


# --- rule selectors ---------------------------------------------------------------------------

def resolve_selector(selector: str) -> frozenset[str]:
    """Codes for one selector: a code ("BN001"), a name ("untrained-moving-stats"), a code prefix
    ("BN0", "BN10") or "ALL". Raises SettingsError for anything else."""
    from bninspect.rules.catalogue import RULES

    token = selector.strip()
    upper = token.upper()
    if upper == "ALL":
        return frozenset(rule.code for rule in RULES)
    for rule in RULES:
        if upper == rule.code or token.lower() == rule.name:
            return frozenset({rule.code})
    if re.fullmatch(r"BN\d{0,2}", upper):
        matched = frozenset(rule.code for rule in RULES if rule.code.startswith(upper))
        if matched:
            return matched
    raise SettingsError(f"unknown rule {selector!r} (see `bninspect rules`)")


def _codes(selectors: Iterable[str], where: str) -> frozenset[str]:
    """Codes for a list of selectors; each entry may itself be comma-separated ("BN001,BN003")."""
    if isinstance(selectors, str):
        selectors = [selectors]
    codes: set[str] = set()
    for entry in selectors:
        if not isinstance(entry, str):
            raise SettingsError(f"{where}: expected rule codes or names, got {entry!r}")
        for token in entry.split(","):
            if token.strip():
                try:
                    codes |= resolve_selector(token)
                except SettingsError as error:
                    raise SettingsError(f"{where}: {error}") from None
    return frozenset(codes)


# --- reading the config -----------------------------------------------------------------------

def _toml_module():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # the same parser, backported for Python 3.10
    except ImportError:
        return None
    return tomli


def _read_toml(path: Path) -> dict:
    toml = _toml_module()
    if toml is None:
        raise SettingsError(f"{path}: reading TOML on Python 3.10 needs the 'tomli' package")
    try:
        with open(path, "rb") as handle:
            return toml.load(handle)
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the config ({error.strerror or error})") from None
    except toml.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML ({error})") from None


def _bninspect_table(document: dict) -> Any:
    tool = document.get("tool")
    return tool.get("bninspect") if isinstance(tool, dict) else None


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest pyproject.toml with a [tool.bninspect] table, from `start` upward."""
    directory = (start or Path.cwd()).resolve()
    for candidate_dir in (directory, *directory.parents):
        candidate = candidate_dir / "pyproject.toml"
        if candidate.is_file():
            if _bninspect_table(_read_toml(candidate)) is not None:
                return candidate
    return None


def load_settings(config_file: str | os.PathLike | None = None, start: Path | None = None) -> Settings:
    """Settings from `config_file`, or from the nearest pyproject.toml; defaults when there is none.

    An explicit file named pyproject.toml is read at [tool.bninspect]; any other file (e.g.
    bninspect.toml) holds the same keys at its top level.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"{path}: no such config file")
        document = _read_toml(path)
        table = _bninspect_table(document) if path.name == "pyproject.toml" else document
        return settings_from_table(table or {}, str(path))
    found = find_pyproject(start)
    if found is None:
        return Settings()
    return settings_from_table(_bninspect_table(_read_toml(found)), str(found))


def settings_from_table(table: Any, origin: str) -> Settings:
    """Validate a [tool.bninspect] table. Unknown keys are errors: a typo must not pass silently."""
    where = f"{origin} [tool.bninspect]"
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: must be a table")
    unknown = sorted(set(table) - set(TABLE_KEYS))
    if unknown:
        raise SettingsError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TABLE_KEYS)})")
    select = None
    if "select" in table:
        select = _codes(_string_list(table["select"], f"{where} select"), f"{where} select")
    ignore = _codes(_string_list(table.get("ignore", []), f"{where} ignore"), f"{where} ignore")
    strict = _bool(table.get("strict", False), f"{where} strict")
    build = table.get("build", False)
    if not isinstance(build, bool):
        raise SettingsError(f"{where} build: expected true or false, got {build!r}")
    return Settings(select=select, ignore=ignore, strict=strict, build=build,
                    baseline=_baseline(table.get("baseline"), origin, f"{where} baseline"),
                    severity_overrides=_severities(table.get("severity", {}), f"{where}.severity"),
                    per_layer_ignores=_pattern_ignores(table.get("per-layer-ignores", {}),
                                                     f"{where}.per-layer-ignores"),
                    per_file_ignores=_pattern_ignores(table.get("per-file-ignores", {}), f"{where}.per-file-ignores"),
                    per_file_severity=_pattern_severities(table.get("per-file-severity", {}),
                                                          f"{where}.per-file-severity"),
                    per_file_strict=tuple((pattern, _bool(value, f"{where}.per-file-strict {pattern!r}"))
                                          for pattern, value in _table(table.get("per-file-strict", {}),
                                                                       f"{where}.per-file-strict").items()),
                    root=str(Path(origin).resolve().parent),
                    thresholds=_thresholds(table.get("thresholds", {}), f"{where}.thresholds"),
                    config_file=origin)


def _baseline(value: Any, origin: str, where: str) -> str | None:
    """The baseline file, relative to the config file's directory (as ruff resolves its paths):
    the same file whatever directory `bninspect check` runs from."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(f"{where}: expected a file name, got {value!r}")
    return str(Path(origin).resolve().parent / value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SettingsError(f"{where}: expected a list of rule codes or names, got {value!r}")
    return value


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: must be a table, got {value!r}")
    return value


def _severities(value: Any, where: str) -> tuple[tuple[str, Severity], ...]:
    overrides: dict[str, Severity] = {}
    for key, level in _table(value, where).items():
        try:
            severity = Severity(str(level).lower())
        except ValueError:
            raise SettingsError(f"{where} {key}: severity must be error, warning or info, got {level!r}") from None
        for code in _codes([key], where):
            overrides[code] = severity
    return tuple(sorted(overrides.items()))


def _pattern_severities(value: Any, where: str) -> tuple[tuple[str, tuple[tuple[str, Severity], ...]], ...]:
    return tuple((pattern, _severities(overrides, f"{where} {pattern!r}"))
                 for pattern, overrides in _table(value, where).items())


def _pattern_ignores(value: Any, where: str) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((pattern, _codes(_string_list(codes, f"{where} {pattern!r}"), f"{where} {pattern!r}"))
                 for pattern, codes in _table(value, where).items())


def _thresholds(value: Any, where: str) -> Thresholds:
    known = {item.name: item for item in fields(Thresholds)}
    values: dict[str, float] = {}
    for key, number in _table(value, where).items():
        name = key.replace("-", "_")
        if name not in known:
            raise SettingsError(f"{where}: unknown threshold {key!r} (known: {', '.join(Thresholds.keys())})")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
            raise SettingsError(f"{where} {key}: expected a finite number >= 0, got {number!r}")
        values[name] = float(number)
    if values.get("min_momentum", 0.0) > 1.0:
        raise SettingsError(f"{where} min-momentum: Keras momentum is between 0 and 1, got {values['min_momentum']}")
    if values.get("unconverged_share", 0.0) > 1.0:
        raise SettingsError(f"{where} unconverged-share: a share of the initial values (0..1), "
                            f"got {values['unconverged_share']}")
    if values.get("drift_channel_fraction", 0.0) > 1.0:
        raise SettingsError(f"{where} drift-channel-fraction: a fraction of channels (0..1), "
                            f"got {values['drift_channel_fraction']}")
    if values.get("drift_variance_ratio", 1.0) < 1.0:
        raise SettingsError(f"{where} drift-variance-ratio: must be >= 1 (it is used as x and 1/x), "
                            f"got {values['drift_variance_ratio']}")
    return Thresholds(**values)
