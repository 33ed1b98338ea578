"""Scan-rescan repeats: same anatomy and clinical values, new noise, pose and method errors,
optionally another site's scanner; declared by timepoint ``<visit>-rescan`` and ``repeat_of``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
from click.testing import CliRunner

from thaldask.synth import make_cohort, make_subject_table

REP = {"repeats": {"fraction": 0.5, "timepoints": ["baseline", "m12"], "other_site_fraction": 0.5}}


def test_subject_table_repeats_copy_their_visit_and_leave_visits_unchanged():
    plain = make_subject_table(40, seed=3)
    rep = make_subject_table(40, seed=3, params=REP)
    visits = rep[rep["repeat_of"] == ""].reset_index(drop=True)
    pd.testing.assert_frame_equal(visits, plain)
    r = rep[rep["repeat_of"] != ""]
    assert len(r) == 2 * 20  # half the subjects, at both listed visits
    assert set(r["timepoint"]) == {"baseline-rescan", "m12-rescan"}
    base = rep.set_index(["subject", "timepoint"])
    for row in r.itertuples():
        v = base.loc[(row.subject, row.repeat_of)]
        assert row.timepoint == f"{row.repeat_of}-rescan"
        for c in ("thalamus_total_mm3", "years_since_baseline", "edss", "sdmt", "age", "group"):
            assert (getattr(row, c) == v[c]) or (pd.isna(getattr(row, c)) and pd.isna(v[c]))
        assert not row.has_gt
    # some repeats on the other site's scanner, the rest on their own
    moved = (r["site"].to_numpy() != base.loc[list(zip(r.subject, r.repeat_of))]["site"].to_numpy())
    assert 0 < moved.sum() < len(r)


def test_cohort_repeats_rendered_again_with_new_noise_pose_and_method_errors(tmp_path):
    params = {"repeats": {"fraction": 1.0, "other_site_fraction": 0.5}}
    c = make_cohort(tmp_path / "c", n_subjects=4, n_timepoints=1, shape="tiny", seed=2, params=params,
                    gt_fraction=1.0, progress=False)
    clin = pd.read_csv(c.clinical)
    assert list(clin.columns)[-1] == "repeat_of"
    assert clin["repeat_of"].fillna("").tolist() == ["", "baseline"] * 4
    man = pd.read_csv(c.manifest)
    rescans = man[man["timepoint"] == "baseline-rescan"]
    assert (rescans["method"] != "gt").all() and set(rescans["kind"]) == {"image", "mask"}
    truth = json.loads(c.truth.read_text())
    scans = {(s["subject"], s["timepoint"]): s for s in truth["scans"]}
    sites = {s["name"]: s for s in truth["sites"]}
    n_moved = 0
    for sub in clin["subject"].unique():
        a, b = scans[(sub, "baseline")], scans[(sub, "baseline-rescan")]
        assert b["repeat_of"] == "baseline"
        # same anatomy: the planted volume is the same, the rendered one within a voxel shell
        assert b["planted_thalamus_mm3"] == a["planted_thalamus_mm3"]
        assert abs(b["thalamus_mm3"]["total"] / a["thalamus_mm3"]["total"] - 1) < 0.03
        # the methods' errors are drawn again
        assert b["method_volume_mm3"]["first-sim/T1w"] != a["method_volume_mm3"]["first-sim/T1w"]
        assert b["voxel_mm"] == sites[b["site"]]["voxel_mm"]
        n_moved += a["site"] != b["site"]
        ia = nib.load(c.out / f"{sub}/ses-baseline/anat/{sub}_ses-baseline_T1w.nii.gz").get_fdata()
        ib = nib.load(c.out / f"{sub}/ses-baseline-rescan/anat/{sub}_ses-baseline-rescan_T1w.nii.gz").get_fdata()
        assert ia.shape != ib.shape or not np.allclose(ia, ib)
    assert n_moved == 2


def test_synth_cli_rescan_options(tmp_path):
    from thaldask.cli import main

    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "c"), "--subjects", "2", "--timepoints", "1",
                                    "--shape", "tiny", "--local", "--rescan-fraction", "1"])
    assert res.exit_code == 0, res.output
    clin = pd.read_csv(tmp_path / "c" / "clinical.csv")
    assert sorted(clin["timepoint"]) == ["baseline", "baseline", "baseline-rescan", "baseline-rescan"]
    assert "wrote 4 scans" in res.output
