"""Renderings of a report document: JUnit XML for CI dashboards, the self-contained HTML page and its plots."""
