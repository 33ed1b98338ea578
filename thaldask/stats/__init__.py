"""Statistical stage: agreement with ground truth, method comparison, clinical associations
(cross-sectional and longitudinal) and ComBat harmonisation.

Only this subpackage imports statsmodels (lazily, inside the functions that fit mixed models).
"""

from thaldask.stats.agreement import bland_altman, fit_agreement, icc_a1, lin_ccc
from thaldask.stats.clinical import adjust_head_size, fit_clinical
from thaldask.stats.combat import CombatModel, apply_combat, fit_combat, harmonise
from thaldask.stats.comparison import fit_method_comparison
from thaldask.stats.longitudinal import annualised_change, edss_worsening, fit_longitudinal
from thaldask.stats.multitest import fdr_bh, holm, p_adjust
from thaldask.stats.run import (
    headline_findings,
    load_stats_config,
    run_stats,
    table_to_xarray,
    tables_to_dataset,
    write_stats,
)

__all__ = [
    "fit_agreement",
    "fit_method_comparison",
    "fit_clinical",
    "fit_longitudinal",
    "fit_combat",
    "apply_combat",
    "harmonise",
    "CombatModel",
    "run_stats",
    "write_stats",
    "headline_findings",
    "load_stats_config",
    "tables_to_dataset",
    "table_to_xarray",
    "bland_altman",
    "icc_a1",
    "lin_ccc",
    "adjust_head_size",
    "annualised_change",
    "edss_worsening",
    "fdr_bh",
    "holm",
    "p_adjust",
]
