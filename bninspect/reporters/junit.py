"""JUnit XML for CI test views: one testsuite per run, one testcase per model file.

A model with findings at the failing severity gets a <failure> listing them; an unreadable model
gets an <error>; other findings go to <system-out> so they stay visible without failing.

File names, layer names and reasons pass through `printable`: XML 1.0 cannot hold most control
characters even as character references, so escaping `<` and `&` (ElementTree's part) is not
enough for the document to stay XML.

Layer: reporters (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from bninspect.findings import Finding, Severity
from bninspect.report import ModelReport
from bninspect.untrusted import printable


def _finding_line(finding: Finding) -> str:
    return printable(f"{finding.code} {finding.name} [{finding.severity.value}] {finding.layer or '(model)'}: "
                     f"{finding.message} (hint: {finding.hint})")


def render(reports: list[ModelReport], fail_severity: Severity = Severity.ERROR) -> str:
    failures = errors = 0
    suites = ElementTree.Element("testsuites", name="bninspect")
    suite = ElementTree.SubElement(suites, "testsuite", name="bninspect check")
    for report in reports:
        source = printable(report.source)
        case = ElementTree.SubElement(suite, "testcase", classname="bninspect", name=source, file=source)
        if report.error is not None:
            errors += 1
            reason = printable(report.error)
            element = ElementTree.SubElement(case, "error", message=reason, type="unreadable")
            element.text = f"{source}: {reason}"
            continue
        failing = [f for f in report.findings if f.severity.rank >= fail_severity.rank]
        passing = [f for f in report.findings if f.severity.rank < fail_severity.rank]
        if failing:
            failures += 1
            codes = ", ".join(sorted({f.code for f in failing}))
            element = ElementTree.SubElement(case, "failure", type=codes,
                                             message=f"{len(failing)} finding(s) at {fail_severity.value} "
                                                     f"or above: {codes}")
            element.text = "\n".join(_finding_line(f) for f in failing)
        if passing:
            ElementTree.SubElement(case, "system-out").text = "\n".join(_finding_line(f) for f in passing)
    for element in (suites, suite):
        element.set("tests", str(len(reports)))
        element.set("failures", str(failures))
        element.set("errors", str(errors))
    suite.set("skipped", "0")
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"
