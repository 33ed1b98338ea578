"""Run an external segmentation tool on one scan: command line, scratch folder, output.

:func:`run_tool` writes a scan's images into a fresh scratch folder, runs the tool's command
(natively, or inside an Apptainer/Singularity or Docker container) with a timeout, finds its
segmentation by the tool's own naming, maps its labels to 0/1/2
(:func:`thaldask.cohort.labels.to_sides`) and puts it onto the scan's grid through world
coordinates (:func:`thaldask.store.nifti.resample_to`, as ingest does for FreeSurfer's
conformed space). The scratch folder is removed when the scan succeeds (kept with
``keep_work``, and kept on failure so the tool's logs can be read). A failure raises
:class:`~thaldask.errors.ExternalToolError` with a one-line reason: exit status and the
tail of the tool's stderr, timeout, output missing, empty or on an unexpected grid.

:class:`ExternalSegmenter` wraps a tool as a :class:`~thaldask.segment.base.Segmenter`
(``thaldask segment-file``, the registry); the Dask stage is in
:mod:`thaldask.segment.tool_stage`.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from thaldask import config
from thaldask._shared.paths import safe_name
from thaldask.cohort.labels import parse_labels, to_sides
from thaldask.errors import (
    ConfigError,
    ExternalToolError,
    GridMismatchError,
    ScanError,
    ThaldaskError,
)
from thaldask.segment.base import Prediction, Segmenter
from thaldask.segment.presets import ToolSpec, tool_spec
from thaldask.store import nifti

__all__ = [
    "ExternalSegmenter",
    "build_command",
    "container_command",
    "find_executable",
    "run_tool",
    "tool_segmenter_class",
    "tool_unavailable",
    "tool_version",
]

#: characters of stderr kept in a failure reason
TAIL_CHARS = 400


# ---------------------------------------------------------------- finding the tool


def _env_bin(spec: ToolSpec) -> Path | None:
    p = spec.env_path
    return None if p is None else p / "bin"


def find_executable(spec: ToolSpec) -> str | None:
    """Full path of the tool's program (its environment's bin/ first, then PATH), or None."""
    exe = spec.executable
    if os.sep in exe:
        return exe if os.access(exe, os.X_OK) else None
    b = _env_bin(spec)
    if b is not None and os.access(b / exe, os.X_OK):
        return str(b / exe)
    return shutil.which(exe)


def _licence(spec: ToolSpec) -> tuple[str | None, str]:
    """(licence file or None, reason when missing)."""
    if not spec.licence_env:
        return None, ""
    value = os.environ.get(spec.licence_env)
    if value:
        if os.path.isfile(value):
            return value, ""
        return None, f"licence file {spec.licence_env}={value} not found"
    if spec.licence_fallback:
        fb = os.path.expandvars(spec.licence_fallback)
        if "$" not in fb and os.path.isfile(fb):
            return fb, ""
    return None, f"licence file missing: set {spec.licence_env} to your FreeSurfer licence file"


def _container_program(spec: ToolSpec) -> str:
    if spec.runtime == "docker":
        return "docker"
    if spec.runtime == "singularity":
        return "singularity"
    return "apptainer" if shutil.which("apptainer") or not shutil.which("singularity") else "singularity"


def tool_unavailable(spec: ToolSpec, *, check_image: bool = True) -> str:
    """Why the tool cannot run on this machine, in one line ("" when it can)."""
    if spec.runtime == "native":
        if find_executable(spec) is None:
            where = f" (nor in {_env_bin(spec)})" if _env_bin(spec) is not None else ""
            hint = f"; thaldask tools install {spec.name}" if spec.name == "samseg" else ""
            return f"executable {spec.executable!r} not found on PATH{where}{hint}"
        for var in spec.requires_env:
            if not os.environ.get(var):
                return f"environment variable {var} is not set"
    else:
        prog = _container_program(spec)
        if shutil.which(prog) is None:
            return f"{prog} not found on PATH (runtime {spec.runtime}, image {spec.image})"
        if spec.runtime == "docker":
            if check_image:
                r = subprocess.run([prog, "image", "inspect", str(spec.image)], capture_output=True,
                                   timeout=30, check=False)
                if r.returncode:
                    return f"docker image {spec.image} not found (docker pull {spec.image})"
        elif not os.path.isfile(os.path.expanduser(str(spec.image))):
            return f"container image {spec.image} not found"
    _, why = _licence(spec)
    if not why and str(spec.labels).lower() == "mindglide":
        return "its labels hold no thalamus: give the ids, e.g. --option labels=L:5;R:6"
    return why


def tool_version(spec: ToolSpec) -> str:
    """The tool's version as this machine has it ("unknown" when it cannot tell)."""
    if spec.runtime != "native":
        return f"image {spec.image}"
    if spec.version_package:
        want = spec.version_package.lower().replace("-", "_")
        exe = find_executable(spec)
        roots = [Path(exe).resolve().parent.parent] if exe else []
        for root in roots:
            for info in glob.glob(str(root / "lib" / "python*" / "site-packages" / "*.dist-info")):
                stem = Path(info).name[: -len(".dist-info")]
                pkg, _, ver = stem.partition("-")
                if pkg.lower().replace("-", "_") == want and ver:
                    return f"{spec.version_package} {ver}"
    if spec.version_file:
        f = os.path.expandvars(spec.version_file)
        try:
            first = Path(f).read_text(errors="replace").strip().splitlines()
            if first:
                return first[0].strip()
        except OSError:
            pass
    if spec.version_command:
        argv = list(spec.version_command)
        exe = find_executable(spec) if argv[0] == spec.executable else None
        argv[0] = exe or argv[0]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            lines = [v.strip() for v in (r.stdout + "\n" + r.stderr).splitlines() if v.strip()]
            if lines:
                return lines[0][:200]
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


