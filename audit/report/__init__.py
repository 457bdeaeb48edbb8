"""Reports of an audit: ``report.json`` (the contract), ``report.html`` and ``junit.xml``."""

from audit.report.build import SCHEMA, build_report, check_report, write_json
from audit.report.html import render_html, write_html
from audit.report.junit import write_junit

__all__ = ["SCHEMA", "build_report", "check_report", "render_html", "write_html", "write_json", "write_junit"]
