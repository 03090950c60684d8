"""Headless Chromium for browser tests (Debian's ``chromium`` + ``chromium-driver``; ``make browser`` installs them).

    from browser import chromium, console_errors  # tests/ is on sys.path (pytest's rootdir conftest)

    with chromium() as driver:
        driver.get(page.as_uri())
        assert console_errors(driver) == []

Tests are skipped, with the reason, when the browser or its driver is not installed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _find(preferred: str, name: str) -> str | None:
    return preferred if Path(preferred).exists() else shutil.which(name)


@contextlib.contextmanager
def chromium(*, width: int = 1280, height: int = 1024) -> Iterator[Any]:
    """A headless Chromium WebDriver (selenium) with a fresh profile and browser logging on; closed on exit."""
    binary, driver_path = _find(CHROMIUM, "chromium"), _find(CHROMEDRIVER, "chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("headless Chromium is not installed: run `make browser` (Debian chromium + chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="graft-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver: Any) -> list[str]:
    """Browser console messages of level SEVERE since the last call (the log is drained by reading it)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def full_page_screenshot(driver: Any, path: str | Path) -> Path:
    """Save a PNG of the whole page, beyond the window (Chrome DevTools ``Page.captureScreenshot``)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = Path(path)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
