"""A validated manifest as an ingest job: its plan, the report's columns and the outcome of
each file.

The client keeps only the job while the tasks run: the headers and grids read by the
manifest's checks are in the plan once per scan, the report's manifest columns are a small
table indexed by row, and each task returns one :class:`Outcome` per file, from which
:func:`report_frame` builds the report at the end.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import pandas as pd

from thaldask._shared.paths import write_text
from thaldask.store.format import INGEST_REPORT
from thaldask.store.ingest_plan import IngestPlan, fill_sites, plan_ingest

__all__ = [
    "FILE_COLUMNS",
    "REPORT_COLUMNS",
    "Outcome",
    "IngestJob",
    "prepare_ingest",
    "flagged_outcomes",
    "report_frame",
    "write_report",
]

#: the manifest's columns of a report row (the rest is the file's :class:`Outcome`)
FILE_COLUMNS = ["subject", "timepoint", "kind", "contrast", "method", "path"]
REPORT_COLUMNS = ["row", *FILE_COLUMNS, "status", "resampled", "reason"]


class Outcome(NamedTuple):
    """What happened to one manifest file: a report row without the manifest's columns,
    which the report takes from the manifest by ``row`` (a task returns only this)."""

    row: int
    status: str  # written, skipped or failed ("deferred": redone once its array is re-encoded)
    resampled: bool = False
    reason: str = ""
    array: str = ""  # deferred files only: the array to re-encode


class IngestJob(NamedTuple):
    """A validated manifest reduced to what ingest needs once its plan is made."""

    files: pd.DataFrame  # the report's manifest columns, indexed by row
    failed: list[Outcome]  # files that failed their own checks
    warnings: list[str]
    plan: IngestPlan | None  # None: no usable file
    source: str  # the manifest's file name


def prepare_ingest(df: pd.DataFrame, clin) -> IngestJob:
    """Plan an ingest from a validated manifest. Only the job is kept while the tasks run:
    the headers and grids read by the checks are then in the plan, once per scan."""
    good = df[df["problem"] == ""]
    plan = None
    if len(good):
        good = good.copy()
        good.attrs.update(df.attrs)
        plan = plan_ingest(good)
        if clin is not None and "site" in clin.columns:
            plan = fill_sites(plan, clin)
    return IngestJob(files=df.set_index("row")[FILE_COLUMNS], failed=flagged_outcomes(df),
                     warnings=[w for w in df["warning"] if w], plan=plan,
                     source=os.path.basename(str(df.attrs.get("source", "manifest"))))


def flagged_outcomes(df: pd.DataFrame) -> list[Outcome]:
    """Outcomes of the manifest rows whose file failed its own checks."""
    out = []
    for r in df[df["problem"] != ""].itertuples(index=False):
        prefix = f"row {r.row}: {r.path!r}: "
        reason = r.problem.split(prefix, 1)[1] if prefix in r.problem else r.problem
        out.append(Outcome(int(r.row), "failed", False, reason))
    return out


def write_report(path: str, report: pd.DataFrame, storage_options=None) -> None:
    """Write ``report`` to ``STORE/ingest_report.csv`` (atomically)."""
    write_text(f"{path.rstrip('/')}/{INGEST_REPORT}", report.to_csv(index=False),
               storage_options=storage_options)


def report_frame(files: pd.DataFrame, outcomes: list[Outcome]) -> pd.DataFrame:
    """The ingest report in manifest row order: each file's manifest columns (``files``,
    indexed by row) beside its outcome."""
    out = pd.DataFrame(outcomes, columns=list(Outcome._fields)).sort_values("row", kind="stable")
    cols = files.loc[out["row"].to_numpy(), FILE_COLUMNS].reset_index(drop=True)
    report = pd.concat([out[["row"]].reset_index(drop=True), cols,
                        out[["status", "resampled", "reason"]].reset_index(drop=True)], axis=1)
    return report.astype({"row": int, "resampled": bool})[REPORT_COLUMNS]