# ---------------------------------------------------------------- command lines


def build_command(spec: ToolSpec, values: dict, inputs: list[str], contrasts: list[str]) -> list[str]:
    """The tool's argument list with placeholders filled in.

    ``{inputs}`` as a whole argument expands to every input file; arguments of
    ``if-contrast`` are appended for each input contrast that has them (once each).

    >>> from thaldask.segment.presets import tool_spec
    >>> spec = tool_spec("samseg")
    >>> v = dict(output="/w/out", work="/w", threads=2, subject="s1", device="cpu",
    ...          input_dir="/w/in", env="/env")
    >>> " ".join(build_command(spec, v, ["/w/in/T1w.nii.gz", "/w/in/FLAIR.nii.gz"], ["T1w", "FLAIR"]))
    'run_samseg -i /w/in/T1w.nii.gz /w/in/FLAIR.nii.gz -o /w/out --threads 2 --save-posteriors Thalamus --pallidum-separate'
    """
    vals = {**values, "input": inputs[0]}
    out: list[str] = []
    extra: list[str] = []
    for c in contrasts:
        for a in spec.if_contrast.get(c, ()):
            if a not in extra:
                extra.append(a)
    for arg in list(spec.command) + extra + list(spec.extra_args):
        if arg == "{inputs}":
            out.extend(inputs)
            continue
        try:
            out.append(arg.format(**vals))
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"thaldask.segment.tools.{spec.name}: argument {arg!r} has an unknown placeholder ({exc})"
            ) from None
    return out


