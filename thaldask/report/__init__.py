"""Report stage: figures, visual QC montages and an offline HTML report.

>>> from thaldask.report import write_report  # doctest: +SKIP
>>> write_report("cohort.zarr", "report/")    # doctest: +SKIP
PosixPath('report/index.html')
"""

from thaldask.report.build import STATS_TABLES, build_report, load_stats, write_report
from thaldask.report.qc import plot_scan_qc, select_qc_cases, write_qc

__all__ = [
    "STATS_TABLES",
    "build_report",
    "load_stats",
    "plot_scan_qc",
    "select_qc_cases",
    "write_qc",
    "write_report",
]
