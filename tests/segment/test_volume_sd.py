"""A segmenter's own volume uncertainty: stored with the mask, in the results, flagged in QC."""

from __future__ import annotations

import numpy as np
import pytest

from thaldask.errors import StoreConflictError
from thaldask.metrics.evaluate import evaluate
from thaldask.segment.base import Prediction, Segmenter
from thaldask.segment.registry import register_segmenter
from thaldask.segment.stage import segment_store
from thaldask.stats.qc_flags import fit_qc_flags
from thaldask.store import open_store
from thaldask.testing import make_store


@register_segmenter(replace=True)
class NoiseAwareThreshold(Segmenter):
    """Thresholds the bright thalami of the test images; its uncertainty grows with the
    image noise (estimated from neighbouring-voxel differences), as a real model's does."""

    name = "threshold-sd"
    contrasts = ("T1w",)

    def load(self, device="auto"):
        self.device = "cpu"

    def predict(self, image, affine, *, contrast):
        thal = image > 115.0  # background 100, thalamus 130 (thaldask.testing)
        lab = np.zeros(image.shape, np.uint8)
        half = image.shape[0] // 2
        lab[:half][thal[:half]] = 1
        lab[half:][thal[half:]] = 2
        noise = np.median(np.abs(np.diff(image, axis=0))) / (0.6745 * np.sqrt(2))
        vox = float(abs(np.linalg.det(affine[:3, :3])))
        vols = np.array([(lab == 1).sum(), (lab == 2).sum()], float) * vox
        return Prediction(lab, volume_sd=vols * 0.2 * noise / 30.0)


@pytest.fixture()
def store(tmp_path):
    st, truth = make_store(tmp_path / "s.zarr", n_subjects=5, images=("T1w",))
    # scan 3 is very noisy
    img = st.load_image("T1w", 3)
    noisy = img + np.random.default_rng(1).normal(0, 25, img.shape).astype(np.float32)
    st.write_scan_array("images/T1w", 3, noisy, content_sha256=b"n" * 32, overwrite=True)
    return open_store(st.path)


def test_volume_sd_stored_with_mask_reaches_results_and_flags_the_noisy_scan(store):
    segment_store(store.path, "threshold-sd", ["T1w"], progress=False)
    st = open_store(store.path)
    sd = st.volume_sd("threshold-sd", "T1w")
    assert sd.shape == (st.n_scans, 2) and np.isfinite(sd).all() and (sd > 0).all()
    assert np.argmax(sd.sum(axis=1)) == 3  # the noisy scan is the uncertain one
    # other masks carry none
    assert np.isnan(st.volume_sd("a", "T1w")).all()
    ds = evaluate(st.path, progress=False, csv_path="")
    v = ds["volume_sd_mm3"].sel({"method": "threshold-sd", "contrast": "T1w"})
    s3, t3 = str(st.scans.subject[3]), str(st.scans.timepoint[3])
    np.testing.assert_allclose(v.sel(subject=s3, timepoint=t3).values, [*sd[3], sd[3].sum()], rtol=1e-6)
    f = fit_qc_flags(ds, options={"min_n": 5})
    u = f[f.flag == "model_uncertainty"]
    assert set(zip(u.subject, u.timepoint, strict=True)) == {(s3, t3)}
    assert (u.method == "threshold-sd").all()
    # the ratio that was flagged: SD over volume, from the stored numbers
    vol = ds["volume_mm3"].sel({"method": "threshold-sd", "contrast": "T1w", "subject": s3, "timepoint": t3})
    want = 100 * max(sd[3, 0] / float(vol.sel(side="left")), sd[3, 1] / float(vol.sel(side="right")))
    assert float(u.value.iloc[0]) == pytest.approx(want, rel=1e-5)


def test_volume_sd_follows_the_mask_it_belongs_to(store):
    st = store
    lab = st.load_mask("a", "T1w", 0)
    st.write_mask("m", "T1w", 0, lab, volume_sd=[10.0, 12.0])
    np.testing.assert_allclose(st.volume_sd("m", "T1w")[0], [10.0, 12.0])
    assert np.isnan(st.volume_sd("m", "T1w")[1:]).all()  # scans without the mask
    # a refused write (other content, no overwrite) leaves the stored mask's uncertainty
    with pytest.raises(StoreConflictError):
        st.write_mask("m", "T1w", 0, np.zeros_like(lab), volume_sd=[99.0, 99.0])
    np.testing.assert_allclose(st.volume_sd("m", "T1w")[0], [10.0, 12.0])
    # the same mask again: skipped, the new uncertainty recorded
    assert st.write_mask("m", "T1w", 0, lab, volume_sd=[11.0, 13.0]) == "skipped"
    np.testing.assert_allclose(st.volume_sd("m", "T1w")[0], [11.0, 13.0])
    # replaced by a mask without one: the old figure no longer describes it
    st.write_mask("m", "T1w", 0, np.zeros_like(lab), overwrite=True)
    assert np.isnan(st.volume_sd("m", "T1w")[0]).all()
    with pytest.raises(ValueError, match="volume_sd"):  # refused before anything is written
        st.write_mask("m", "T1w", 1, st.load_mask("a", "T1w", 1), volume_sd=[1.0, 2.0, 3.0])
    assert not st.has_mask("m", "T1w")[1]
