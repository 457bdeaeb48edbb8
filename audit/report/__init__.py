"""Reports of an audit: ``report.json`` (the contract; ``build`` owns every key), the files drawn once when the
campaign ends (``cases``), ``report.html`` rendered from those alone (``html``) and ``junit.xml``."""

from audit.report.build import SCHEMA, attach_dicom, build_report, check_report
from audit.report.cases import write_cases, write_nps_figure
from audit.report.html import render_html, render_report
from audit.report.junit import write_junit

__all__ = ["SCHEMA", "attach_dicom", "build_report", "check_report", "render_html", "render_report", "write_cases",
           "write_junit", "write_nps_figure"]
