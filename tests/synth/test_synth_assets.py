"""The shipped anatomy asset and its builder."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from thaldask.synth.anatomy import ANATOMY_DIR, list_templates, load_template
from thaldask.synth.build_assets import OTHER, build_assets


def test_anatomy_asset_small_attributed_and_plausible():
    files = sorted(ANATOMY_DIR.glob("anatomy_*.npz"))
    assert len(files) >= 4 and list_templates() == [f.stem for f in files]
    assert sum(f.stat().st_size for f in files) < 3e6
    note = (ANATOMY_DIR / "ATTRIBUTION.md").read_text()
    assert "SynthSeg" in note and "Apache License" in note
    assert "Apache License" in (ANATOMY_DIR / "LICENSE.txt").read_text()
    for i in range(len(files)):
        t = load_template(i)
        assert t.labels.dtype == np.uint8
        assert nib.aff2axcodes(t.affine) == ("R", "A", "S")
        assert t.icv_mm3 > 1.1e6 and t.icv_mm3 < 2.0e6  # adult intracranial volume, mm³
        assert all(4000 < v < 12000 for v in t.volume_mm3)
        assert not np.isin(t.labels, (10, 49)).any()  # filled; the thalamus comes from its SDT
        # left thalamus on the left (RAS: x < 0 relative to the midpoint)
        lo = t.box_lo[0] + np.argwhere(t.sdt[0] < 0).mean(axis=0)
        assert (t.affine[:3, :3] @ lo + t.affine[:3, 3])[0] < t.centre[0]


def test_build_assets_relabels_crops_and_is_deterministic(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = np.zeros((40, 40, 40), dtype=np.int32)
    data[10:30, 10:30, 10:30] = 2  # white matter
    data[12:16, 14:18, 14:18] = 10
    data[22:26, 14:18, 14:18] = 49
    data[8:10, 10:30, 10:30] = 507  # extra-cerebral
    data[30:32, 10:30, 10:30] = 25
    aff = np.array([[-1.0, 0, 0, 20], [0, 0, 1, -20], [0, -1, 0, 20], [0, 0, 0, 1]])  # LIA
    nib.save(nib.Nifti1Image(data, aff), src / "training_seg_01.nii.gz")
    (p,) = build_assets(src, tmp_path / "a", maps=(1,))
    (q,) = build_assets(src, tmp_path / "b", maps=(1,))
    assert p.read_bytes() == q.read_bytes()
    with np.load(p) as z:
        lab, a = z["labels"], z["affine"]
        assert lab.dtype == np.uint8
        assert set(np.unique(lab).tolist()) == {0, 2, 10, 49, OTHER, 100}
        assert nib.aff2axcodes(a) == ("R", "A", "S")
        assert lab.shape[0] < 40  # cropped to the head
        assert float(z["icv_mm3"]) == float(((data == 2) | (data == 10) | (data == 49)).sum())
        # the world position of the left thalamus is unchanged by reorientation and cropping
        ijk = np.argwhere(lab == 10).mean(axis=0)
        w = a[:3, :3] @ ijk + a[:3, 3]
        w0 = aff[:3, :3] @ np.argwhere(data == 10).mean(axis=0) + aff[:3, 3]
        assert np.allclose(w, w0)
