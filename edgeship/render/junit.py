"""``junit.xml``: one test case per gate × engine, and one for the release verdict, so CI dashboards show the gates.

It says what the exit code says: failures and errors appear exactly when the release fails. For a required engine, a
failed gate is a ``<failure>``, a build or run that failed is an ``<error>`` on each of its gates and a skip is a
``<failure>`` on each (a required engine that was never measured cannot pass). An engine that is not required is
reported but never fails the file: its failed gates and problems are ``<skipped>`` with what happened. The
``release`` suite's one case fails with the release's reasons (nothing qualified, a run that never finished, the
failing engines), so a release with no engine rows still fails on a dashboard.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from edgeship.gates import format_value
from edgeship.qualification import EngineRow, GateResult, Release, Report


def render_junit(report: Report) -> str:
    suites = ET.Element("testsuites", name=f"edgeship release gates · {report.run_id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for row in report.engines:
        suite = ET.SubElement(suites, "testsuite", name=row.name, timestamp=report.created)
        properties = ET.SubElement(suite, "properties")
        for key, value in (("backend", row.backend), ("precision", row.precision), ("status", row.status),
                           ("verdict", str(row.verdict)), ("required", str(row.required).lower())):
            ET.SubElement(properties, "property", name=key, value=value)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for gate in row.gates:
            case = ET.SubElement(suite, "testcase", classname=f"edgeship.{row.name.replace('/', '.')}", name=gate.gate, time="0")
            counts["tests"] += 1
            outcome = _case(case, row, gate)
            if outcome:
                counts[outcome] += 1
        _totals(suite, counts, totals)
    _totals(_release_suite(suites, report.release, report.created), _release_counts(report.release), totals)
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _case(case: ET.Element, row: EngineRow, gate: GateResult) -> str:
    """Write one gate's outcome for one engine into ``case``; returns the counter it adds to ("" for a pass)."""
    text = _describe(gate)
    measured = row.verdict in ("pass", "fail")
    if not row.required and (gate.outcome == "fail" or not measured):
        what = f"fails: {text}" if gate.outcome == "fail" else f"{row.status}: {row.reason or 'no result'}"
        ET.SubElement(case, "skipped", message=f"not required (gates.required), {what}")
        return "skipped"
    if gate.outcome == "fail":
        ET.SubElement(case, "failure", message=text, type="GateFailed").text = gate.detail
        return "failures"
    if not measured and row.verdict == "skipped":
        ET.SubElement(case, "failure", message=f"required engine skipped: {row.reason}", type="RequiredSkipped").text = gate.detail
        return "failures"
    if not measured:
        ET.SubElement(case, "error", message=gate.detail, type=row.status).text = row.reason or ""
        return "errors"
    if gate.outcome == "not-applicable":
        ET.SubElement(case, "skipped", message=gate.detail)
        return "skipped"
    ET.SubElement(case, "system-out").text = text
    return ""


def _release_suite(suites: ET.Element, release: Release, created: str) -> ET.Element:
    suite = ET.SubElement(suites, "testsuite", name="release", timestamp=created)
    properties = ET.SubElement(suite, "properties")
    for key, value in (("exit_code", str(release.exit_code)), ("required", ", ".join(release.required)),
                       ("finished", str(release.finished).lower())):
        ET.SubElement(properties, "property", name=key, value=value)
    case = ET.SubElement(suite, "testcase", classname="edgeship.release", name="release verdict", time="0")
    if release.passed:
        ET.SubElement(case, "system-out").text = f"every one of {len(release.required)} required engines passed"
    else:
        ET.SubElement(case, "failure", message="; ".join(release.reasons), type="ReleaseFailed").text = "\n".join(release.reasons)
    return suite


def _release_counts(release: Release) -> dict[str, int]:
    return {"tests": 1, "failures": 0 if release.passed else 1, "errors": 0, "skipped": 0}


def _totals(suite: ET.Element, counts: dict[str, int], totals: dict[str, int]) -> None:
    for key, value in counts.items():
        suite.set(key, str(value))
        totals[key] += value


def _describe(gate: GateResult) -> str:
    if gate.value is None:
        return f"{gate.title}: {gate.detail}"
    return f"{gate.title}: {format_value(gate.gate, gate.value)} (limit {format_value(gate.gate, gate.limit)}) — {gate.detail}"