def container_command(spec: ToolSpec, argv: list[str], *, work: str, env: dict, gpu: bool,
                      licence: str | None = None) -> list[str]:
    """``argv`` wrapped for the tool's runtime: unchanged (native), ``apptainer exec`` or
    ``docker run`` with the scratch folder (and the licence file) mounted at the same path.

    >>> from thaldask.segment.presets import tool_spec
    >>> spec = tool_spec("x", {"command": ["seg", "{input}"], "output": "o.nii.gz",
    ...                        "labels": "freesurfer", "runtime": "docker", "image": "org/seg:1"})
    >>> cmd = container_command(spec, ["seg", "/w/in.nii.gz"], work="/w", env={}, gpu=False)
    >>> cmd[:7], cmd[-3:]
    (['docker', 'run', '--rm', '--network', 'none', '-v', '/w:/w'], ['org/seg:1', 'seg', '/w/in.nii.gz'])
    """
    if spec.runtime == "native":
        return list(argv)
    binds = [work] + ([licence] if licence else [])
    if spec.runtime == "docker":
        cmd = ["docker", "run", "--rm"] + ([] if spec.network else ["--network", "none"])
        for b in binds:
            cmd += ["-v", f"{b}:{b}" + (":ro" if b != work else "")]
        cmd += ["-w", work, "--user", f"{_uid()}:{_gid()}"]
        if gpu:
            cmd += ["--gpus", "all"]
        for k, v in env.items():
            cmd += ["-e", f"{k}={v}"]
        return cmd + [str(spec.image)] + list(argv)
    prog = _container_program(spec)
    cmd = [prog, "exec", "--cleanenv", "--containall", "--pwd", work]
    for b in binds:
        cmd += ["--bind", f"{b}:{b}" + (":ro" if b != work else "")]
    if gpu:
        cmd.append("--nv")
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    return cmd + [os.path.expanduser(str(spec.image))] + list(argv)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def _gid() -> int:
    return os.getgid() if hasattr(os, "getgid") else 0


# ---------------------------------------------------------------- running


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [v.strip() for v in text.splitlines() if v.strip()]
    tail = " | ".join(lines[-4:])
    return tail[-TAIL_CHARS:]


