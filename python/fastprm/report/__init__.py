"""Tables, figures (:mod:`fastprm.report.plots`, needs matplotlib) and the HTML report of eval outputs."""

from .html import load_metrics, render_report, write_report
from .tables import Table, metrics_tables, text_table

__all__ = ["Table", "load_metrics", "metrics_tables", "render_report", "text_table", "write_report"]
