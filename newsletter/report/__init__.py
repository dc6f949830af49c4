"""What happened to each issue: the counts the state keeps, as one HTML page and CSV files.

model    the numbers: per issue, per story and link, per day (`build_report`)
charts   matplotlib figures as inline SVG
page     the self-contained HTML page (`render_html`), also shown under /admin/
tables   every table as CSV (`csv_tables`, `write_csv`)
"""

from __future__ import annotations

from newsletter.report.model import Report, ReportQuery, build_report
from newsletter.report.page import AdminChrome, render_html
from newsletter.report.tables import TABLES, csv_table, csv_tables, write_csv

__all__ = [
    "TABLES",
    "AdminChrome",
    "Report",
    "ReportQuery",
    "build_report",
    "csv_table",
    "csv_tables",
    "render_html",
    "write_csv",
]
