"""One progress display for every stage.

It shows done/total, the rate and the time left. On a terminal it redraws one line in
place (rich); when standard error is not a terminal (a log file, a Kubernetes pod, a SLURM
job) it prints one plain line at the start, at least every ``interval`` seconds while work
goes on (``thaldask.progress.interval``, 30 s by default) and one at the end::

    ingest: 12/24 scans (50%), 1.3 scans/s, ETA 0:00:09

Counts are what the caller advances by, so a batch of 16 scans advances by 16.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from thaldask import config

__all__ = ["Progress", "format_eta"]

DEFAULT_INTERVAL = 30.0


def format_eta(seconds: float) -> str:
    """``h:mm:ss`` of a number of seconds (``?`` when unknown).

    >>> format_eta(3725), format_eta(float("nan"))
    ('1:02:05', '?')
    """
    if seconds != seconds or seconds == float("inf") or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of ``total`` units of work (a context manager).

    Parameters
    ----------
    total : number of units (scans, figures, ...)
    label : what is running, e.g. ``"ingest"``
    unit : the unit's name in plain lines, e.g. ``"scans"``
    enabled : False shows nothing
    stream : where to write (default: standard error)
    interval : seconds between plain lines when ``stream`` is not a terminal
        (default: ``thaldask.progress.interval``)
    terminal : force terminal (True) or plain (False) mode; default: ``stream.isatty()``
    clock : a ``time.monotonic``-like function (tests)
    initial : units already done when the display starts

    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(3, "demo", unit="scans", stream=out, terminal=False) as p:
    ...     p.advance(3)
    >>> out.getvalue().splitlines()[-1].startswith("demo: 3/3 scans (100%)")
    True
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        unit: str = "scans",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
        terminal: bool | None = None,
        clock=time.monotonic,
        initial: int = 0,
    ):
        self.total = int(total)
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.stream = stream
        self.interval = interval
        self.terminal = terminal
        self.clock = clock
        self.done = int(initial)
        self._initial = int(initial)
        self._rich = None
        self._task = None
        self._t0 = None
        self._last = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        self._closed = False

    # -- context --------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if not self.enabled:
            return self
        if self._closed:
            return self
        if self.stream is None:
            self.stream = sys.stderr
        if self.interval is None:
            self.interval = _configured_interval()
        if self.terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            self.terminal = bool(isatty and isatty())
        self._t0 = self._last = self.clock()
        if self.terminal:
            self._start_rich()
        else:
            self._line()
            if clock_is_real(self.clock):
                # a line at least every interval even while one long task runs
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()
        return self

    def __exit__(self, *exc) -> bool:
        if not self.enabled or self._t0 is None or self._closed:
            return False
        self._closed = True
        if self._rich is not None:
            self._rich.__exit__(*exc)
            self._rich = None
        else:
            self._stop.set()
            if self._ticker is not None:
                self._ticker.join()
            self._line()
        return False

    # -- updates --------------------------------------------------------------------------
    def advance(self, n: int = 1, *, what: str | None = None) -> None:
        """``n`` more units are done (``what``: optional name of the last one)."""
        self.done += int(n)
        if not self.enabled or self._t0 is None:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=self._desc(what))
            return
        if self.clock() - self._last >= self.interval:
            self._line()

    def add_total(self, n: int) -> None:
        """``n`` more units of work than announced."""
        self.total += int(n)
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    @property
    def rate(self) -> float:
        """Units per second since the start (NaN before any unit is done)."""
        new = self.done - self._initial
        if self._t0 is None or not new:
            return float("nan")
        dt = self.clock() - self._t0
        return new / dt if dt > 0 else float("nan")

    def status(self) -> str:
        """The plain line, e.g. ``ingest: 12/24 scans (50%), 1.3 scans/s, ETA 0:00:09``."""
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.rate
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"]
        if rate == rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
            left = self.total - self.done
            parts.append(f"ETA {format_eta(left / rate) if left > 0 else '0:00:00'}")
        if self._t0 is not None and self.done >= self.total:
            parts.append(f"took {format_eta(self.clock() - self._t0)}")
        return ", ".join(parts)

    # -- internals ------------------------------------------------------------------------
    def _desc(self, what):
        return f"{self.label} {what}" if what else self.label

    def _line(self):
        with self._lock:
            self._last = self.clock()
            print(self.status(), file=self.stream, flush=True)

    def _tick(self):
        while not self._stop.wait(max(0.05, self.interval - (self.clock() - self._last))):
            if self.clock() - self._last >= self.interval:
                self._line()

    def _start_rich(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        class _Rate(TextColumn):
            def __init__(self, unit):
                super().__init__("")
                self.unit = unit

            def render(self, task):
                from rich.text import Text

                speed = task.finished_speed or task.speed
                return Text(f"{speed:.3g} {self.unit}/s" if speed else f"- {self.unit}/s")

        self._rich = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _Rate(self.unit),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=self.stream, force_terminal=True),
            transient=False,
        )
        self._rich.__enter__()
        self._task = self._rich.add_task(self.label, total=self.total, completed=self.done)


def clock_is_real(clock) -> bool:
    """Whether ``clock`` is the wall clock (a ticker thread makes sense only then)."""
    return clock in (time.monotonic, time.time, time.perf_counter)


def _configured_interval() -> float:
    return float(config.get("progress.interval", DEFAULT_INTERVAL))
