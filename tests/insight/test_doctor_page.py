"""doctor.html: the pictures of a pair (matched points, the first image laid over the second) on synthetic pairs,
and the page in headless Chromium at a desktop and a phone width: every gallery renders, with pictures, a leak's
verdict in words, no horizontal overflow, no console error."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, console_errors, full_page_screenshot
from PIL import Image, ImageOps
from planted import edited_copy

from graft.insight.doctor import doctor, pictures
from graft.insight.doctor.page import HOW_TO_READ, caption


def _texture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour noise: detail everywhere, so a misplaced pixel shows."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8))
    return coarse.resize((width, height), Image.Resampling.BICUBIC)


def _error(warped: np.ndarray, inside: np.ndarray, b: Image.Image) -> float:
    return float(np.abs(warped.astype(np.float64) - np.asarray(b, np.float64))[inside].mean())


def test_warp_lines_a_mirrored_crop_up_with_its_source() -> None:
    a = _texture(200, 150)
    x0, y0 = 30, 20
    b = ImageOps.mirror(a).crop((x0, y0, 170, 130))
    (wa, ha), (wb, hb) = a.size, b.size
    right = [wa / wb, 0.0, -x0 / wb, 0.0, ha / hb, -y0 / hb]  # mirrored a's normalised coordinates onto b's
    warped, inside = pictures.warp(a, b.size, right, mirrored=True)
    assert inside.mean() > 0.95
    assert _error(warped, inside, b) < 2
    for wrong, mirrored in ((right, False), ([*right[:2], right[2] + 0.08, *right[3:]], True)):
        warped, inside = pictures.warp(a, b.size, wrong, mirrored=mirrored)
        assert _error(warped, inside, b) > 20
    blend = np.asarray(pictures.aligned(a, b, right, mirrored=True), np.float64)
    assert np.abs(blend - np.asarray(b, np.float64))[2:-2, 2:-2].mean() < 2  # one crisp picture: b itself
    # the same pair drawn at other sizes: the transform is in normalised coordinates
    small_a, small_b = a.resize((100, 75)), b.resize((70, 55))
    warped, inside = pictures.warp(small_a, small_b.size, right, mirrored=True)
    assert _error(warped, inside, small_b) < 12


def test_matches_joins_each_point_to_its_match() -> None:
    a, b = _texture(200, 150), _texture(120, 100, seed=1)
    points = [[0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.1, 0.9]]
    drawn = np.asarray(pictures.matches(a, b, points, mirrored=False))
    assert drawn.shape == (150, 200 + pictures.GAP + 120, 3)
    gap = drawn[:, 200 : 200 + pictures.GAP]
    assert (gap < 200).any(axis=2).sum() >= 2 * pictures.GAP  # two lines cross the white gap
    plain = np.asarray(pictures.matches(a, b, [], mirrored=True))
    assert (plain[:, 200 : 200 + pictures.GAP] == 255).all()
    assert np.array_equal(plain[:150, :200], np.asarray(ImageOps.mirror(a)))  # the first image shown mirrored


def test_caption_says_what_the_pixels_said() -> None:
    copy = {"kind": "copy", "inliers": 143, "agreement": 0.97, "mirrored": True}
    assert caption(copy) == "copy: 143 matched points, 97% of the detail lines up (mirrored)"
    scene = {"kind": "same_scene", "inliers": 40, "agreement": 0.35, "mirrored": False}
    assert caption(scene) == "same scene: 40 matched points, 35% of the detail lines up \u2014 another shot"
    assert caption({"kind": "identical"}) == "identical pixels"
    assert caption({"given": "ants"}) == ""


def _dataset(hymenoptera: Path, root: Path) -> None:
    """Nine photos a class and split of hymenoptera, small; in train, a val photo's identical copy and a mirrored
    and cropped one (two leaks)."""
    for split, n in (("train", 6), ("val", 3)):
        for c in ("ants", "bees"):
            for f in sorted((hymenoptera / split / c).glob("*.jpg"))[:n]:
                (root / split / c).mkdir(parents=True, exist_ok=True)
                with Image.open(f) as im:
                    im.convert("RGB").resize((192, 144)).save(root / split / c / f.name)
    first, second = sorted((root / "val/bees").glob("*.jpg"))[:2]
    (root / "train/bees/copy.jpg").write_bytes(first.read_bytes())
    edited_copy(second, root / "train/bees/planted.jpg", "mirror+crop", random.Random(0))


#: Screenshots of the page (looked at by a person when the layout changes): desktop, then phone.
SIZES = ((1280, 800), (390, 844))


@pytest.mark.browser
def test_doctor_page_shows_each_pair_verdict_at_desktop_and_phone_width(hymenoptera: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    _dataset(hymenoptera, root)
    result = doctor(root, out=tmp_path / "out")
    kinds = sorted(f.evidence["kind"] for f in result.of("leakage"))
    assert kinds == ["copy", "identical"]
    page = Path(result.written["html"])
    with chromium() as driver:
        for width, height in SIZES:
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.get(page.as_uri())
            assert console_errors(driver) == []
            leakage = driver.find_element("id", "leakage")
            assert leakage.is_displayed()
            assert HOW_TO_READ[:40] in leakage.text and "identical pixels" in leakage.text
            cards = leakage.find_elements("css selector", ".card.pair")
            assert len(cards) == 1
            assert "copy: " in cards[0].text and "matched points" in cards[0].text and "(mirrored)" in cards[0].text
            images = cards[0].find_elements("css selector", "img")
            assert [i.get_attribute("alt") for i in images] == ["matched points", "aligned"]
            assert min(driver.execute_script("return arguments[0].naturalWidth", i) for i in images) > 100
            sizes = driver.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
                " window.innerWidth, Math.max(...[...document.querySelectorAll('.card')]"
                ".map(c => c.getBoundingClientRect().right))]"
            )
            scroll, client, inner, right = sizes
            assert width - 20 <= client <= inner == width and scroll <= client and right <= client, sizes
            shot = full_page_screenshot(driver, tmp_path / f"doctor-{width}x{height}.png")
            assert shot.stat().st_size > 1000
