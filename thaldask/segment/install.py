"""Build an external tool's own Python environment (``thaldask tools install``).

SAMSEG (pip ``samseg``) pins ``numpy<2`` and has wheels for Python 3.10/3.11 only, and its
dependency ``surfa`` builds from source with a C compiler, so it never goes into thaldask's
environment: :func:`install_tool` makes a separate virtual environment for it, by default
under :func:`~thaldask.segment.presets.tools_dir` (``~/.local/share/thaldask/tools/samseg``),
where the ``samseg`` preset finds ``run_samseg``.

Only the folder it creates is ever written: an existing folder that thaldask did not make
is refused, a failed build removes what it made, and a finished one is marked with
``thaldask-tool.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from thaldask._shared.paths import write_text
from thaldask.errors import ConfigError, OutputExistsError, SegmenterError
from thaldask.segment.presets import tools_dir

__all__ = ["RECIPES", "MARKER", "install_tool", "find_python"]

MARKER = "thaldask-tool.json"

#: name -> (Python versions it needs, pip requirements, entry point it provides)
RECIPES: dict[str, dict] = {
    "samseg": {
        "pythons": ("3.11", "3.10"),
        "requirements": ["samseg==0.4a0", "numpy<2"],
        "entry_point": "run_samseg",
    },
}


def find_python(versions) -> str | None:
    """A Python interpreter of one of ``versions`` (``python3.11`` on PATH, /usr/bin, ...)."""
    for v in versions:
        for cand in (shutil.which(f"python{v}"), f"/usr/bin/python{v}", f"/usr/local/bin/python{v}"):
            if cand and os.access(cand, os.X_OK):
                return cand
    return None


def _run(argv, log, what: str, timeout: float) -> None:
    log.write(("$ " + " ".join(argv) + "\n").encode())
    log.flush()
    try:
        r = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SegmenterError(f"{what} took more than {timeout:g} s and was stopped") from None
    if r.returncode:
        raise SegmenterError(f"{what} failed with status {r.returncode}")


def install_tool(name: str, prefix=None, *, python: str | None = None, timeout: float = 1800,
                 echo=None) -> Path:
    """Make tool ``name``'s environment in ``prefix`` (default ``tools_dir() / name``).

    Returns the path of the tool's entry point (e.g. ``.../bin/run_samseg``). An environment
    thaldask already installed there is reused (its requirements are installed again, which
    pip skips when satisfied).

    Raises
    ------
    ConfigError
        unknown tool, or no suitable Python interpreter.
    OutputExistsError
        ``prefix`` exists, is not empty and was not made by thaldask.
    SegmenterError
        the build failed (its log's last lines in the message; the folder is removed).
    """
    if name not in RECIPES:
        raise ConfigError(f"no installer for tool {name!r}; installable: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    prefix = Path(prefix) if prefix else tools_dir() / name
    prefix = prefix.expanduser().absolute()
    say = echo or (lambda m: print(m, file=sys.stderr))
    python = python or find_python(recipe["pythons"])
    if not python:
        raise ConfigError(
            f"{name} needs Python {' or '.join(recipe['pythons'])} (its wheels exist for these only); "
            "none found: install one or pass --python"
        )
    ours = (prefix / MARKER).is_file()
    if prefix.exists() and not ours and any(prefix.iterdir()):
        raise OutputExistsError(f"{prefix}: exists and was not made by thaldask; choose another --prefix")
    created = not prefix.exists()
    prefix.mkdir(parents=True, exist_ok=True)
    log_path = prefix / "install.log"
    t0 = time.perf_counter()
    try:
        with open(log_path, "ab") as log:
            if not (prefix / "bin" / "python").exists():
                say(f"creating a virtual environment with {python} in {prefix}")
                _run([python, "-m", "venv", str(prefix)], log, "creating the virtual environment", timeout)
            say(f"installing {' '.join(recipe['requirements'])} (builds surfa with a C compiler; minutes)")
            _run([str(prefix / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                  *recipe["requirements"]], log, f"pip install {' '.join(recipe['requirements'])}", timeout)
        exe = prefix / "bin" / recipe["entry_point"]
        if not os.access(exe, os.X_OK):
            raise SegmenterError(f"the build finished but {exe} is missing")
    except BaseException as exc:
        tail = ""
        try:
            lines = [v for v in log_path.read_text(errors="replace").splitlines() if v.strip()]
            tail = " | ".join(lines[-3:])[-300:]
        except OSError:
            pass
        if created:
            shutil.rmtree(prefix, ignore_errors=True)
        if isinstance(exc, SegmenterError):
            raise SegmenterError(f"installing {name}: {exc}" + (f" ({tail})" if tail else "")) from None
        raise
    write_text(prefix / MARKER, json.dumps({
        "tool": name, "requirements": recipe["requirements"], "python": python,
        "seconds": round(time.perf_counter() - t0, 1), "entry_point": str(exe),
    }, indent=2) + "\n")
    say(f"{name} installed in {time.perf_counter() - t0:.0f} s: {exe}")
    return exe
