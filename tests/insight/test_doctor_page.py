"""doctor.html in headless Chromium: it renders every gallery, with pictures, and logs no console error."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import chromium, console_errors, full_page_screenshot
from PIL import Image

from graft.insight.doctor import doctor

pytestmark = pytest.mark.browser


def test_doctor_page_renders_without_console_errors(hymenoptera: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split, n in (("train", 6), ("val", 3)):
        for c in ("ants", "bees"):
            for f in sorted((hymenoptera / split / c).glob("*.jpg"))[:n]:
                (root / split / c).mkdir(parents=True, exist_ok=True)
                with Image.open(f) as im:
                    im.convert("RGB").resize((96, 72)).save(root / split / c / f.name)
    first = sorted((root / "val/bees").glob("*.jpg"))[0]
    (root / "train/bees/copy.jpg").write_bytes(first.read_bytes())  # a leak: a pair on the page
    result = doctor(root, out=tmp_path / "out")
    page = Path(result.written["html"])
    with chromium() as driver:
        driver.get(page.as_uri())
        assert console_errors(driver) == []
        assert driver.find_element("id", "leakage").is_displayed()
        images = driver.find_elements("css selector", "#leakage img")
        widths = [driver.execute_script("return arguments[0].naturalWidth", i) for i in images]
        assert len(widths) == 2 and min(widths) > 0
        shot = full_page_screenshot(driver, tmp_path / "doctor.png")
    assert shot.stat().st_size > 1000
