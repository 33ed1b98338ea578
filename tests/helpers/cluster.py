"""Helpers for the cluster tests: test certificates and Dask processes on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the folder holding the `helpers` package: on the path of every process started here, so
# that functions defined in the helpers can be sent to the workers
TESTS_DIR = Path(__file__).resolve().parents[1]


def make_certificates(folder: Path, *, name: str = "thaldask-test") -> dict[str, Path]:
    """A CA and one certificate it signs (server and client use, SAN 127.0.0.1), PEM files."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca_file": folder / "ca.crt", "cert": folder / "tls.crt", "key": folder / "tls.key"}
    paths["ca_file"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["key"].chmod(0o600)
    return paths


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskProcesses:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1, stopped on close."""

    def __init__(self, folder: Path, *, n_workers: int = 2, tls: dict | None = None,
                 resources: str | None = None, env: dict | None = None):
        self.folder = folder
        self.tls = tls
        self.procs: list[subprocess.Popen] = []
        self.scheduler_file = folder / "scheduler.json"
        self.dashboard_port = free_port()
        self.logs = []
        extra_env = dict(env or {})
        env = dict(os.environ)
        env.update(extra_env)
        env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        tls_args = []
        if tls:
            env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
            tls_args = [
                "--tls-ca-file",
                str(tls["ca_file"]),
                "--tls-cert",
                str(tls["cert"]),
                "--tls-key",
                str(tls["key"]),
            ]
        self.env = env
        dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        self._start(
            "scheduler",
            dask
            + [
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--dashboard-address",
                f"127.0.0.1:{self.dashboard_port}",
                "--scheduler-file",
                str(self.scheduler_file),
                *(["--protocol", "tls"] if tls else []),
                *tls_args,
            ],
        )
        self._wait(lambda: self.scheduler_file.is_file() and self.scheduler_file.stat().st_size > 0)
        import json

        self.address = json.loads(self.scheduler_file.read_text())["address"]
        for i in range(n_workers):
            self._start(
                f"worker{i}",
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(self.scheduler_file),
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--memory-limit",
                    "3GiB",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                    "--local-directory",
                    str(folder / f"w{i}"),
                    *(["--resources", resources] if resources else []),
                    *tls_args,
                ],
            )
        self.n_workers = n_workers

    def _start(self, name, cmd):
        log = open(self.folder / f"{name}.log", "w")
        self.logs.append(log)
        self.procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        )

    def _wait(self, cond, timeout=60.0):
        t0 = time.monotonic()
        while not cond():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a dask process exited: {self.log_text()}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"dask processes not ready: {self.log_text()}")
            time.sleep(0.2)

    def wait_for_workers(self, client):
        client.wait_for_workers(self.n_workers, timeout=90)

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.folder.glob("*.log"))
        )

    def close(self):
        """Stop every process: SIGTERM, then SIGKILL after two seconds."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for log in self.logs:
            log.close()


def run_and_sigkill(code: str, args, *, when, timeout: float = 120.0, env=None) -> int:
    """Run ``python -c code *args`` and SIGKILL it as soon as ``when()`` is true; return its
    exit status (``-SIGKILL`` when it was killed, else it finished first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if when():
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    return proc.wait(60)
