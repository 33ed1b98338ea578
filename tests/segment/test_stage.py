"""The segmentation stage on a real store with a real LocalCluster of worker processes."""


import nibabel as nib
import numpy as np
import pytest

from thaldask.thalnet.validate import crop_around_thalami, dice, render_scan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory, anatomy):
    from thaldask.store import ingest

    root = tmp_path_factory.mktemp("cohort")
    labels, affine = crop_around_thalami(*anatomy, size_mm=(96, 88, 80))
    rows = ["subject,timepoint,site,kind,contrast,method,labels,path"]
    for s, contrasts in (("s1", ("T1w", "FLAIR")), ("s2", ("T1w",))):
        for k, c in enumerate(contrasts):
            img, truth, aff = render_scan(labels, affine, c, rng=len(s) * 10 + k)
            nib.save(nib.Nifti1Image(img, aff), root / f"{s}_{c}.nii.gz")
            rows.append(f"{s},baseline,A,image,{c},,,{s}_{c}.nii.gz")
        nib.save(nib.Nifti1Image(truth, aff), root / f"{s}_gt.nii.gz")
        rows.append(f"{s},baseline,A,mask,T1w,gt,\"1,2\",{s}_gt.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    path = str(root / "cohort.zarr")
    ingest(str(root / "manifest.csv"), path, client=None, progress=False)
    return path


def test_segment_store_gpu_resource_on_cpu_worker_writes_and_resumes(store):
    from distributed import Client, LocalCluster

    from thaldask.segment import segment_store
    from thaldask.store import open_store

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, resources={"gpu": 1},
                      dashboard_address=None) as cluster, Client(cluster) as client:
        df = segment_store(store, "thalnet", ["T1w", "FLAIR"], ["T1w+FLAIR"], client=client,
                           device="cpu", require_gpu=True, progress=False)
        loads = client.run(lambda: __import__("thaldask.segment.registry", fromlist=["x"]).LOAD_COUNT)
        again = segment_store(store, "thalnet", ["T1w", "FLAIR"], ["T1w+FLAIR"], client=client,
                              device="cpu", require_gpu=True, progress=False)
    assert list(loads.values()) == [1]  # loaded once by the worker plugin, reused by every task
    ok = df.set_index(["subject", "method", "contrast"])["status"]
    assert (df["status"] == "written").all(), df
    assert set(ok.index) == {
        ("s1", "thalnet", "T1w"), ("s1", "thalnet", "FLAIR"), ("s2", "thalnet", "T1w"),
        ("s1", "thalnet", "T1w+FLAIR"), ("s1", "thalnet-vote", "T1w+FLAIR"),
    }
    assert again.empty  # resume: nothing left to do
    st = open_store(store)
    assert st.has_mask("thalnet", "T1w").all()
    assert st.has_mask("thalnet", "T1w+FLAIR").tolist() == [True, False]
    i = 0
    mask = st.load_mask("thalnet", "T1w+FLAIR", i)
    gt = st.load_mask("gt", "T1w", i)
    assert mask.shape == tuple(st.shapes[i])
    assert st.load_prob("thalnet", "T1w", i).shape == (2, *st.shapes[i])
    assert np.isin(gt, (1, 2)).any()
    assert min(dice(mask, gt, 1), dice(mask, gt, 2)) > 0.6
    vote = st.load_mask("thalnet-vote", "T1w+FLAIR", i)
    t1, fl = st.load_mask("thalnet", "T1w", i), st.load_mask("thalnet", "FLAIR", i)
    assert np.array_equal(vote, np.where((t1 == fl), t1, 0))  # two members: agreement


def test_segment_store_unknown_contrast_one_line_error(store):
    from thaldask.errors import SegmenterError
    from thaldask.segment import segment_store

    with pytest.raises(SegmenterError, match="contrast 'R1' is not in the store"):
        segment_store(store, "thalnet", ["R1"], client=None, progress=False)
