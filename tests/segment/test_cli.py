import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from thaldask.cli import main


@pytest.fixture()
def t1_file(tmp_path, small_scans):
    img, truth, aff = small_scans["T1w"]
    # stored LAS on disk: the mask must come back on this grid
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = img.shape[0] - 1
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(img[::-1]), aff @ flip), path)
    return path, np.ascontiguousarray(truth[::-1])


def test_segment_file_writes_mask_on_input_grid(tmp_path, t1_file):
    from thaldask.thalnet.validate import dice

    path, truth = t1_file
    out, prob = tmp_path / "mask.nii.gz", tmp_path / "prob.nii.gz"
    r = CliRunner().invoke(main, ["segment-file", str(path), str(out), "--contrast", "T1w",
                                  "--device", "cpu", "--prob", str(prob)])
    assert r.exit_code == 0, r.output
    m = nib.load(out)
    assert m.shape == nib.load(path).shape
    assert np.allclose(m.affine, nib.load(path).affine)
    lab = np.asarray(m.dataobj)
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2}
    assert min(dice(lab, truth, 1), dice(lab, truth, 2)) > 0.6
    assert nib.load(prob).shape == (*m.shape, 2)


def test_segment_file_missing_input_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(main, ["segment-file", str(tmp_path / "nope.nii.gz"), str(tmp_path / "o.nii.gz")])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "file not found" in r.output


def test_segment_file_cuda_without_gpu_one_line_exit_2(tmp_path, t1_file):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = CliRunner().invoke(main, ["segment-file", str(t1_file[0]), str(tmp_path / "o.nii.gz"), "--device", "cuda"])
    assert r.exit_code == 2 and "CUDA" in r.output


def test_segment_command_unknown_model_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(main, ["segment", str(tmp_path / "none.zarr"), "--model", "nope",
                                  "--contrast", "T1w", "FLAIR"])
    assert r.exit_code == 2
    assert r.output.startswith("thaldask: error:")


def test_segment_command_greedy_contrasts_parse():
    from thaldask.commands.segment import segment_command

    ctx = segment_command.make_context(
        "segment", ["S", "--contrast", "T1w", "FLAIR", "R1", "--ensemble", "T1w+R1", "T1w+FLAIR+R1",
                    "--device", "cpu"])
    assert ctx.params["contrasts"] == ("T1w", "FLAIR", "R1")
    assert ctx.params["ensembles"] == ("T1w+R1", "T1w+FLAIR+R1")
    assert ctx.params["store"] == "S"


def test_segment_list_says_which_segmenters_can_run_here():
    from click.testing import CliRunner

    from thaldask.cli import main

    res = CliRunner().invoke(main, ["segment", "--list"])
    assert res.exit_code == 0, res.output
    lines = dict(line.split(None, 1) for line in res.output.splitlines())
    assert lines["thalnet"] == "can run here" and lines["thalnet-multi"] == "can run here"
    import importlib.util

    if importlib.util.find_spec("mindglide") is None:
        assert lines["mindglide"].startswith("cannot run here: the mindglide package is not installed")
