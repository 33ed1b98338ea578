"""Written cohorts: files, exact ground truth, planted effects and method signatures.

One 32-subject cohort (``shape="tiny"``, ground truth for every scan so that group and
atrophy effects can be measured on it) is rendered once on a LocalCluster with worker
processes and shared by the tests of this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from click.testing import CliRunner
from scipy import ndimage as ndi

from thaldask.cohort.labels import parse_labels, to_sides
from thaldask.synth import CLINICAL_COLUMNS, default_params, make_cohort

N = 32
ALL_GT = {
    "ground_truth": {"fraction_of_patients": 1.0, "include_controls": True, "timepoints": "all"}
}


@pytest.fixture(scope="module")
def client():
    from thaldask.cluster import get_client

    with get_client(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, client):
    out = tmp_path_factory.mktemp("synth") / "cohort"
    res = make_cohort(
        out,
        n_subjects=N,
        n_timepoints=2,
        n_sites=2,
        seed=7,
        shape="tiny",
        client=client,
        params=ALL_GT,
        progress=False,
    )
    man = pd.read_csv(res.manifest, keep_default_na=False, dtype=str)
    truth = json.loads(res.truth.read_text())
    return res, man, truth


def _load(root: Path, rel: str):
    img = nib.load(str(root / rel))
    return np.asarray(img.dataobj), img.affine


def _on_grid(data, src_aff, dst_aff, dst_shape):
    """Nearest-neighbour resampling of ``data`` onto another grid (plain index arithmetic)."""
    M = np.linalg.inv(src_aff) @ dst_aff
    ijk = np.indices(dst_shape).reshape(3, -1).astype(np.float64)
    src = np.rint(M[:3, :3] @ ijk + M[:3, 3:4]).astype(int)
    ok = np.all((src >= 0) & (src < np.array(data.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=data.dtype)
    out[ok] = data[src[0, ok], src[1, ok], src[2, ok]]
    return out.reshape(dst_shape)


def _overlap(cohort):
    """Per scan, method and contrast: tp/fp/fn and volumes against the ground truth (numpy)."""
    res, man, truth = cohort
    rows = []
    for (sub, tp), g in man.groupby(["subject", "timepoint"]):
        gt_row = g[g.method == "gt"].iloc[0]
        gt, gaff = _load(res.out, gt_row.path)
        gt = gt > 0
        vvox = abs(np.linalg.det(gaff[:3, :3]))
        for r in g[(g.kind == "mask") & (g.method != "gt")].itertuples():
            data, aff = _load(res.out, r.path)
            sides = to_sides(data, r.labels)
            if sides.shape != gt.shape or not np.allclose(aff, gaff):
                sides = _on_grid(sides, aff, gaff, gt.shape)
            m = sides > 0
            rows.append(
                {
                    "subject": sub,
                    "timepoint": tp,
                    "site": r.site,
                    "method": r.method,
                    "contrast": r.contrast,
                    "tp": int((m & gt).sum()),
                    "fp": int((m & ~gt).sum()),
                    "fn": int((~m & gt).sum()),
                    "gt_mm3": gt.sum() * vvox,
                    "vol_mm3": m.sum() * vvox,
                }
            )
    df = pd.DataFrame(rows)
    df["dice"] = 2 * df.tp / (2 * df.tp + df.fp + df.fn)
    df["sensitivity"] = df.tp / (df.tp + df.fn)
    df["precision"] = df.tp / (df.tp + df.fp)
    df["vol_err_pct"] = 100 * (df.vol_mm3 - df.gt_mm3) / df.gt_mm3
    return df


@pytest.fixture(scope="module")
def overlap(cohort):
    return _overlap(cohort)


@pytest.mark.slow
def test_make_cohort_files_follow_manifest_and_clinical_contract(cohort):
    res, man, truth = cohort
    assert list(man.columns) == [
        "subject",
        "timepoint",
        "site",
        "kind",
        "contrast",
        "method",
        "labels",
        "path",
    ]
    assert all((res.out / p).is_file() for p in man.path)
    clin = pd.read_csv(res.clinical)
    assert list(clin.columns) == CLINICAL_COLUMNS
    assert len(clin) == 2 * N == res.n_scans
    img = man[man.kind == "image"]
    assert set(img.contrast) == {"T1w", "FLAIR", "R1"}
    assert len(img) == 3 * 2 * N
    masks = man[man.kind == "mask"]
    assert set(zip(masks.method, masks.contrast, strict=True)) == {
        ("gt", "T1w"),
        ("freesurfer-sim", "T1w"),
        ("first-sim", "T1w"),
        ("dbsegment-sim", "T1w"),
        ("mindglide-sim", "T1w"),
        ("mindglide-sim", "FLAIR"),
        ("mindglide-sim", "R1"),
    }
    for lab in masks.labels.unique():
        parse_labels(lab)
    # images of a scan share a grid; freesurfer-sim is an aseg on a larger LIA 1 mm grid
    r = man[(man.subject == "sub-001") & (man.timepoint == "baseline")].set_index(
        ["method", "contrast"]
    )
    t1 = nib.load(str(res.out / r.loc[("", "T1w"), "path"]))
    fl = nib.load(str(res.out / r.loc[("", "FLAIR"), "path"]))
    assert t1.shape == fl.shape and np.allclose(t1.affine, fl.affine)
    fs = nib.load(str(res.out / r.loc[("freesurfer-sim", "T1w"), "path"]))
    assert str(r.loc[("freesurfer-sim", "T1w"), "path"]).endswith("aseg.mgz")
    assert nib.aff2axcodes(fs.affine) == ("L", "I", "A")
    assert np.allclose(fs.header.get_zooms()[:3], 1.0)
    assert min(fs.shape) > max(t1.shape[k] * t1.header.get_zooms()[k] for k in range(3))
    aseg_ids = set(np.unique(np.asarray(fs.dataobj)).tolist())
    assert {10, 49, 2, 41} <= aseg_ids and len(aseg_ids) > 6
    db = np.asarray(nib.load(str(res.out / r.loc[("dbsegment-sim", "T1w"), "path"])).dataobj)
    assert set(np.unique(db).tolist()) <= {0, 24, 25, 26, 27, 30, 31}
    assert {24, 25} <= set(np.unique(db).tolist())
    # sites differ in voxel size
    vox = {s["site"]: tuple(s["voxel_mm"]) for s in truth["scans"]}
    assert len(set(vox.values())) == 2
    for key in ("params", "sites", "methods", "subjects", "scans"):
        assert truth[key]


@pytest.mark.slow
def test_make_cohort_gt_volumes_match_truth_json(cohort):
    res, man, truth = cohort
    by_scan = {(s["subject"], s["timepoint"]): s for s in truth["scans"]}
    gts = man[man.method == "gt"]
    assert len(gts) == 2 * N
    for r in gts.itertuples():
        data, aff = _load(res.out, r.path)
        vvox = abs(np.linalg.det(aff[:3, :3]))
        want = by_scan[(r.subject, r.timepoint)]["thalamus_mm3"]
        assert (data == 1).sum() * vvox == pytest.approx(want["left"], rel=1e-9)
        assert (data == 2).sum() * vvox == pytest.approx(want["right"], rel=1e-9)
        assert data.sum() > 0
    # the realised volumes follow the planted ones up to voxel discretisation
    ratio = np.array(
        [s["thalamus_mm3"]["total"] / s["planted_thalamus_mm3"]["total"] for s in truth["scans"]]
    )
    assert abs(np.median(ratio) - 1) < 0.01 and ratio.std() < 0.02


@pytest.mark.slow
def test_make_cohort_group_difference_and_atrophy_recovered_from_gt_masks(cohort, overlap):
    res, man, truth = cohort
    p = default_params()
    gt = (
        overlap.drop_duplicates(["subject", "timepoint"]).set_index(["subject", "timepoint"]).gt_mm3
    )
    subj = pd.DataFrame(truth["subjects"]).set_index("subject")
    clin = pd.read_csv(res.clinical).set_index(["subject", "timepoint"])
    base = clin.xs("baseline", level="timepoint").copy()
    base["lv"] = np.log(gt.xs("baseline", level="timepoint") / subj.icv_mm3)
    base["patient"] = (base.group != "HC").astype(float)
    fit = smf.ols("lv ~ patient + age", data=base).fit()
    # planted: patients' mean log effect (group shares of the cohort)
    pats = subj[subj.group != "HC"].group
    planted = float(np.mean([p["groups"]["thalamus_effect_log"][g] for g in pats]))
    lo, hi = fit.conf_int(alpha=0.01).loc["patient"]
    assert lo < planted < hi and hi < 0.02
    # annualised atrophy from the ground-truth masks
    yrs = clin.xs("m12", level="timepoint").years_since_baseline
    rate = (gt.xs("m12", level="timepoint") / gt.xs("baseline", level="timepoint")) ** (1 / yrs) - 1
    err = rate - subj.atrophy_rate_per_year
    assert abs(err.mean()) < 3.3 * err.std() / np.sqrt(err.size) + 5e-4
    hc, pat = rate[subj.group == "HC"], rate[subj.group != "HC"]
    assert pat.mean() < hc.mean()
    for r, planted in ((hc, p["atrophy"]["control_rate"]), (pat, p["atrophy"]["patient_rate"])):
        se = np.sqrt(r.var() / r.size)
        assert abs(r.mean() - planted) < 3.3 * se + 5e-4, (r.mean(), planted, se)


@pytest.mark.slow
def test_make_cohort_simulated_methods_show_documented_signatures(overlap):
    t1 = (
        overlap[overlap.contrast == "T1w"]
        .groupby("method")[["dice", "sensitivity", "precision", "vol_err_pct"]]
        .mean()
    )
    # atlas methods: highest sensitivity, lowest precision, volume over-estimated
    for atlas in ("first-sim", "freesurfer-sim"):
        assert t1.loc[atlas, "sensitivity"] > t1.loc["dbsegment-sim", "sensitivity"]
        assert t1.loc[atlas, "sensitivity"] > t1.loc["mindglide-sim", "sensitivity"]
        assert t1.loc[atlas, "precision"] < t1.loc["dbsegment-sim", "precision"]
        assert t1.loc[atlas, "precision"] < t1.loc["mindglide-sim", "precision"]
        assert t1.loc[atlas, "vol_err_pct"] > 10
    # dbsegment-sim: highest Dice; mindglide-sim: most accurate volumes (smallest mean
    # absolute error per scan, and almost no bias)
    assert t1.dice.idxmax() == "dbsegment-sim"
    abs_err = overlap[overlap.contrast == "T1w"].vol_err_pct.abs().groupby(overlap.method).mean()
    assert abs_err.idxmin() == "mindglide-sim"
    assert abs(t1.loc["mindglide-sim", "vol_err_pct"]) < 2.5
    # proportional bias: error grows with volume (freesurfer +, dbsegment -), not for first
    slope = {
        m: np.polyfit(g.gt_mm3, g.vol_mm3 - g.gt_mm3, 1)[0]
        for m, g in overlap[overlap.contrast == "T1w"].groupby("method")
    }
    assert slope["freesurfer-sim"] > 0.1 and slope["dbsegment-sim"] < -0.05
    assert abs(slope["first-sim"]) < slope["freesurfer-sim"]
    # mindglide-sim by contrast: R1 sharper than T1w, FLAIR roughest
    mg = overlap[overlap.method == "mindglide-sim"].groupby("contrast").dice.mean()
    assert mg["R1"] > mg["T1w"] > mg["FLAIR"]
    # a site shifts measured volumes
    site = overlap[overlap.method == "mindglide-sim"].groupby("site").vol_err_pct.mean()
    assert site["site-2"] - site["site-1"] > 1.0


@pytest.mark.slow
def test_make_cohort_r1_thalamus_values_in_range(cohort):
    res, man, _ = cohort
    for _, g in list(man.groupby(["subject", "timepoint"]))[:12]:
        r1, _ = _load(res.out, g[(g.kind == "image") & (g.contrast == "R1")].path.iloc[0])
        gt, _ = _load(res.out, g[g.method == "gt"].path.iloc[0])
        core = ndi.binary_erosion(gt > 0, iterations=2)
        assert 0.78 <= float(np.median(r1[core])) <= 0.97


def _digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_make_cohort_same_seed_same_bytes_serial_or_parallel(tmp_path, client):
    kw = dict(n_subjects=3, n_timepoints=1, n_sites=2, shape="tiny", progress=False)
    a = make_cohort(tmp_path / "a", seed=11, **kw)
    b = make_cohort(tmp_path / "b", seed=11, client=client, **kw)
    c = make_cohort(tmp_path / "c", seed=12, **{**kw, "n_subjects": 1})
    da, db, dc = _digest(a.out), _digest(b.out), _digest(c.out)
    assert da == db and len(da) > 20
    assert da["truth.json"] != dc["truth.json"]
    assert (
        da["sub-001/ses-baseline/anat/sub-001_ses-baseline_T1w.nii.gz"]
        != dc["sub-001/ses-baseline/anat/sub-001_ses-baseline_T1w.nii.gz"]
    )


def test_synth_cli_writes_cohort_and_rejects_bad_shape(tmp_path):
    from thaldask.cli import main

    r = CliRunner().invoke(
        main,
        [
            "synth",
            "--out",
            str(tmp_path / "o"),
            "--subjects",
            "1",
            "--timepoints",
            "1",
            "--sites",
            "1",
            "--seed",
            "3",
            "--shape",
            "tiny",
            "--local",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 1 scans" in r.output
    man = pd.read_csv(tmp_path / "o" / "manifest.csv", keep_default_na=False)
    assert (man.kind == "image").sum() == 3
    r = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "p"), "--shape", "huge"])
    assert r.exit_code == 2


def test_make_cohort_unknown_shape_raises_config_error(tmp_path):
    from thaldask.errors import ConfigError

    with pytest.raises(ConfigError, match="shape 'huge'"):
        make_cohort(tmp_path, n_subjects=1, shape="huge", progress=False)


@pytest.mark.slow
def test_make_cohort_r1_own_grid_ingests_with_exact_gt_volume(tmp_path, client):
    from thaldask.store import ingest, open_store

    res = make_cohort(
        tmp_path / "c",
        n_subjects=2,
        n_timepoints=1,
        n_sites=1,
        seed=5,
        shape="tiny",
        params={"contrasts": {"r1": {"voxel_mm": [1.5, 1.5, 1.5]}}, **ALL_GT},
        progress=False,
    )
    man = pd.read_csv(res.manifest, keep_default_na=False, dtype=str)
    r1 = nib.load(str(res.out / man[man.contrast.eq("R1") & man.kind.eq("image")].path.iloc[0]))
    t1 = nib.load(str(res.out / man[man.contrast.eq("T1w") & man.kind.eq("image")].path.iloc[0]))
    assert np.allclose(r1.header.get_zooms(), 1.5) and r1.shape != t1.shape
    truth = json.loads(res.truth.read_text())
    report = ingest(
        res.manifest,
        str(tmp_path / "st.zarr"),
        clinical=res.clinical,
        client=client,
        progress=False,
    )
    assert (report.status == "written").all(), report[report.status != "written"]
    st = open_store(str(tmp_path / "st.zarr"))
    assert st.n_scans == 2 and "R1" in st.contrasts
    assert ("freesurfer-sim", "T1w") in st.methods and ("mindglide-sim", "R1") in st.methods
    for i, row in st.scans.iterrows():
        want = next(s for s in truth["scans"] if s["subject"] == row.subject)["thalamus_mm3"]
        gt = st.load_mask("gt", "T1w", i)
        vvox = float(np.prod(st.spacing[i]))
        assert (gt == 1).sum() * vvox == pytest.approx(want["left"], rel=1e-6)
        assert (gt == 2).sum() * vvox == pytest.approx(want["right"], rel=1e-6)
        # the resampled R1 map keeps thalamic values in range on the T1w grid
        r1_img = st.load_image("R1", i)
        core = ndi.binary_erosion(gt > 0, iterations=2)
        assert 0.78 <= float(np.median(r1_img[core])) <= 0.97


def test_make_cohort_failure_rate_drops_one_side(tmp_path):
    res = make_cohort(
        tmp_path / "f",
        n_subjects=1,
        n_timepoints=2,
        n_sites=1,
        seed=2,
        shape="tiny",
        params={"methods": {"dbsegment-sim": {"failure_rate": 1.0}}},
        progress=False,
    )
    man = pd.read_csv(res.manifest, keep_default_na=False, dtype=str)
    for rel in man[man.method == "dbsegment-sim"].path:
        sides = to_sides(np.asarray(nib.load(str(res.out / rel)).dataobj), "dbsegment")
        assert len(set(np.unique(sides).tolist()) - {0}) == 1
    for rel in man[man.method == "first-sim"].path:  # the others are untouched
        sides = to_sides(np.asarray(nib.load(str(res.out / rel)).dataobj), "first")
        assert set(np.unique(sides).tolist()) == {0, 1, 2}


@pytest.mark.slow
def test_make_cohort_planted_proportional_bias_recovered_by_bland_altman(overlap):
    """The statistics stage finds proportional bias where synth plants it, not elsewhere."""
    from thaldask.stats import bland_altman

    base = overlap[(overlap.contrast == "T1w") & (overlap.timepoint == "baseline")]
    found = {}
    for method, g in base.groupby("method"):
        assert len(g) == N  # one baseline scan per subject
        ba = bland_altman(g.vol_mm3.to_numpy(), g.gt_mm3.to_numpy())
        found[method] = (ba["prop_slope"], ba["prop_p"])
    # planted: freesurfer-sim's error grows with volume, dbsegment-sim's shrinks
    assert found["freesurfer-sim"][1] < 0.05 and found["freesurfer-sim"][0] > 0
    assert found["dbsegment-sim"][1] < 0.05 and found["dbsegment-sim"][0] < 0
    # not planted: mindglide-sim and first-sim
    assert found["mindglide-sim"][1] > 0.05
    assert found["first-sim"][1] > 0.05
