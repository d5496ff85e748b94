"""Reporter details that the CLI tests do not reach: escaping, model-level findings, URIs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from bninspect.findings import Finding, Severity
from bninspect.report import ModelReport
from bninspect.reporters import check_text, github, junit, sarif
from bninspect.untrusted import github_data, github_property


def _finding(code="BN005", name="collapsed-variance", severity=Severity.WARNING, layer="block/bn",
             message="2 of 4 channels have moving variance below epsilon 0.001 (min 0)", source="m.h5"):
    return Finding(code=code, name=name, severity=severity, source=source, layer=layer, message=message,
                   hint="fix it")


def _report(*findings, source="m.h5", error=None):
    return ModelReport(source=source, description=None, findings=tuple(findings), error=error)


def test_github_escapes_data_and_properties():
    # A CR or LF can only come from a name in the file: shown as an escape, like every control character.
    assert github_data("100% done\r\nnext") == "100%25 done\\x0d\\x0anext"
    assert github_property("a:b,c%\n") == "a%3Ab%2Cc%25\\x0a"
    finding = _finding(message="line one\nline: two, 50%", source="dir,1/m:odel.h5")
    (line,) = github.render([_report(finding, source="dir,1/m:odel.h5")]).splitlines()
    assert line.startswith("::warning file=dir%2C1/m%3Aodel.h5,title=BN005 collapsed-variance::")
    assert "line one\\x0aline: two, 50%25" in line


def test_github_severity_commands_and_model_level_finding():
    findings = [_finding(severity=Severity.ERROR), _finding(severity=Severity.INFO, layer=None, message="whole model")]
    lines = github.render([_report(*findings)]).splitlines()
    assert lines[0].startswith("::error ") and "::block/bn: " in lines[0]
    assert lines[1].startswith("::notice ") and lines[1].split("::")[2].startswith("whole model")


def test_sarif_model_level_finding_has_no_logical_location_and_absolute_paths_are_uris(tmp_path):
    path = str(tmp_path / "a b.h5")
    document = sarif.document([_report(_finding(layer=None, source=path), source=path)])
    (result,) = document["runs"][0]["results"]
    location = result["locations"][0]
    assert "logicalLocations" not in location
    uri = location["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.startswith("file://") and uri.endswith("a%20b.h5")
    assert document["runs"][0]["invocations"][0]["executionSuccessful"] is True
    json.dumps(document)  # serialisable


def test_sarif_relative_path_stays_relative():
    assert sarif.artifact_uri(str(Path("models") / "m 1.h5")) == "models/m%201.h5"


def test_sarif_uri_of_a_model_read_from_a_url_is_that_url_without_its_secrets():
    assert sarif.artifact_uri("s3://bucket/models/m.keras") == "s3://bucket/models/m.keras"
    assert (sarif.artifact_uri("https://user:pw@host/models/m 1.h5?X-Amz-Signature=abc&v=2")
            == "https://user:***@host/models/m%201.h5?X-Amz-Signature=***&v=2")


def test_junit_counts_and_xml_escaping():
    reports = [_report(_finding(severity=Severity.ERROR, message="a < b & c"), source="x.h5"),
               _report(source="ok.h5"), _report(source="bad.h5", error="truncated <file>")]
    root = ElementTree.fromstring(junit.render(reports))
    assert root.get("tests") == "3" and root.get("failures") == "1" and root.get("errors") == "1"
    failure = root.find("testsuite/testcase[@name='x.h5']/failure")
    assert "a < b & c" in failure.text and failure.get("type") == "BN005"
    assert root.find("testsuite/testcase[@name='bad.h5']/error").get("message") == "truncated <file>"


def test_check_text_lists_findings_and_summary():
    text = check_text.render([_report(_finding(severity=Severity.ERROR)), _report(source="bad.h5", error="broken")],
                             fail_severity=Severity.ERROR, exit_code=2)
    assert "BN005 error   block/bn: 2 of 4 channels" in text
    assert "bad.h5  unreadable: broken" in text
    assert "2 models checked: 1 error, 0 warnings, 0 infos, 1 unreadable" in text and "FAILED" in text
