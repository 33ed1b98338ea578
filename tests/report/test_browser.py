"""The report in a real browser: headless Chromium over the DevTools protocol opens
index.html from file://, the page logs no error (console, uncaught exception or failed
resource load), and its screenshot is not blank."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from helpers.browser import find_chromium, open_page
from PIL import Image

pytestmark = [pytest.mark.requires_chromium, pytest.mark.slow]


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing in CI (.ci/run installs the Debian package chromium)")
        pytest.skip("no Chromium browser (install the Debian package chromium)")
    return exe


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=float)


def _content_fraction(px: np.ndarray) -> float:
    """Fraction of pixels that differ from the page's most common colour (the background)."""
    flat = px.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float((np.abs(flat - background).sum(1) > 30).mean())


def test_browser_driver_broken_page_errors_reported(chromium, tmp_path):
    """Positive control: the checks below would see an error if there were one."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="missing.png"><script>console.error("deliberate");'
                    "notDefined();</script></body></html>")
    rep = open_page(page, width=400, height=300)
    errors = "\n".join(rep.errors)
    assert "console.error: deliberate" in errors
    assert "notDefined is not defined" in errors
    assert "missing.png" in errors
    assert _content_fraction(_pixels(rep.screenshot)) < 0.01  # a near-empty page is "blank"


def test_report_chromium_no_errors_screenshot_not_blank(chromium, fixture_report, tmp_path):
    index, _ = fixture_report
    rep = open_page(index, width=1280, height=1600)
    assert rep.errors == []
    assert rep.title == "thaldask report"
    px = _pixels(rep.screenshot)
    assert px.shape == (1600, 1280, 3)
    assert _content_fraction(px) > 0.05
    # the synthetic-data banner (Okabe–Ito orange, #E69F00) is at the top of the page
    top = px[:30].reshape(-1, 3)
    assert (np.abs(top - [0xE6, 0x9F, 0x00]).sum(1) < 30).mean() > 0.5
    (tmp_path / "screenshot.png").write_bytes(rep.screenshot)
