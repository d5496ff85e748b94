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
from typing import Callable

from bninspect.baseline import BaselineResult
from bninspect.findings import Finding, Severity
from bninspect.report import ModelReport
from bninspect.untrusted import printable


def _finding_line(finding: Finding, known: bool = False) -> str:
    return printable(f"{finding.code} {finding.name} [{finding.severity.value}{', known' if known else ''}] "
                     f"{finding.layer or '(model)'}: {finding.message} (hint: {finding.hint})")


def _partition(findings, fails: Callable[[Finding], bool], baseline: BaselineResult | None):
    """(failing, passing, known) findings, in one pass (a dict lookup each for the baseline)."""
    failing: list[Finding] = []
    passing: list[Finding] = []
    known: list[Finding] = []
    for finding in findings:
        if baseline is not None and baseline.is_known(finding):
            known.append(finding)
        elif fails(finding):
            failing.append(finding)
        else:
            passing.append(finding)
    return failing, passing, known


def render(reports: list[ModelReport], fail_severity: Severity = Severity.ERROR,
           baseline: BaselineResult | None = None, fails: Callable[[Finding], bool] | None = None) -> str:
    """With a `baseline`, its known findings never make a failure: they go to <system-out>,
    marked "known", as the exit status treats them. `fails` (`Settings.fails`, which knows the
    per-file strict settings) decides which findings fail; default: `fail_severity` and above."""
    fails = fails or (lambda finding: finding.severity.rank >= fail_severity.rank)
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
        failing, passing, known = _partition(report.findings, fails, baseline)
        if failing:
            failures += 1
            codes = ", ".join(sorted({f.code for f in failing}))
            element = ElementTree.SubElement(case, "failure", type=codes,
                                             message=f"{len(failing)} finding(s) at {fail_severity.value} "
                                                     f"or above: {codes}")
            element.text = "\n".join(_finding_line(f) for f in failing)
        if passing or known:
            lines = [_finding_line(f) for f in passing] + [_finding_line(f, known=True) for f in known]
            ElementTree.SubElement(case, "system-out").text = "\n".join(lines)
    for element in (suites, suite):
        element.set("tests", str(len(reports)))
        element.set("failures", str(failures))
        element.set("errors", str(errors))
    suite.set("skipped", "0")
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"
