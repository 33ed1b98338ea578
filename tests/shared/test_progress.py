"""The one progress display: counts, plain lines off a terminal, the 30 s heartbeat."""

from __future__ import annotations

import io
import time

from thaldask._shared.progress import Progress, format_eta


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_plain_counts_what_was_advanced():
    out = io.StringIO()
    clock = Clock()
    with Progress(24, "ingest", unit="scans", stream=out, terminal=False, interval=30, clock=clock) as p:
        for _ in range(3):
            clock.t += 4.0
            p.advance(8)
    lines = out.getvalue().splitlines()
    assert lines[0] == "ingest: 0/24 scans (0%)"
    assert lines[-1].startswith("ingest: 24/24 scans (100%), 2 scans/s, ETA 0:00:00, took 0:00:12")
    assert len(lines) == 2  # nothing in between: less than 30 s passed


def test_progress_plain_prints_a_line_every_interval_and_eta():
    out = io.StringIO()
    clock = Clock()
    with Progress(100, "evaluate", stream=out, terminal=False, interval=30, clock=clock) as p:
        for _ in range(10):
            clock.t += 10.0
            p.advance(5)  # 0.5 scans/s
    lines = out.getvalue().splitlines()
    # start, at 30, 60, 90 s, and the end
    assert len(lines) == 5
    assert lines[1] == "evaluate: 15/100 scans (15%), 0.5 scans/s, ETA 0:02:50"
    assert lines[-1].startswith("evaluate: 50/100 scans (50%)")


def test_progress_plain_heartbeat_while_one_long_task_runs():
    out = io.StringIO()
    with Progress(2, "segment", stream=out, terminal=False, interval=0.2):
        time.sleep(0.75)  # no advance at all
    lines = out.getvalue().splitlines()
    assert len(lines) >= 4  # start, >= 2 heartbeats, end
    assert all(line.startswith("segment: 0/2 scans") for line in lines)


def test_progress_terminal_redraws_with_rate_and_eta():
    out = io.StringIO()
    with Progress(24, "ingest", stream=out, terminal=True) as p:
        p.advance(24)
    text = out.getvalue()
    assert "24/24" in text and "scans/s" in text and "ETA" in text
    assert "\x1b[" in text  # redrawn with terminal control codes


def test_progress_disabled_writes_nothing():
    out = io.StringIO()
    with Progress(3, "x", stream=out, enabled=False, terminal=False) as p:
        p.advance(3)
    assert out.getvalue() == "" and p.done == 3


def test_format_eta():
    assert format_eta(0) == "0:00:00"
    assert format_eta(59.6) == "0:01:00"
    assert format_eta(-1) == "?"


def test_progress_counts_work_done_before_the_display_started():
    out = io.StringIO()
    clock = Clock()
    with Progress(24, "ingest", stream=out, terminal=False, clock=clock, initial=1) as p:
        clock.t = 23.0
        p.advance(23)
    lines = out.getvalue().splitlines()
    assert lines[0] == "ingest: 1/24 scans (4%)"
    assert lines[-1].startswith("ingest: 24/24 scans (100%), 1 scans/s")
