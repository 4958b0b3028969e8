"""Statistical reports of a results directory: HTML, LaTeX, stats.json and figures.

Reads run records only (``RESULTS/runs/*.json``), never live objects; never imports torch or Ray.

Example (it needs a results folder, so the doctests skip it):
    >>> from podbench.reports import build_report
    >>> build_report("results/quickstart", "results/quickstart/report")  # doctest: +SKIP
"""

from __future__ import annotations

from podbench.reports.analysis import MIN_BLOCKS, Analysis, analyse
from podbench.reports.build import build_report
from podbench.reports.records import METRICS, ResultsData, load_results

__all__ = [
    "METRICS",
    "MIN_BLOCKS",
    "Analysis",
    "ResultsData",
    "analyse",
    "build_report",
    "load_results",
]
