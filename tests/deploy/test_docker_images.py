"""deploy/docker: static checks of the Dockerfiles (no Docker engine here) and the health check."""

from __future__ import annotations

import http.server
import re
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
KNOWN = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling continuation line"
    return out


def stages(instrs):
    """Split into stages: list of (base image with ARGs substituted, instructions)."""
    args, result = {}, []
    for instr, a in instrs:
        if instr == "ARG" and not result:
            k, _, v = a.partition("=")
            args[k] = v
        elif instr == "FROM":
            image = a.split()[0]
            image = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), image
            )
            result.append((image, []))
        elif result:
            result[-1][1].append((instr, a))
    return result


def test_dockerfiles_cpu_and_cuda_present():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.cuda", "Dockerfile.tools"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_parse_known_instructions(path):
    instrs = parse(path)
    assert instrs
    assert {i for i, _ in instrs} <= KNOWN


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_pinned(path):
    st = stages(parse(path))
    assert len(st) >= 2  # build stage + slim runtime stage
    for image, _ in st:
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{path.name}: base image {image!r} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}: {image!r} not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_final_stage_non_root_with_healthcheck(path):
    _, final = stages(parse(path))[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, f"{path.name}: final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: runs as {user}"
    # nothing after the USER switch needs root
    after = [i for i, _ in final[[i for i, _ in final].index("USER") :]]
    assert "RUN" not in after
    (hc,) = [a for i, a in final if i == "HEALTHCHECK"]
    assert "CMD" in hc.split()
    script = shlex.split(hc.split("CMD", 1)[1].strip().strip("[]").replace(",", " "))[-1]
    copied = [a.split()[-1] for i, a in final if i == "COPY"]
    assert script in copied, f"{path.name}: health check script {script} is not copied in"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_package_installed_from_repository(path):
    instrs = parse(path)
    copies = [a for i, a in instrs if i == "COPY" and "--from" not in a]
    sources = [s for a in copies for s in a.split()[:-1]]
    for s in sources:
        assert (REPO / s).exists(), f"{path.name}: COPY source {s} missing in the repository"
    assert "pyproject.toml" in sources and "thaldask" in sources
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert re.search(r"pip install \"?/src(\[[\w,]+\])?\"?", runs), (
        "the repository is not pip-installed"
    )
    assert re.search(r"torch==", runs), "torch is not pinned"
    ignore = (DOCKER / f"{path.name}.dockerignore").read_text().split()
    for s in sources:
        assert f"!{s}" in ignore or f"!{s}/" in ignore, f"{s} excluded by {path.name}.dockerignore"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck(ports: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")],
        env={"THALDASK_HEALTH_PORTS": ports, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_healthcheck_no_dask_process_import_check_passes():
    res = _healthcheck(str(_free_port()))
    assert res.returncode == 0, res.stderr


def test_healthcheck_port_not_ok_unhealthy():
    class Sick(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Sick)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        res = _healthcheck(str(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 1
    assert "unhealthy" in res.stderr


def test_images_start_workers_without_dask_statistical_profiler():
    # the profiler keeps up to 1,000 one-second samples per worker (~180 MB); thaldask's
    # local clusters turn it off too (thaldask.cluster.worker-profile)
    for p in DOCKERFILES:
        assert "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in p.read_text(), p.name
