"""Reports: figures of one search, and a table + Pareto plot over many runs.

python -m edmips report multirun/search/2026-01-01_12-00-00 outputs/retrain --out report/
"""

from edmips.report.collect import ReportError, Run, collect
from edmips.report.figures import write_search_figures
from edmips.report.summary import write_report

__all__ = ["Run", "ReportError", "collect", "write_report", "write_search_figures"]
