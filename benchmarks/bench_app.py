"""``graft app`` with 20,000 images: the Data page's first screen and its scrolling, measured in a real browser.

    python -m benchmarks.bench_app [--images 20000] [--record] [--keep DIR]

The images: the shared datasets' train and val images (hymenoptera, trashnet_half, flowers5), hard-linked again
and again under new names into one folder per class (``<dataset>_<class>``) until there are ``--images`` of them;
every link is its own file to graft, so the project holds that many images. The project is made by ``graft app``
itself (``--data`` imports the folder) and served on loopback by a real ``graft app`` process.

Measured in headless Chromium (selenium) on the same machine, from the page's own clock (``performance.now()``, 0
at navigation):

- first screen: the time at which every thumbnail in the window (1280x800) of the Data page's first view (the
  first class's grid) has loaded and painted, after opening ``/#data`` from a blank page: the figure the app must
  keep under 1 s. Measured on the fresh project while the app's learner reads every image's features (the first
  minutes of a new project; thumbnails made on request, then cached), and again once it is done;
- scrolling: 10 times, the grid's end scrolled into view; each time, the time until the next page of thumbnails
  is in the grid, and the number of thumbnails after the 10 scrolls;
- the import (graft app --data, once) and the start-up of a second ``graft app`` on the made project, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DATASETS = ("hymenoptera_data", "trashnet_half", "flowers5")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

#: Waits, in the page, until every grid image inside the window has loaded, then returns performance.now().
FIRST_SCREEN_JS = """
const done = arguments[arguments.length - 1];
function ready() {
  const imgs = [...document.querySelectorAll('#grid img')];
  if (imgs.length === 0) return false;
  const inView = imgs.filter(i => { const r = i.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; });
  return inView.length > 0 && inView.every(i => i.complete && i.naturalWidth > 0);
}
(function poll() { if (ready()) requestAnimationFrame(() => done(performance.now())); else setTimeout(poll, 5); })();
"""

#: Scrolls the grid to its end and waits until more items are in it; returns [ms, items].
SCROLL_JS = """
const done = arguments[arguments.length - 1];
const grid = document.querySelector('#grid');
const count = () => grid.querySelectorAll("img").length;
const before = count();
const t0 = performance.now();
document.querySelector('#grid-sentinel').scrollIntoView({block: 'end'});
(function poll() {
  if (count() > before) requestAnimationFrame(() => done([performance.now() - t0, count()]));
  else if (performance.now() - t0 > 10000) done([null, count()]);
  else setTimeout(poll, 5);
})();
"""


def make_images(folder: Path, count: int) -> dict[str, int]:
    """Hard links of the shared images, ``count`` in all, in one folder per class; returns images per class."""
    sources: list[tuple[str, Path]] = []
    for name in DATASETS:
        for split in ("train", "val"):
            for cls in sorted(p for p in (SHARED / name / split).iterdir() if p.is_dir()):
                sources += [
                    (f"{name}_{cls.name}", f) for f in sorted(cls.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES
                ]
    counts: dict[str, int] = {}
    for i in range(count):
        cls, src = sources[i % len(sources)]
        dst = folder / cls / f"{i // len(sources):03d}_{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dst)
        counts[cls] = counts.get(cls, 0) + 1
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(project: Path, *extra: str) -> tuple[subprocess.Popen, str, float]:
    """A ``graft app`` process on a free loopback port; (process, URL, seconds until it answered)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "graft", "app", str(project), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"graft app exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            urllib.request.urlopen(url + "api/project", timeout=5).read()
            return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.2)


def first_screen(driver: Any, url: str) -> float:
    """A fresh load of ``/#data`` (from a blank page, so the app is loaded again) until its first screen is painted;
    milliseconds from navigation."""
    driver.get("about:blank")
    driver.get(url + "#data")
    return driver.execute_async_script(FIRST_SCREEN_JS)


def learner_done(url: str, limit_s: float = 1800) -> float:
    """Seconds until the app's learner has read every image and fitted its first head."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        with urllib.request.urlopen(url + "api/project", timeout=30) as r:
            if json.loads(r.read())["model"]["status"] == "ready":
                break
        time.sleep(2)
    return time.perf_counter() - t0


def measure_page(url: str) -> dict:
    """First screens while the learner reads the images (cold thumbnails, then warm), again once it is done, and
    10 scrolls of the first view's grid."""
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import chromium, console_errors

    out: dict = {}
    with chromium(width=1280, height=800) as driver:
        driver.set_script_timeout(60)
        out["busy_cold"] = first_screen(driver, url)
        out["busy_warm"] = first_screen(driver, url)
        out["learner_s"] = learner_done(url)
        out["idle_warm"] = first_screen(driver, url)
        out["scrolls"] = [driver.execute_async_script(SCROLL_JS) for _ in range(10)]
        out["errors"] = console_errors(driver)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="make the images and project here, and keep them")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_app_")) if args.keep is None else args.keep
    os.environ.setdefault("GRAFT_CACHE_DIR", str(tmp / "cache"))
    try:
        images, project = tmp / "images", tmp / "project"
        counts = make_images(images, args.images) if not images.exists() else {}
        counts = counts or {p.name: sum(1 for _ in p.iterdir()) for p in images.iterdir()}
        first = min(counts)
        proc, url, imported = start_app(project, "--data", str(images))
        proc.terminate()
        proc.wait()
        proc, url, started = start_app(project)
        try:
            page = measure_page(url)
        finally:
            proc.terminate()
            proc.wait()
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    times = sorted(s[0] for s in page["scrolls"] if s[0] is not None)
    median = times[len(times) // 2] if times else float("nan")
    text = (
        f"{sum(counts.values()):,} images in {len(counts)} classes; the Data page's first view, the grid of {first} "
        f"({counts[first]:,} images), at 1280x800, in headless Chromium on the same machine\n\n"
        "| measure | figure |\n| --- | --- |\n"
        f"| import (graft app --data, until it answers) | {imported:.1f} s |\n"
        f"| start-up on the made project | {started:.1f} s |\n"
        f"| first screen while the learner reads the images, thumbnails made | {page['busy_cold']:.0f} ms |\n"
        f"| first screen while the learner reads the images, thumbnails cached | {page['busy_warm']:.0f} ms |\n"
        f"| the learner's first head (every image's features) | {page['learner_s']:.0f} s after the first screens |\n"
        f"| first screen once the learner is done, thumbnails cached | {page['idle_warm']:.0f} ms |\n"
        f"| 10 scrolls to the end: the next page of 100 in the grid, median / max | {median:.0f} / "
        f"{max(times, default=float('nan')):.0f} ms ({len(times)} of 10 loaded a page) |\n"
        f"| thumbnails in the grid after 10 scrolls | {page['scrolls'][-1][1]:,} |\n"
        f"| console errors | {len(page['errors'])} |\n"
    )
    print(text)
    if args.record:
        sys.path.insert(0, str(ROOT))
        from benchmarks.results import record

        record(
            "graft app with 20,000 images (bench_app)",
            text,
            {
                "graft app Data page (bench_app)": (
                    f"{sum(counts.values()):,} images: first screen {page['busy_cold']:.0f} ms (thumbnails made, "
                    f"learner busy), {page['idle_warm']:.0f} ms (cached, learner done); the next page of 100 on "
                    f"scrolling in {median:.0f} ms (median)"
                )
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
