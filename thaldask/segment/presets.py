"""External segmentation tools: the field's presets and user definitions from the configuration.

A tool definition is a mapping (keys below, :data:`TOOL_KEYS`); thaldask runs its
``command`` once per scan on a Dask worker (:mod:`thaldask.segment.external`) and reads the
segmentation it writes by the tool's own naming. Presets describe the real tools:

========== ================================================ ============================ =========
preset     command line (per scan)                          output                       grid
========== ================================================ ============================ =========
samseg     run_samseg -i T1w [FLAIR ...] -o OUT --threads N  seg.mgz (10/49), posteriors  input
freesurfer recon-all -s ID -i T1w -all -sd OUT -openmp N     ID/mri/aseg.mgz (10/49)      conformed
synthseg   mri_synthseg --i T1w --o OUT/synthseg.mgz --robust synthseg.mgz (10/49)         1 mm
fastsurfer run_fastsurfer.sh --t1 T1w --sid ID --sd OUT      ID/mri/aparc.DKTatlas+aseg   conformed
           --seg_only                                        .deep.mgz (10/49)
first      run_first_all -i T1w -o OUT/first                 first_all_*_firstseg.nii.gz  input
dbsegment  DBSegment -i IN_DIR -o OUT                        T1w_seg.nii.gz (24/25+nuclei) 1 mm LPI
========== ================================================ ============================ =========

A user defines a new tool (or changes a preset: runtime, image, threads, ...) under the
configuration key ``thaldask.segment.tools``, e.g. in ``~/.config/dask/thaldask.yaml``::

    thaldask:
      segment:
        tools:
          samseg: {runtime: apptainer, image: /images/samseg-0.4a0.sif}
          mytool:
            command: [mytool, --in, "{input}", --out, "{output}/seg.nii.gz"]
            output: seg.nii.gz
            labels: "L:10;R:49"
            grid: input

Placeholders in ``command`` (and ``if-contrast`` arguments): ``{input}`` first input file,
``{inputs}`` every input file (an argument of its own that expands to several),
``{input_dir}`` folder holding only the inputs, ``{output}`` output folder, ``{work}`` the
scan's scratch folder, ``{threads}``, ``{subject}`` (a safe identifier of the scan),
``{device}`` (auto, cpu or cuda) and ``{env}`` (the tool's own environment folder, see
``env-dir``). ``output`` and ``prob-left``/``prob-right`` are paths relative to the output
folder; they may hold the same placeholders and shell wildcards.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

from thaldask import config
from thaldask.cohort.labels import parse_labels
from thaldask.errors import ConfigError, LabelConventionError

__all__ = [
    "GRIDS",
    "PRESETS",
    "RUNTIMES",
    "TOOL_KEYS",
    "ToolSpec",
    "tool_definitions",
    "tool_spec",
    "tools_dir",
]

RUNTIMES = ("native", "apptainer", "singularity", "docker")

#: how the tool's output grid relates to its input: ``input`` the very grid of the first
#: input (checked), ``conformed`` FreeSurfer's 1 mm isotropic LIA grid (checked), ``1mm`` any
#: 1 mm isotropic grid, ``any`` any grid; every output is put onto the scan's grid through
#: world coordinates and must overlap it.
GRIDS = ("input", "conformed", "1mm", "any")

#: every key of a tool definition, with a one-line description
TOOL_KEYS: dict[str, str] = {
    "preset": "name of a preset this definition starts from (its keys are overridden)",
    "description": "one line shown by `thaldask segment --list`",
    "command": "argument list (placeholders: {input} {inputs} {input_dir} {output} {work} "
    "{threads} {subject} {device} {env})",
    "if-contrast": "contrast -> extra arguments appended when that contrast is among the inputs",
    "extra-args": "arguments appended to every command line (e.g. SAMSEG's --options FILE)",
    "output": "segmentation file relative to the output folder (placeholders, wildcards)",
    "prob-left": "left-thalamus probability file relative to the output folder (optional)",
    "prob-right": "right-thalamus probability file relative to the output folder (optional)",
    "labels": "label convention of the output (freesurfer, dbsegment, 'L:10;R:49', ...)",
    "grid": "output grid: input, conformed, 1mm or any",
    "input-name": "file name of each input: placeholders {contrast} and {index}",
    "contrasts": "contrasts the tool accepts (null: any)",
    "multi-contrast": "takes several co-registered contrasts in one run (e.g. T1w+FLAIR)",
    "executable": "program that must be found (default: the first word of command)",
    "env-dir": "folder of the tool's own environment; bin/ is searched first ({tools}: "
    "thaldask's tools folder)",
    "version-package": "Python distribution whose version is the tool's (in its environment)",
    "version-command": "argument list whose first output line is the tool's version",
    "version-file": "file whose first line is the tool's version",
    "licence-env": "environment variable that must name an existing licence file (FS_LICENSE)",
    "licence-fallback": "licence file used when the variable is unset (placeholders $VAR)",
    "requires-env": "environment variables that must be set (e.g. FSLDIR)",
    "env": "extra environment variables of the tool's process",
    "runtime": "native, apptainer, singularity or docker",
    "image": "container image: a .sif file (apptainer/singularity) or a docker image name",
    "network": "docker: give the container network access (default: --network none)",
    "threads": "threads given to the tool ({threads}) and the Dask resource 'threads' asked",
    "memory": "peak memory, e.g. 6GiB: the Dask resource 'memory' asked (bytes)",
    "gpu": "GPUs: the Dask resource 'gpu' asked (0: none)",
    "timeout": "seconds before the tool is killed (0: no limit)",
    "retries": "Dask retries of a scan whose tool failed",
}

_FS_FALLBACK = "$FREESURFER_HOME/license.txt"

#: the field's tools, as their own documentation runs them
PRESETS: dict[str, dict] = {
    "samseg": {
        "description": "FreeSurfer SAMSEG (pip samseg, atlas built in, offline)",
        "command": ["run_samseg", "-i", "{inputs}", "-o", "{output}", "--threads", "{threads}",
                    "--save-posteriors", "Thalamus"],
        "if-contrast": {"FLAIR": ["--pallidum-separate"], "T2w": ["--pallidum-separate"]},
        "output": "seg.mgz",
        "prob-left": "posteriors/Left-Thalamus.mgz",
        "prob-right": "posteriors/Right-Thalamus.mgz",
        "labels": "freesurfer",
        "grid": "input",
        "multi-contrast": True,
        "env-dir": "{tools}/samseg",
        "version-package": "samseg",
        "threads": 2,
        "memory": "6GiB",
        "timeout": 7200,
    },
    "freesurfer": {
        "description": "FreeSurfer recon-all aseg (needs FREESURFER_HOME and a licence)",
        "command": ["recon-all", "-s", "{subject}", "-i", "{input}", "-all", "-sd", "{output}",
                    "-openmp", "{threads}"],
        "output": "{subject}/mri/aseg.mgz",
        "labels": "freesurfer",
        "grid": "conformed",
        "contrasts": ["T1w"],
        "version-command": ["recon-all", "-version"],
        "licence-env": "FS_LICENSE",
        "licence-fallback": _FS_FALLBACK,
        "requires-env": ["FREESURFER_HOME"],
        "threads": 4,
        "memory": "8GiB",
        "timeout": 86400,
    },
    "synthseg": {
        "description": "SynthSeg (FreeSurfer >= 7.3 mri_synthseg, robust)",
        "command": ["mri_synthseg", "--i", "{input}", "--o", "{output}/synthseg.mgz", "--robust",
                    "--threads", "{threads}"],
        "output": "synthseg.mgz",
        "labels": "synthseg",
        "grid": "1mm",
        "version-file": "$FREESURFER_HOME/build-stamp.txt",
        "threads": 2,
        "memory": "8GiB",
        "timeout": 3600,
    },
    "fastsurfer": {
        "description": "FastSurfer segmentation only (GPU advised)",
        "command": ["run_fastsurfer.sh", "--t1", "{input}", "--sid", "{subject}", "--sd",
                    "{output}", "--seg_only", "--threads", "{threads}", "--device", "{device}"],
        "output": "{subject}/mri/aparc.DKTatlas+aseg.deep.mgz",
        "labels": "freesurfer",
        "grid": "conformed",
        "contrasts": ["T1w"],
        "version-command": ["run_fastsurfer.sh", "--version"],
        "threads": 4,
        "memory": "8GiB",
        "gpu": 0,
        "timeout": 7200,
    },
    "first": {
        "description": "FSL FIRST run_first_all (needs FSLDIR)",
        "command": ["run_first_all", "-i", "{input}", "-o", "{output}/first", "-s", "L_Thal,R_Thal"],
        "output": "first_all_*_firstseg.nii.gz",
        "labels": "first",
        "grid": "input",
        "contrasts": ["T1w"],
        "version-file": "$FSLDIR/etc/fslversion",
        "requires-env": ["FSLDIR"],
        "threads": 1,
        "memory": "4GiB",
        "timeout": 7200,
    },
    "dbsegment": {
        "description": "DBSegment deep-brain nnU-Net (pip DBSegment, its models folder)",
        "command": ["DBSegment", "-i", "{input_dir}", "-o", "{output}", "-mp", "{env}/models"],
        "output": "T1w_seg.nii.gz",
        "labels": "dbsegment",
        "grid": "any",
        "contrasts": ["T1w"],
        "env-dir": "{tools}/dbsegment",
        "version-package": "DBSegment",
        "threads": 2,
        "memory": "8GiB",
        "timeout": 3600,
    },
    "mindglide-container": {
        "description": "MindGlide in its container (labels must be given: labels=L:..;R:..)",
        "command": ["mindglide", "{input}", "{output}"],
        "output": "*seg*.nii.gz",
        "labels": "mindglide",
        "grid": "any",
        "runtime": "docker",
        "image": "armaneshaghi/mind-glide:latest",
        "threads": 2,
        "memory": "8GiB",
        "gpu": 0,
        "timeout": 3600,
    },
}

_DEFAULTS = {
    "description": "",
    "if-contrast": {},
    "extra-args": [],
    "prob-left": None,
    "prob-right": None,
    "grid": "any",
    "input-name": "{contrast}.nii.gz",
    "contrasts": None,
    "multi-contrast": False,
    "executable": None,
    "env-dir": None,
    "version-package": None,
    "version-command": None,
    "version-file": None,
    "licence-env": None,
    "licence-fallback": None,
    "requires-env": [],
    "env": {},
    "runtime": "native",
    "image": None,
    "network": False,
    "threads": 1,
    "memory": None,
    "gpu": 0,
    "timeout": 0,
    "retries": 1,
}


def tools_dir() -> Path:
    """Where ``thaldask tools install`` puts tool environments: the configuration's
    ``thaldask.segment.tools-dir``, else ``$THALDASK_TOOLS``, else
    ``$XDG_DATA_HOME/thaldask/tools`` (``~/.local/share/thaldask/tools``)."""
    d = config.get("segment.tools-dir") or os.environ.get("THALDASK_TOOLS")
    if not d:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        d = os.path.join(base, "thaldask", "tools")
    return Path(os.path.expanduser(str(d)))


def _bytes(value, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(str(value)))
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: memory {value!r} is not a size such as 6GiB") from None


@dataclass(frozen=True)
class ToolSpec:
    """A validated tool definition (see the module's table of keys)."""

    name: str
    command: tuple[str, ...]
    output: str
    labels: str
    grid: str = "any"
    description: str = ""
    if_contrast: dict = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    prob_left: str | None = None
    prob_right: str | None = None
    input_name: str = "{contrast}.nii.gz"
    contrasts: tuple[str, ...] | None = None
    multi_contrast: bool = False
    executable: str = ""
    env_dir: str | None = None
    version_package: str | None = None
    version_command: tuple[str, ...] | None = None
    version_file: str | None = None
    licence_env: str | None = None
    licence_fallback: str | None = None
    requires_env: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    runtime: str = "native"
    image: str | None = None
    network: bool = False
    threads: int = 1
    memory: int | None = None
    gpu: int = 0
    timeout: float = 0
    retries: int = 1

    @property
    def env_path(self) -> Path | None:
        """The tool's own environment folder (``env-dir`` resolved), or None."""
        if not self.env_dir:
            return None
        text = str(self.env_dir).replace("{tools}", str(tools_dir()))
        return Path(os.path.expandvars(os.path.expanduser(text)))

    def resources(self, *, gpu: bool | None = None) -> dict:
        """Dask resources a task of this tool asks for (``threads``, ``memory``, ``gpu``)."""
        out = {"threads": int(self.threads)}
        if self.memory:
            out["memory"] = int(self.memory)
        if (self.gpu if gpu is None else gpu):
            out["gpu"] = max(1, int(self.gpu))
        return out

    def as_dict(self) -> dict:
        """JSON-able definition (recorded with every mask the tool wrote)."""
        out = {k.replace("_", "-"): v for k, v in self.__dict__.items()}
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out


def tool_definitions() -> dict[str, dict]:
    """Every tool: presets with the configuration's ``thaldask.segment.tools`` merged over
    them (a definition with a preset's name, or ``preset: NAME``, overrides its keys)."""
    user = config.get("segment.tools") or {}
    if not isinstance(user, dict):
        raise ConfigError(f"thaldask.segment.tools must be a mapping of tool names, got {user!r}")
    out = {k: copy.deepcopy(v) for k, v in PRESETS.items()}
    for name, d in user.items():
        if not isinstance(d, dict):
            raise ConfigError(f"thaldask.segment.tools.{name} must be a mapping, got {d!r}")
        base = d.get("preset", name if name in PRESETS else None)
        if base is not None and base not in PRESETS:
            raise ConfigError(
                f"thaldask.segment.tools.{name}: unknown preset {base!r}; presets: {', '.join(PRESETS)}"
            )
        merged = copy.deepcopy(PRESETS[base]) if base else {}
        merged.update(copy.deepcopy({k: v for k, v in d.items() if k != "preset"}))
        out[str(name)] = merged
    return out


def _strs(value, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def tool_spec(name: str, definition: dict | None = None) -> ToolSpec:
    """The validated :class:`ToolSpec` of tool ``name`` (from :func:`tool_definitions`
    unless ``definition`` is given).

    Raises
    ------
    ConfigError
        unknown tool, unknown key (naming the closest), wrong type or value.
    """
    where = f"thaldask.segment.tools.{name}"
    if definition is None:
        defs = tool_definitions()
        if name not in defs:
            raise ConfigError(f"unknown external tool {name!r}; known: {', '.join(sorted(defs))}")
        definition = defs[name]
    config.check_keys(definition, [k for k in TOOL_KEYS if k != "preset"], where=where)
    d = {**_DEFAULTS, **definition}
    for key in ("command", "output", "labels"):
        if not d.get(key):
            raise ConfigError(f"{where}: {key!r} is required")
    command = _strs(d["command"], where, "command")
    if d["grid"] not in GRIDS:
        raise ConfigError(f"{where}: grid {d['grid']!r} unknown; allowed: {', '.join(GRIDS)}")
    if d["runtime"] not in RUNTIMES:
        raise ConfigError(f"{where}: runtime {d['runtime']!r} unknown; allowed: {', '.join(RUNTIMES)}")
    if d["runtime"] != "native" and not d["image"]:
        raise ConfigError(f"{where}: runtime {d['runtime']!r} needs an 'image'")
    if str(d["labels"]).lower() != "mindglide" and not str(d["labels"]).lower().startswith("mindglide:"):
        try:
            parse_labels(d["labels"])
        except LabelConventionError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    ifc = d["if-contrast"] or {}
    if not isinstance(ifc, dict):
        raise ConfigError(f"{where}: if-contrast must map contrasts to argument lists")
    for key in ("threads", "gpu", "retries"):
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{where}: {key} must be an integer >= 0, got {v!r}")
    try:
        timeout = float(d["timeout"] or 0)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: timeout must be seconds, got {d['timeout']!r}") from None
    env = d["env"] or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{where}: env must be a mapping of variables")
    return ToolSpec(
        name=name,
        command=command,
        output=str(d["output"]),
        labels=str(d["labels"]),
        grid=d["grid"],
        description=str(d["description"] or ""),
        if_contrast={str(k): _strs(v, where, f"if-contrast.{k}") for k, v in ifc.items()},
        extra_args=_strs(d["extra-args"] or [], where, "extra-args"),
        prob_left=d["prob-left"],
        prob_right=d["prob-right"],
        input_name=str(d["input-name"]),
        contrasts=None if d["contrasts"] is None else _strs(d["contrasts"], where, "contrasts"),
        multi_contrast=bool(d["multi-contrast"]),
        executable=str(d["executable"] or command[0]),
        env_dir=d["env-dir"],
        version_package=d["version-package"],
        version_command=None if not d["version-command"] else _strs(d["version-command"], where,
                                                                     "version-command"),
        version_file=d["version-file"],
        licence_env=d["licence-env"],
        licence_fallback=d["licence-fallback"],
        requires_env=_strs(d["requires-env"] or [], where, "requires-env"),
        env={str(k): str(v) for k, v in env.items()},
        runtime=d["runtime"],
        image=d["image"],
        network=bool(d["network"]),
        threads=int(d["threads"]),
        memory=_bytes(d["memory"], where),
        gpu=int(d["gpu"]),
        timeout=timeout,
        retries=int(d["retries"]),
    )
