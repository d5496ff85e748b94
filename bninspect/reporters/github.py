"""GitHub Actions workflow commands: one `::error` / `::warning` line per finding and one
`::notice` per model and code for the infos, so findings show up as annotations on the run and
the pull request, the ones that matter first.

Escaping follows the runner's rules (`bninspect.untrusted.github_data` / `github_property`): in
the message `%`, CR and LF are escaped; in properties (`file=`, `title=`) also `:` and `,`; and
control characters in file and layer names are shown as escapes (`\\x1b`), so every line this
writes is exactly one workflow command.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from bninspect.baseline import BaselineResult
from bninspect.findings import Severity
from bninspect.report import ModelReport
from bninspect.reporters.grouping import group_findings
from bninspect.untrusted import github_data, github_property

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _line(command: str, file: str, title: str, message: str) -> str:
    return f"::{command} file={github_property(file)},title={github_property(title)}::{github_data(message)}"


def render(reports: list[ModelReport], group_infos: bool = True, baseline: BaselineResult | None = None) -> str:
    """Unreadable models, errors and warnings first, one line each; then the infos, one notice per
    model and code when `group_infos` (GitHub shows only the first annotations of a step, so 121
    "frozen-bn" notices must not push a warning out of sight).

    With a `baseline`, findings it knows are notices titled "known" (accepted: they must not look
    like what fails the run), and a last notice says "N known, M new" and what was fixed."""
    important: list[str] = []
    notices: list[str] = []
    for report in reports:
        if report.error is not None:
            important.append(_line("error", report.source, "unreadable model", report.error))
            continue
        for finding in report.findings:
            known = baseline is not None and baseline.is_known(finding)
            if finding.severity is Severity.INFO and group_infos:
                continue
            lines = notices if finding.severity is Severity.INFO or known else important
            where = f"{finding.layer}: " if finding.layer else ""
            lines.append(_line("notice" if known else COMMANDS[finding.severity], report.source,
                               f"{'known ' if known else ''}{finding.code} {finding.name}",
                               f"{where}{finding.message} (hint: {finding.hint})"))
        if group_infos:
            for group in group_findings(f for f in report.findings if f.severity is Severity.INFO):
                if group.count > 1:
                    where = f"{group.count} layers ({group.layers_text()}): "
                else:
                    where = f"{group.findings[0].layer}: " if group.findings[0].layer else ""
                notices.append(_line("notice", report.source, f"{group.code} {group.name}",
                                     f"{where}{group.message()} (hint: {group.hint})"))
    if baseline is not None:
        notices.append(_baseline_line(reports, baseline))
    return "".join(line + "\n" for line in important + notices)


def _baseline_line(reports: list[ModelReport], baseline: BaselineResult) -> str:
    known, new = baseline.counts(reports)
    fixed = "".join(f"; fixed: {baseline.fixed_path(entry)} {entry.layer or ''} {entry.code}".rstrip()
                    for entry in baseline.fixed)
    return (f"::notice title={github_property('bninspect baseline')}::"
            f"{github_data(f'{known} known, {new} new, {len(baseline.fixed)} fixed ({baseline.file}){fixed}')}")
