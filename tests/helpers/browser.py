"""Minimal headless-Chromium driver over the DevTools protocol (``--remote-debugging-pipe``).

Opens one page, records console messages, uncaught exceptions and log entries (including
failed resource loads, which never reach ``--enable-logging``), and takes a screenshot.
Only the standard library: JSON messages separated by NUL bytes on file descriptors 3
(commands to the browser) and 4 (replies and events).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    for p in CHROMIUM_CANDIDATES:
        if os.path.exists(p) and os.access(p, os.X_OK):
            return p
    return shutil.which("chromium")


@dataclass
class PageReport:
    console: list[dict] = field(default_factory=list)  # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)  # {"level", "source", "text", "url"}
    screenshot: bytes = b""
    title: str = ""

    @property
    def errors(self) -> list[str]:
        """Every error-level message: console.error/assert, uncaught exceptions, failed loads."""
        out = [f"console.{c['level']}: {c['text']}" for c in self.console
               if c["level"] in ("error", "assert")]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [f"log[{e['source']}] {e['level']}: {e['text']} {e.get('url', '')}"
                for e in self.log if e["level"] == "error"]
        return out


class Browser:
    """One headless Chromium process with a fresh profile, driven over a pipe."""

    def __init__(self, executable: str, *, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="thaldask-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def _fds():  # child: commands on fd 3, replies on fd 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_fds, close_fds=True, pass_fds=(3, 4),  # kept: closing runs after _fds
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    # -- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from Chromium")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str | None = None) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                return ev
            self.events.append(ev)

    def drain(self, seconds: float) -> None:
        """Collect events for ``seconds`` more (late console messages)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    # -- high level
    def open(self, url: str, *, width: int = 1280, height: int = 2000) -> PageReport:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=sid)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=sid)
        self.send("Page.navigate", {"url": url}, session=sid)
        self.wait_event("Page.loadEventFired", session=sid)
        self.drain(0.5)
        rep = PageReport()
        rep.title = self.send("Runtime.evaluate", {"expression": "document.title",
                                                    "returnByValue": True},
                              session=sid)["result"].get("value", "")
        shot = self.send("Page.captureScreenshot", {"format": "png"}, session=sid)
        rep.screenshot = base64.b64decode(shot["data"])
        for ev in self.events:
            if ev.get("sessionId") != sid:
                continue
            p = ev.get("params", {})
            if ev["method"] == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                rep.console.append({"level": p.get("type", ""), "text": text})
            elif ev["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                rep.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
            elif ev["method"] == "Log.entryAdded":
                e = p.get("entry", {})
                rep.log.append({"level": e.get("level", ""), "source": e.get("source", ""),
                                "text": e.get("text", ""), "url": e.get("url", "")})
        return rep

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - the browser may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_page(path: Path | str, **kwargs) -> PageReport:
    """Open a local file in a fresh headless Chromium and report what happened."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium executable")
    with Browser(exe) as b:
        return b.open(Path(path).resolve().as_uri(), **kwargs)
