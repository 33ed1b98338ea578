"""``thaldask train``: training from label maps (bit-reproducible) and fine-tuning."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from thaldask.cli import main
from thaldask.thalnet.inference import load_thalnet
from thaldask.thalnet.validate import crop_around_thalami


@pytest.mark.slow
def test_train_label_maps_two_steps_writes_weights_that_load(tmp_path, anatomy):
    labels, affine = crop_around_thalami(*anatomy, size_mm=(140, 140, 130))
    maps = tmp_path / "maps"
    maps.mkdir()
    for k in range(2):
        nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), maps / f"m{k}.nii.gz")
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--label-maps", str(maps), "--out", str(out), "--steps", "2",
                                  "--seed", "3", "--threads", "1"])
    assert r.exit_code == 0, r.output
    model = load_thalnet("cpu", path=out / "thalnet.pt")
    assert model.meta["steps"] == 2 and model.meta["seed"] == 3
    assert model.meta["label_maps"] == ["m0"] and model.meta["held_out"] == ["m1"]
    assert json.loads(json.dumps(model.meta["validation"]))


@pytest.mark.slow
def test_train_is_bit_reproducible_also_when_stopped_and_resumed(tmp_path, anatomy):
    """What lets ``thaldask train`` reproduce the shipped weights: same maps, seed and steps
    give the same bytes, whether the run goes through or is stopped and resumed."""
    labels, affine = crop_around_thalami(*anatomy, size_mm=(140, 140, 130))
    maps = tmp_path / "maps"
    maps.mkdir()
    for k in range(2):
        nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), maps / f"m{k}.nii.gz")
    base = ["train", "--label-maps", str(maps), "--steps", "4", "--seed", "5"]
    digests = {}
    # one run straight through; a second (stopped and resumed) is a separate run too
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    digests["a"] = hashlib.sha256((tmp_path / "a" / "thalnet.pt").read_bytes()).hexdigest()
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "c"), "--stop-after", "2"])
    assert r.exit_code == 0 and "stopped after step 2" in r.output, r.output
    assert not (tmp_path / "c" / "train_history.json").exists()
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    digests["c"] = hashlib.sha256((tmp_path / "c" / "thalnet.pt").read_bytes()).hexdigest()
    assert digests["a"] == digests["c"]
    assert digests["a"] in r.output
    # a different seed trains different weights
    r = CliRunner().invoke(main, [*base[:-1], "6", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert hashlib.sha256((tmp_path / "d" / "thalnet.pt").read_bytes()).hexdigest() != digests["a"]


@pytest.mark.slow
def test_train_manifest_finetunes_from_shipped_weights(tmp_path, small_scans):
    img, truth, aff = small_scans["T1w"]
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(truth, aff), tmp_path / "a_gt.nii.gz")
    (tmp_path / "m.csv").write_text(
        "subject,timepoint,site,kind,contrast,method,labels,path\n"
        "a,baseline,X,image,T1w,,,a.nii.gz\n"
        'a,baseline,X,mask,T1w,gt,"1,2",a_gt.nii.gz\n'
    )
    r = CliRunner().invoke(main, ["train", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "ft"),
                                  "--steps", "2"])
    assert r.exit_code == 0, r.output
    model = load_thalnet("cpu", path=tmp_path / "ft" / "thalnet.pt")
    assert model.meta["fine_tune_steps"] == 2 and model.meta["fine_tune_pairs"] == 1


def test_train_needs_exactly_one_source(tmp_path):
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "exactly one" in r.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_train_on_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    r = CliRunner().invoke(main, ["train", "--label-maps", str(maps), "--out", str(tmp_path / "run"),
                                  "--device", "cuda"])
    assert r.exit_code != 0 and "no CUDA device" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output

