"""External segmentation tools: presets, command lines, and `thaldask segment` running
stand-ins of SAMSEG, recon-all, SynthSeg, FastSurfer, FIRST and DBSegment on a real Dask
cluster (scheduler and worker processes), including their failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dask
import numpy as np
import pytest
from click.testing import CliRunner
from helpers.cluster import DaskProcesses
from helpers.tools import install_standins, set_mode, write_truth

from thaldask.cli import main
from thaldask.errors import ConfigError, SegmenterError
from thaldask.segment.external import build_command, container_command
from thaldask.segment.presets import PRESETS, tool_spec
from thaldask.segment.tool_stage import fit_resources
from thaldask.store import open_store
from thaldask.testing import make_store
from thaldask.thalnet.validate import dice

TOOLS = ("samseg", "freesurfer", "synthseg", "fastsurfer", "first", "dbsegment")
#: Dice floor per tool: input-grid tools copy the truth; the others go through a 1 mm grid
FLOOR = {"samseg": 1.0, "first": 1.0}

VALUES = dict(output="/w/out", work="/w", threads=3, subject="sub-01_baseline", device="cpu",
              input_dir="/w/in", env="/env")


# ---------------------------------------------------------------- command lines (no process)


@pytest.mark.parametrize("tool, expected", [
    ("samseg", "run_samseg -i /w/in/T1w.nii.gz -o /w/out --threads 3 --save-posteriors Thalamus"),
    ("freesurfer", "recon-all -s sub-01_baseline -i /w/in/T1w.nii.gz -all -sd /w/out -openmp 3"),
    ("synthseg", "mri_synthseg --i /w/in/T1w.nii.gz --o /w/out/synthseg.mgz --robust --threads 3"),
    ("fastsurfer", "run_fastsurfer.sh --t1 /w/in/T1w.nii.gz --sid sub-01_baseline --sd /w/out "
                   "--seg_only --threads 3 --device cpu"),
    ("first", "run_first_all -i /w/in/T1w.nii.gz -o /w/out/first -s L_Thal,R_Thal"),
    ("dbsegment", "DBSegment -i /w/in -o /w/out -mp /env/models"),
])
def test_preset_command_lines_are_the_tools_own(tool, expected):
    assert " ".join(build_command(tool_spec(tool), VALUES, ["/w/in/T1w.nii.gz"], ["T1w"])) == expected


def test_samseg_multi_contrast_separates_pallidum_once():
    spec = tool_spec("samseg")
    argv = build_command(spec, VALUES, ["/w/in/T1w.nii.gz", "/w/in/FLAIR.nii.gz", "/w/in/T2w.nii.gz"],
                         ["T1w", "FLAIR", "T2w"])
    assert argv[1:5] == ["-i", "/w/in/T1w.nii.gz", "/w/in/FLAIR.nii.gz", "/w/in/T2w.nii.gz"]
    assert argv.count("--pallidum-separate") == 1
    assert "--pallidum-separate" not in build_command(spec, VALUES, ["/w/in/T1w.nii.gz"], ["T1w"])


def test_container_command_lines():
    with dask.config.set({"thaldask.segment.tools": {
            "samseg": {"runtime": "apptainer", "image": "/img/samseg.sif"},
            "fastsurfer": {"runtime": "docker", "image": "deepmi/fastsurfer:cpu-v2.4.2"}}}):
        sam, fast = tool_spec("samseg"), tool_spec("fastsurfer")
    argv = ["run_samseg", "-i", "/w/in/T1w.nii.gz", "-o", "/w/out"]
    cmd = container_command(sam, argv, work="/w", env={"OMP_NUM_THREADS": "2"}, gpu=True,
                            licence="/lic/license.txt")
    assert cmd[:2] in (["apptainer", "exec"], ["singularity", "exec"])
    assert cmd[-6:] == ["/img/samseg.sif", *argv]
    assert "--nv" in cmd and "/w:/w" in cmd and "/lic/license.txt:/lic/license.txt:ro" in cmd
    assert cmd[cmd.index("--env") + 1] == "OMP_NUM_THREADS=2"
    cmd = container_command(fast, ["run_fastsurfer.sh", "--t1", "/w/in/T1w.nii.gz"], work="/w", env={},
                            gpu=False)
    assert cmd[:3] == ["docker", "run", "--rm"] and "--gpus" not in cmd
    assert cmd[cmd.index("-v") + 1] == "/w:/w"
    assert cmd[-4] == "deepmi/fastsurfer:cpu-v2.4.2"
    assert tool_spec("samseg").resources() == {"threads": 2, "memory": 6 * 2**30}


def test_definitions_are_checked_with_one_line_reasons():
    with pytest.raises(ConfigError, match=r"unknown key 'outptu' \(did you mean 'output'\?\)"):
        tool_spec("x", {"command": ["x"], "outptu": "a", "output": "a", "labels": "freesurfer"})
    with pytest.raises(ConfigError, match="grid 'native' unknown"):
        tool_spec("x", {"command": ["x"], "output": "a", "labels": "freesurfer", "grid": "native"})
    with pytest.raises(ConfigError, match="needs an 'image'"):
        tool_spec("x", {"command": ["x"], "output": "a", "labels": "freesurfer", "runtime": "docker"})
    with pytest.raises(ConfigError, match="label convention"):
        tool_spec("x", {"command": ["x"], "output": "a", "labels": "L:10;R:10"})
    with dask.config.set({"thaldask.segment.tools": {"y": {"preset": "nope"}}}), \
            pytest.raises(ConfigError, match="unknown preset 'nope'"):
        tool_spec("y")
    assert set(PRESETS) >= set(TOOLS)


def test_resources_are_asked_only_where_workers_declare_them():
    assert fit_resources({"threads": 2, "memory": 6e9}, [{}, {}], tool="t") == {}
    assert fit_resources({"threads": 2, "gpu": 1}, [{"threads": 2}, {"gpu": 1, "threads": 4}],
                         tool="t") == {"threads": 2, "gpu": 1}
    with pytest.raises(SegmenterError, match="memory=5.59GiB per scan but the largest worker offers 3.73GiB"):
        fit_resources({"memory": 6e9}, [{"memory": 4e9}], tool="t")


# ---------------------------------------------------------------- on a real cluster


@pytest.fixture(scope="module")
def side(tmp_path_factory):
    """Stand-ins on PATH (of this process and of the workers) and their side folder."""
    root = tmp_path_factory.mktemp("tools")
    env = install_standins(root / "bin", root / "side")
    env["DASK_THALDASK__SEGMENT__SCRATCH_DIR"] = str(root / "scratch")
    env["DASK_THALDASK__SEGMENT__TOOLS_DIR"] = str(root / "no-tools")  # never a real env
    env["THALDASK_TOOLS"] = str(root / "no-tools")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def cluster(side, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    procs = DaskProcesses(folder, n_workers=2, resources="threads=4 memory=16e9")
    try:
        from distributed import Client

        with Client(procs.address) as c:
            procs.wait_for_workers(c)
        yield procs
    finally:
        procs.close()


def _store(folder: Path, side: Path, *, images=("T1w", "FLAIR")):
    st, truth = make_store(folder / "cohort.zarr", n_subjects=1, images=images)
    assert write_truth(side / "side", st) == st.n_scans
    return st, truth


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("calls-")}


def _segment(store, tool, cluster, *extra):
    return CliRunner().invoke(main, ["segment", store, "--model", tool, "--scheduler", cluster.address,
                                     "--no-progress", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_segment_runs_each_tool_on_the_cluster(tool, side, cluster, tmp_path):
    st, truth = _store(tmp_path, side)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    before, side_before = _digest(user), _digest(side / "side")
    gt_before = [st.load_mask("gt", "T1w", i).copy() for i in range(st.n_scans)]
    r = _segment(st.path, tool, cluster)
    assert r.exit_code == 0, r.output
    st = open_store(st.path)
    assert st.has_mask(tool, "T1w").all()
    for i in range(st.n_scans):
        m, g = st.load_mask(tool, "T1w", i), truth[("gt", "T1w", i)]
        assert m.shape == tuple(st.shapes[i])
        for s in (1, 2):
            assert dice(m, g, s) >= FLOOR.get(tool, 0.75), (tool, i, s, dice(m, g, s))
        assert np.array_equal(st.load_mask("gt", "T1w", i), gt_before[i])
    prov = st.zarr_array(f"masks/{tool}/T1w").attrs["thaldask_tool"]
    assert prov["tool"] == tool and prov["runtime"] == "native"
    assert prov["command"].split()[0].endswith(PRESETS[tool]["command"][0])
    assert prov["command_template"] == PRESETS[tool]["command"]
    if tool in ("freesurfer", "synthseg"):
        assert prov["version"] == "freesurfer-linux-standin-7.4.1" or tool == "freesurfer"
    if tool == "first":
        assert prov["version"] == "6.0.7.standin"
    if tool == "samseg":  # posteriors become the stored probabilities
        p = st.load_prob("samseg", "T1w", 0)
        assert p is not None and p.shape == (2, *tuple(st.shapes[0]))
        g = truth[("gt", "T1w", 0)]
        assert abs(float(p[0][g == 1].mean()) - 0.9) < 0.01
    assert not any((side / "scratch").iterdir())  # every scratch folder removed
    assert _digest(user) == before and _digest(side / "side") == side_before
    again = _segment(st.path, tool, cluster)
    assert again.exit_code == 0 and "nothing to do" in again.output


@pytest.mark.slow
def test_samseg_multi_contrast_and_keep_work(side, cluster, tmp_path):
    st, _ = _store(tmp_path, side)
    calls = side / "side" / "calls-samseg.log"
    n0 = len(calls.read_text().splitlines()) if calls.exists() else 0
    r = _segment(st.path, "samseg", cluster, "--contrast", "T1w+FLAIR", "--keep-work", "--option", "threads=3")
    assert r.exit_code == 0, r.output
    lines = calls.read_text().splitlines()[n0:]
    assert len(lines) == st.n_scans
    assert all("--pallidum-separate" in v and "FLAIR.nii.gz" in v and "--threads 3" in v for v in lines)
    kept = sorted((side / "scratch").iterdir())
    assert len(kept) == st.n_scans
    for k in kept:
        assert (k / "out" / "seg.mgz").is_file() and (k / "stderr.log").is_file()
        assert (k / "in" / "T1w.nii.gz").is_file() and (k / "in" / "FLAIR.nii.gz").is_file()
        import shutil

        shutil.rmtree(k)
    assert open_store(st.path).has_mask("samseg", "T1w+FLAIR").all()


@pytest.mark.slow
@pytest.mark.parametrize("tool, mode, reason", [
    ("samseg", "fail", r"samseg: exited with status 2; stderr: .*RuntimeError: samseg stand-in asked to fail"),
    ("synthseg", "nooutput", r"synthseg: exited 0 but wrote no segmentation 'synthseg.mgz' \(output folder is empty\)"),
    ("first", "empty", r"first: segmentation first_all_fast_firstseg.nii.gz is an empty file"),
    ("samseg", "wronggrid", r"samseg: seg.mgz is on grid .* not on its input's grid"),
    ("fastsurfer", "wronggrid", r"fastsurfer: aparc.DKTatlas\+aseg.deep.mgz has voxels \(1.5, 1.5, 1.5\) mm"),
    ("dbsegment", "nolabels", r"dbsegment: segmentation T1w_seg.nii.gz holds no thalamus label"),
    ("freesurfer", "sleep", r"freesurfer: timed out after 3 s and was killed"),
])
def test_tool_failures_are_one_line_reasons_after_retries(tool, mode, reason, side, cluster, tmp_path):
    import re

    st, _ = _store(tmp_path, side)
    calls = side / "side" / f"calls-{tool}.log"
    n0 = len(calls.read_text().splitlines()) if calls.exists() else 0
    set_mode(side / "side", tool, mode)
    try:
        with dask.config.set({"thaldask.segment.tools": {tool: {"timeout": 3}} if mode == "sleep" else {}}):
            r = _segment(st.path, tool, cluster)
    finally:
        set_mode(side / "side", tool, "")
    assert r.exit_code == 1, r.output
    errors = [v for v in r.output.splitlines() if v.startswith("thaldask: scan")]
    assert len(errors) == st.n_scans, r.output
    for v in errors:
        assert re.search(reason, v), v
        kept = Path(v.rsplit("work folder kept: ", 1)[1])
        assert kept.is_dir() and (kept / "stderr.log").is_file()
    assert len(calls.read_text().splitlines()) - n0 == 2 * st.n_scans  # one Dask retry each
    st = open_store(st.path)
    assert (tool, "T1w") not in st.methods or not st.has_mask(tool, "T1w").any()
    for k in (side / "scratch").iterdir():
        import shutil

        shutil.rmtree(k)


@pytest.mark.slow
def test_user_defined_tool_from_configuration(side, cluster, tmp_path):
    st, truth = _store(tmp_path, side)
    mytool = {"command": ["run_first_all", "-i", "{input}", "-o", "{output}/mine"],
              "output": "mine_all_fast_firstseg.nii.gz", "labels": "L:10;R:49", "grid": "input",
              "contrasts": ["T1w"], "description": "FIRST under another name"}
    with dask.config.set({"thaldask.segment.tools": {"mytool": mytool}}):
        listed = CliRunner().invoke(main, ["segment", "--list"])
        assert "mytool" in listed.output
        r = _segment(st.path, "mytool", cluster)
        bad = _segment(st.path, "mytool", cluster, "--contrast", "FLAIR")
    assert r.exit_code == 0, r.output
    assert bad.exit_code == 2 and "does not accept contrast 'FLAIR'" in bad.output
    st = open_store(st.path)
    assert dice(st.load_mask("mytool", "T1w", 0), truth[("gt", "T1w", 0)], 1) == 1.0


def test_missing_program_and_licence_are_one_line_errors(side, tmp_path, monkeypatch):
    st, _ = make_store(tmp_path / "c.zarr", n_subjects=1)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    r = CliRunner().invoke(main, ["segment", st.path, "--model", "synthseg"])
    assert r.exit_code == 2
    assert r.output.strip() == ("thaldask: error: segmenter 'synthseg' cannot run here: executable "
                                "'mri_synthseg' not found on PATH")
    monkeypatch.setenv("PATH", os.environ["PATH"] + os.pathsep + str(side / "bin"))
    monkeypatch.setenv("FS_LICENSE", str(tmp_path / "nope.txt"))
    r = CliRunner().invoke(main, ["segment", st.path, "--model", "freesurfer"])
    assert r.exit_code == 2 and "licence file FS_LICENSE=" in r.output and "not found" in r.output
    listed = CliRunner().invoke(main, ["segment", "--list"]).output.splitlines()
    by_name = {v.split()[0]: v for v in listed}
    assert "cannot run here: licence file FS_LICENSE=" in by_name["freesurfer"]
    assert by_name["samseg"].endswith("can run here") and by_name["thalnet"].endswith("can run here")
    assert "docker not found" in by_name["mindglide-container"] or "image" in by_name["mindglide-container"]
    assert len(listed) == len(by_name)
    assert not st.methods or all(m in ("gt", "a", "b") for m, _ in st.methods)


@pytest.mark.slow
def test_resources_no_worker_has_enough_stop_before_any_task(side, cluster, tmp_path):
    st, _ = _store(tmp_path, side)
    calls = side / "side" / "calls-first.log"
    n0 = len(calls.read_text().splitlines()) if calls.exists() else 0
    with dask.config.set({"thaldask.segment.tools": {"first": {"memory": "64GiB"}}}):
        r = _segment(st.path, "first", cluster)
    assert r.exit_code == 2 and "largest worker offers" in r.output
    assert (len(calls.read_text().splitlines()) if calls.exists() else 0) == n0


@pytest.mark.slow
def test_a_tool_missing_on_the_workers_stops_before_any_task(side, cluster, tmp_path):
    st, _ = _store(tmp_path, side)
    ghost = {"command": ["no-such-segmenter", "{input}"], "output": "x.nii.gz", "labels": "freesurfer"}
    with dask.config.set({"thaldask.segment.tools": {"ghost": ghost}}):
        r = _segment(st.path, "ghost", cluster)
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and "cannot run on any worker" in r.output
    assert "executable 'no-such-segmenter' not found on PATH" in r.output
    assert ("ghost", "T1w") not in open_store(st.path).methods


def test_segment_file_runs_a_tool_on_one_scan(side, tmp_path):
    import nibabel as nib

    st, truth = make_store(tmp_path / "c.zarr", n_subjects=1, images=("T1w",))
    write_truth(side / "side", st)
    img = st.load_image("T1w", 1)
    src = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(img, st.affines[1]), src)
    before = _digest(tmp_path)
    out = tmp_path / "out" / "mask.nii.gz"
    with dask.config.set({"thaldask.segment.scratch-dir": str(tmp_path / "scratch")}):
        r = CliRunner().invoke(main, ["segment-file", str(src), str(out), "--model", "first"])
    assert r.exit_code == 0, r.output
    lab = np.asarray(nib.load(out).dataobj)
    assert np.array_equal(lab, truth[("gt", "T1w", 1)])
    assert not any((tmp_path / "scratch").iterdir())
    after = _digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing of ours rewritten


def test_slurm_workers_declare_the_tools_resources():
    from thaldask.cluster.slurm import job_script, plan_slurm
    from thaldask.cluster.spec import load_cluster_spec

    spec = load_cluster_spec({"kind": "slurm", "cores": 8, "memory": "32GiB", "gpus_per_job": 1,
                              "resources": {"threads": 8, "memory": 32e9}})
    (line,) = [v for v in job_script(spec).splitlines() if "--resources" in v]
    assert line.split("--resources ", 1)[1].split()[0] == "threads=8,memory=3.2e+10,gpu=1"
    assert plan_slurm(spec)["resources"] == {"threads": 8, "memory": 32e9, "gpu": 1}
