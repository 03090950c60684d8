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
def chromium(*, width: int = 1280, height: int = 1024, camera: Path | None = None) -> Iterator[Any]:
    """A headless Chromium WebDriver (selenium) with a fresh profile and browser logging on; closed on exit.

    ``camera``: a Y4M clip (:func:`camera_clip`) that ``getUserMedia`` plays as the webcam, looped, with the
    permission granted without a prompt."""
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
            *(
                ()
                if camera is None
                else (
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-video-capture={camera}",
                )
            ),
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


def camera_clip(images: list[Path], path: Path, *, size: tuple[int, int] = (640, 480), fps: int = 10,
                seconds_each: float = 1.0) -> Path:  # fmt: skip
    """Write a Y4M clip (4:2:0, what Chromium's fake camera reads) showing each image for ``seconds_each``,
    letterboxed into ``size``."""
    from PIL import Image, ImageOps

    w, h = size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in images:
            with Image.open(image) as im:
                frame = ImageOps.pad(im.convert("RGB"), size, color=(0, 0, 0)).convert("YCbCr")
            y, cb, cr = frame.split()
            planes = y.tobytes() + cb.resize((w // 2, h // 2)).tobytes() + cr.resize((w // 2, h // 2)).tobytes()
            for _ in range(max(1, round(fps * seconds_each))):
                out.write(b"FRAME\n" + planes)
    return path
