"""``junit.xml``: one test case per gate × engine, so CI dashboards show the release gates.

A failed gate is a ``<failure>``; a gate left without a limit, or an engine skipped for a missing
backend, is ``<skipped>``; an engine that failed to build or run is an ``<error>`` on each of its gates
(never a pass). Each suite is one engine; its properties hold the verdict and whether it is required.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from edgeship.gates import format_value


def render_junit(report: Mapping[str, Any]) -> str:
    suites = ET.Element("testsuites", name=f"edgeship release gates · {report['run_id']}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for row in report.get("engines", []):
        suite = ET.SubElement(suites, "testsuite", name=row["name"], timestamp=report.get("created", ""))
        properties = ET.SubElement(suite, "properties")
        for key in ("backend", "precision", "status", "verdict", "required"):
            ET.SubElement(properties, "property", name=key, value=str(row.get(key)).lower() if key == "required" else str(row.get(key)))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for gate in row.get("gates", []):
            case = ET.SubElement(suite, "testcase", classname=f"edgeship.{row['name'].replace('/', '.')}", name=gate["gate"], time="0")
            counts["tests"] += 1
            text = _describe(gate)
            if gate["outcome"] == "fail":
                ET.SubElement(case, "failure", message=text, type="GateFailed").text = gate["detail"]
                counts["failures"] += 1
            elif gate["outcome"] == "not-applicable" and row.get("verdict") == "error":
                ET.SubElement(case, "error", message=gate["detail"], type=str(row.get("status"))).text = row.get("reason") or ""
                counts["errors"] += 1
            elif gate["outcome"] == "not-applicable":
                ET.SubElement(case, "skipped", message=gate["detail"])
                counts["skipped"] += 1
            else:
                ET.SubElement(case, "system-out").text = text
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _describe(gate: Mapping[str, Any]) -> str:
    if gate["value"] is None:
        return f"{gate['title']}: {gate['detail']}"
    value, limit = format_value(gate["gate"], gate["value"]), format_value(gate["gate"], gate["limit"])
    return f"{gate['title']}: {value} (limit {limit}) — {gate['detail']}"