def _kill(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def scratch_root() -> str:
    """Where scans' scratch folders go: ``thaldask.segment.scratch-dir``, else the Dask
    worker's local directory, else the system's temporary folder."""
    d = config.get("segment.scratch-dir")
    if d:
        return os.path.expanduser(str(d))
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return tempfile.gettempdir()


def _execute(spec: ToolSpec, argv: list[str], *, work: Path, env: dict, timeout: float) -> None:
    out_log, err_log = work / "stdout.log", work / "stderr.log"
    with open(out_log, "wb") as fo, open(err_log, "wb") as fe:
        try:
            proc = subprocess.Popen(argv, cwd=str(work), env=env, stdout=fo, stderr=fe,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise ExternalToolError(f"{spec.name}: cannot start {argv[0]!r} ({exc.strerror or exc})") from None
        try:
            rc = proc.wait(timeout=timeout or None)
        except subprocess.TimeoutExpired:
            _kill(proc)
            tail = _tail(err_log)
            raise ExternalToolError(
                f"{spec.name}: timed out after {timeout:g} s and was killed"
                + (f"; stderr: {tail}" if tail else "")
            ) from None
        except BaseException:
            _kill(proc)
            raise
    if rc != 0:
        tail = _tail(err_log) or _tail(out_log)
        what = f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        raise ExternalToolError(f"{spec.name}: {what}" + (f"; stderr: {tail}" if tail else "; no stderr"))


def _find_output(spec: ToolSpec, pattern: str, out_dir: Path, values: dict, what: str) -> Path:
    rel = pattern.format(**values)
    hits = sorted(glob.glob(str(out_dir / rel)))
    if not hits:
        present = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())[:6]
        raise ExternalToolError(
            f"{spec.name}: exited 0 but wrote no {what} {rel!r}"
            + (f" (output folder holds {', '.join(present)})" if present else " (output folder is empty)")
        )
    if len(hits) > 1:
        raise ExternalToolError(f"{spec.name}: {what} {rel!r} matches {len(hits)} files; expected one")
    p = Path(hits[0])
    if p.stat().st_size == 0:
        raise ExternalToolError(f"{spec.name}: {what} {p.name} is an empty file")
    return p


def _check_grid(spec: ToolSpec, vol, in_affine, in_shape, name: str) -> None:
    shape = vol.data.shape
    zooms = np.sqrt((np.asarray(vol.affine)[:3, :3] ** 2).sum(0))
    if spec.grid == "input":
        if not nifti.same_grid(vol.affine, shape, in_affine, in_shape, atol=1e-3):
            raise GridMismatchError(
                f"{spec.name}: {name} is on grid {shape} {nifti.axcodes(vol.affine)}, not on its "
                f"input's grid {tuple(in_shape)} {nifti.axcodes(in_affine)} as {spec.name} writes it"
            )
    elif spec.grid in ("conformed", "1mm"):
        if not np.allclose(zooms, 1.0, atol=1e-3):
            raise GridMismatchError(
                f"{spec.name}: {name} has voxels ({', '.join(f'{z:g}' for z in np.round(zooms, 3))}) mm; "
                f"expected {spec.grid} 1 mm isotropic"
            )
        if spec.grid == "conformed" and nifti.axcodes(vol.affine) != "LIA":
            raise GridMismatchError(
                f"{spec.name}: {name} is oriented {nifti.axcodes(vol.affine)}; expected the "
                "conformed LIA grid"
            )


def _onto(data, src_affine, dst_affine, dst_shape, *, order: int):
    if nifti.same_grid(src_affine, data.shape, dst_affine, dst_shape, atol=1e-4):
        return np.asarray(data)
    return nifti.resample_to(np.ascontiguousarray(data), src_affine, dst_affine, dst_shape, order=order)


def run_tool(
    spec: ToolSpec,
    images: list[np.ndarray],
    affine: np.ndarray,
    contrasts: list[str],
    *,
    subject: str = "scan",
    threads: int | None = None,
    device: str = "auto",
    labels: str | None = None,
    keep_work: bool = False,
    scratch: str | None = None,
    gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Run the tool once on co-registered ``images`` (each (X, Y, Z) on ``affine``).

    Returns
    -------
    labels : uint8 (X, Y, Z) 0/1/2 on the input grid
    prob : float32 (2, X, Y, Z) left/right probabilities, or None
    info : dict with ``tool``, ``version``, ``command`` (the command line run), ``runtime``,
        ``image``, ``seconds``, ``work`` (the scratch folder, when kept)

    Raises
    ------
    ExternalToolError, GridMismatchError
        one line naming the tool and what went wrong.
    """
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(v) for v in images[0].shape)
    conv = parse_labels(labels or spec.labels)
    root = scratch or scratch_root()
    os.makedirs(root, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"thaldask-{safe_name(spec.name)}-{safe_name(subject)}-", dir=root))
    ok = False
    try:
        import nibabel as nib

        in_dir, out_dir = work / "in", work / "out"
        in_dir.mkdir()
        out_dir.mkdir()
        paths = []
        for k, (img, c) in enumerate(zip(images, contrasts, strict=True)):
            p = in_dir / spec.input_name.format(contrast=safe_name(c), index=k)
            nii = nib.Nifti1Image(np.asarray(img, dtype=np.float32), affine)
            nii.header.set_qform(affine, code=1)
            nii.header.set_sform(affine, code=1)
            nib.save(nii, str(p))
            paths.append(str(p))
        n_threads = int(threads or spec.threads or 1)
        env_path = spec.env_path
        values = dict(output=str(out_dir), work=str(work), threads=n_threads, subject=safe_name(subject),
                      device=device or "auto", input_dir=str(in_dir), env=str(env_path or ""))
        argv = build_command(spec, values, paths, contrasts)
        licence, why = _licence(spec)
        if why:
            raise ExternalToolError(f"{spec.name}: {why}")
        tool_env = dict(spec.env)
        for var in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
            tool_env.setdefault(var, str(n_threads))
        if licence and spec.licence_env:
            tool_env[spec.licence_env] = licence
        use_gpu = bool(spec.gpu) if gpu is None else bool(gpu)
        if spec.runtime == "native":
            exe = find_executable(spec)
            if exe is None:
                raise ExternalToolError(f"{spec.name}: {tool_unavailable(spec)}")
            if argv[0] == spec.executable:
                argv[0] = exe
            env = {**os.environ, **tool_env}
            b = _env_bin(spec)
            if b is not None and b.is_dir():
                env["PATH"] = str(b) + os.pathsep + env.get("PATH", "")
            full = argv
        else:
            env = dict(os.environ)
            full = container_command(spec, argv, work=str(work), env=tool_env, gpu=use_gpu,
                                     licence=licence)
        t0 = time.perf_counter()
        _execute(spec, full, work=work, env=env, timeout=spec.timeout)
        seconds = time.perf_counter() - t0
        seg_path = _find_output(spec, spec.output, out_dir, values, "segmentation")
        try:
            vol = nifti.load_volume(str(seg_path), kind="mask")
        except ScanError as exc:
            raise ExternalToolError(f"{spec.name}: segmentation {seg_path.name}: {exc}") from None
        _check_grid(spec, vol, affine, shape, seg_path.name)
        sides = to_sides(vol.data, conv, where=f"{spec.name}: {seg_path.name}: ")
        if not sides.any():
            raise ExternalToolError(
                f"{spec.name}: segmentation {seg_path.name} holds no thalamus label "
                f"(expected {conv.spec}; found ids {sorted(np.unique(vol.data).tolist())[:8]})"
            )
        nifti.check_overlap(sides, vol.affine, sides.shape, affine, shape)
        lab = _onto(sides, vol.affine, affine, shape, order=0).astype(np.uint8)
        prob = None
        if spec.prob_left and spec.prob_right:
            chans = []
            for side, pat in (("left", spec.prob_left), ("right", spec.prob_right)):
                pp = _find_output(spec, pat, out_dir, values, f"{side} probability map")
                pv = nifti.load_volume(str(pp), kind="image")
                chans.append(np.clip(_onto(pv.data.astype(np.float32), pv.affine, affine, shape, order=1),
                                     0, 1))
            prob = np.stack(chans).astype(np.float32)
        info = dict(tool=spec.name, version=tool_version(spec), command=shlex.join(full),
                    runtime=spec.runtime, image=spec.image, seconds=seconds)
        ok = True
        if keep_work:
            info["work"] = str(work)
        return lab, prob, info
    except ThaldaskError as exc:  # the tool's logs stay for reading; the reason says where
        try:
            again = type(exc)(f"{exc}; work folder kept: {work}")
        except TypeError:
            raise exc from None
        raise again from None
    finally:
        if ok and not keep_work:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- segmenter


class ExternalSegmenter(Segmenter):
    """An external tool as a segmenter (built by :func:`tool_segmenter_class`).

    Options
    -------
    threads : int
        Threads given to the tool (default: its definition's).
    labels : str
        Label convention of its output (e.g. ``L:5;R:6`` for a MindGlide container).
    keep_work : bool
        Keep the scratch folder of every scan.
    """

    tool: str = ""
    external = True

    def __init__(self, **options):
        super().__init__(**options)
        self.spec = tool_spec(self.tool)
        self.contrasts = self.spec.contrasts
        self.multi_channel = self.spec.multi_contrast
        self.last_info: dict = {}

    @classmethod
    def unavailable(cls) -> str:
        try:
            return tool_unavailable(tool_spec(cls.tool))
        except ConfigError as exc:
            return f"configuration error: {exc}"

    def unavailable_with(self) -> str:
        """Like :meth:`unavailable`, with this instance's options (labels)."""
        if self.options.get("labels"):
            import dataclasses

            return tool_unavailable(dataclasses.replace(self.spec, labels=str(self.options["labels"])))
        return tool_unavailable(self.spec)

    def load(self, device: str = "auto") -> None:
        self.device = device or "auto"

    def predict(self, image, affine, *, contrast: str = "T1w") -> Prediction:
        parts = self.check_contrast(contrast)
        arr = np.asarray(image)
        images = [arr] if arr.ndim == 3 else list(arr)
        lab, prob, info = run_tool(
            self.spec, images, affine, parts, threads=self.options.get("threads"),
            device=self.device or "auto", labels=self.options.get("labels"),
            keep_work=str(self.options.get("keep_work", "")).lower() in ("1", "true", "yes"),
        )
        self.last_info = info
        return Prediction(lab, prob)


_CLASSES: dict[str, type] = {}


def tool_segmenter_class(name: str) -> type[ExternalSegmenter]:
    """The :class:`ExternalSegmenter` subclass of tool ``name`` (one per name)."""
    cls = _CLASSES.get(name)
    if cls is None:
        cls = type(f"Tool_{safe_name(name).replace('-', '_')}", (ExternalSegmenter,),
                   {"name": name, "tool": name, "__module__": __name__})
        _CLASSES[name] = cls
    return cls
