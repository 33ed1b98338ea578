#!/usr/bin/env python3
"""Container health check for the thaldask images.

Healthy when a Dask process in the container answers ``/health`` with ``ok`` on one of the
dashboard ports (scheduler 8787, worker 8788; override with THALDASK_HEALTH_PORTS=8787,8788).
A container running neither (e.g. the `thaldask run` Job) is healthy when thaldask and its
Dask stack import. Exit status 0 = healthy, 1 = unhealthy.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    ports = [int(p) for p in os.environ.get("THALDASK_HEALTH_PORTS", "8787,8788").split(",") if p]
    served = [p for p in ports if _listening(p)]
    for port in served:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return 0
        except OSError:
            continue
    if served:
        print(f"unhealthy: /health did not answer ok on ports {served}", file=sys.stderr)
        return 1
    try:
        import distributed  # noqa: F401

        import thaldask  # noqa: F401
    except Exception as exc:  # pragma: no cover - only in a broken image
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
