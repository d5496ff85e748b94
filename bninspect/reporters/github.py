"""GitHub Actions workflow commands: one `::error` / `::warning` / `::notice` line per finding,
so findings show up as annotations on the run and the pull request.

Escaping follows the runner's rules: in the message `%`, CR and LF are escaped; in properties
(`file=`, `title=`) also `:` and `,`.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from bninspect.findings import Severity
from bninspect.report import ModelReport

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _line(command: str, file: str, title: str, message: str) -> str:
    return f"::{command} file={escape_property(file)},title={escape_property(title)}::{escape_data(message)}"


def render(reports: list[ModelReport]) -> str:
    lines = []
    for report in reports:
        if report.error is not None:
            lines.append(_line("error", report.source, "unreadable model", report.error))
            continue
        for finding in report.findings:
            where = f"{finding.layer}: " if finding.layer else ""
            lines.append(_line(COMMANDS[finding.severity], report.source, f"{finding.code} {finding.name}",
                               f"{where}{finding.message} (hint: {finding.hint})"))
    return "".join(line + "\n" for line in lines)
