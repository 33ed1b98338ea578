"""The method × contrast summary of a results dataset, as a rich table (printed by
``thaldask evaluate`` and the demo)."""

from __future__ import annotations

import numpy as np
from rich.table import Table

__all__ = ["summary_table"]


def summary_table(ds, title: str = "mean over scans (total thalamus)"):
    """Rich table: method × contrast with n, mean Dice, sensitivity, precision, HD95,
    volume bias vs ground truth (mm³ and %) and the count of empty masks."""
    t = Table(title=title)
    for col in ("method", "contrast", "n GT/all", "Dice", "sens.", "prec.", "HD95 mm", "vol. bias mm³", "bias %", "empty"):
        t.add_column(col, justify="left" if col in ("method", "contrast") else "right")
    tot = ds.sel(side="total")
    for m in tot.method.values:
        for c in tot.contrast.values:
            sub = tot.sel({"method": m, "contrast": c})
            n = int(np.isfinite(sub.volume_mm3.values).sum())
            if n == 0:
                continue
            n_gt = int(np.isfinite(sub.dice.values).sum())
            empty = int(np.nansum(sub.pred_empty.values))

            def f(v, fmt="{:.3f}"):
                v = np.asarray(v.values, float)
                return fmt.format(np.nanmean(v)) if np.isfinite(v).any() else "-"

            t.add_row(
                str(m), str(c), f"{n_gt}/{n}", f(sub.dice), f(sub.sensitivity), f(sub.precision),
                f(sub.hd95_mm, "{:.2f}"), f(sub.volume_diff_mm3, "{:+.0f}"), f(sub.volume_diff_pct, "{:+.1f}"),
                str(empty),
            )
    return t
