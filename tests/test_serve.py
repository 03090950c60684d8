"""Tests of graft.serve: the real server in a subprocess on loopback (valid images, every refusal, concurrency),
the page in headless Chromium, and the request time limit in process."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

import graft
from graft.config import ServeConfig
from graft.errors import ConfigError
from graft.serve import ServeError, bind, is_loopback

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def server(frozen_run, tmp_path_factory) -> Iterator[str]:
    """``graft serve RUN --port 0`` in a subprocess, with the default limits; yields its base URL."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = os.environ | {"GRAFT_OFFLINE": "1", "GRAFT_NO_PROGRESS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graft", "serve", str(frozen_run.run_dir), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            assert proc.poll() is None, f"graft serve exited with {proc.returncode}:\n{text}"
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", text)
            if m and "Application startup complete" in text:
                url = m.group(1)
                break
            time.sleep(0.2)
        assert url, f"graft serve did not start in 90 s:\n{log.read_text(errors='replace')}"
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal so the parent sees how it ended
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text(errors="replace")
    assert "Application shutdown complete" in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def clf(frozen_run):
    return graft.load(frozen_run.run_dir, device="cpu")


@pytest.fixture(scope="module")
def samples(hymenoptera, clf) -> list[tuple[Path, str, float]]:
    """Three bees and three ants, with graft's own top-1 label and probability for each."""
    paths = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:3] + sorted((hymenoptera / "val/ants").glob("*.jpg"))[:3]
    return [(p, pred[0].label, pred[0].probability) for p, pred in zip(paths, clf.predict(paths, top_k=1), strict=True)]


def a_png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header (signature, IHDR with a correct CRC) declaring ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def check_serving(url: str, bee: Path) -> None:
    r = httpx.post(f"{url}/predict", content=bee.read_bytes(), timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "bees"


# --- the API -----------------------------------------------------------------------------------------------------


def test_valid_images_give_graft_labels(server, samples) -> None:
    with httpx.Client(base_url=server, timeout=30) as client:
        for path, label, probability in samples:
            raw = client.post("/predict", content=path.read_bytes())
            assert raw.status_code == 200, raw.text
            body = raw.json()
            assert body["label"] == label == path.parent.name
            assert body["probability"] == pytest.approx(probability, abs=1e-4)
            assert [p["label"] for p in body["predictions"]] == [label, {"bees": "ants", "ants": "bees"}[label]]
            assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-5)
            assert raw.headers["cache-control"] == "no-store" and raw.headers["x-content-type-options"] == "nosniff"

            # multipart, with a wrong declared type and name: the content decides
            files = {"file": ("upload.txt", path.read_bytes(), "text/plain")}
            form = client.post("/predict", files=files, params={"top_k": 1})
            assert form.status_code == 200, form.text
            assert form.json()["label"] == label and len(form.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("text file", 415, "not an image: the file contains text"),
        ("truncated JPEG", 422, "truncated"),
        ("PNG declaring 100000x100000", 413, "10,000,000,000 pixels"),
        ("empty body", 400, "empty request body"),
        ("oversize body", 413, "at most 20 MB"),
        ("multipart without a file", 400, "no file"),
        ("empty multipart file", 400, "0 bytes"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message_and_the_server_goes_on(server, hymenoptera, name, status, words):
    bee = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    kwargs = {
        "text file": {"content": b"just some notes, not a picture\n" * 10},
        "truncated JPEG": {"content": bee.read_bytes()[:6000]},
        "PNG declaring 100000x100000": {"content": a_png_declaring(100_000, 100_000)},
        "empty body": {"content": b""},
        "oversize body": {"content": os.urandom(20_000_001)},
        "multipart without a file": {"files": {"note": (None, b"hello")}},  # a form with a text field only
        "empty multipart file": {"files": {"file": ("bee.jpg", b"", "image/jpeg")}},
    }[name]
    r = httpx.post(f"{server}/predict", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    check_serving(server, bee)


def test_health_and_model(server, frozen_run) -> None:
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == frozen_run.run_dir.name
    model = httpx.get(f"{server}/model").json()
    assert model["classes"] == ["ants", "bees"] and model["arch"] == "mobilenet_v2" and model["mode"] == "freeze"
    assert model["metrics"]["best_val_acc"] == frozen_run.metrics["best_val_acc"]
    assert model["preprocess"]["input_size"] == 224 and model["top_k"] == 2
    assert model["limits"] == {
        "max_upload_bytes": 20_000_000,
        "max_pixels": 64_000_000,
        "timeout_s": 30.0,
        "max_batch": 16,
    }
    assert "file" not in model["pretrained"]  # no local paths leak


def test_concurrent_requests_are_all_served(server, samples) -> None:
    payloads = [(path.read_bytes(), label) for path, label, _ in samples]

    def client(i: int) -> list[bool]:
        with httpx.Client(base_url=server, timeout=60) as c:
            return [c.post("/predict", content=data).json()["label"] == label for data, label in payloads[i % 2 :: 2]]

    with ThreadPoolExecutor(8) as pool:
        results = [ok for oks in pool.map(client, range(8)) for ok in oks]
    assert len(results) == 8 * 3 and all(results)


def test_page_is_served_with_a_strict_policy(server) -> None:
    r = httpx.get(f"{server}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    script = re.search(r"<script>(.*?)</script>", r.text, flags=re.S).group(1)
    assert base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() in csp
    assert "http://" not in r.text and "https://" not in r.text  # nothing loaded from elsewhere


# --- the page, in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium and chromium-driver are not installed (make browser installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_classifies_an_uploaded_bee(server, browser, hymenoptera, frozen_run, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{server}/")
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: d.find_element(By.ID, "title").text == frozen_run.run_dir.name)  # /model was fetched
    assert "mobilenet_v2" in driver.find_element(By.ID, "about").text

    bee = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    driver.find_element(By.ID, "file").send_keys(str(bee))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
    rows = driver.find_elements(By.CSS_SELECTOR, "#results li")
    assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == ["bees", "ants"]
    assert driver.find_element(By.ID, "status").text.startswith("bees (")
    assert driver.execute_script("return document.getElementById('preview').naturalWidth") > 0  # the image shows
    bar_width = "return parseFloat(document.querySelector('#results .bar span').style.width)"
    wait.until(lambda d: d.execute_script(bar_width) > 50)  # the top bar is drawn to its probability

    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    wait.until(lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"))
    assert "not an image" in driver.find_element(By.ID, "status").text
    assert driver.find_elements(By.CSS_SELECTOR, "#results li") == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "predict" not in e["message"]] == []


# --- in process: the time limit, configuration, binding ----------------------------------------------------------


def test_a_request_over_the_time_limit_gets_408(clf, frozen_run, hymenoptera) -> None:
    from fastapi.testclient import TestClient

    from graft.serve import create_app

    app = create_app(clf, ServeConfig(run=frozen_run.run_dir, timeout=1e-4))
    with TestClient(app) as client:
        r = client.post("/predict", content=(hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes())
        assert r.status_code == 408 and "--timeout" in r.json()["detail"]
        assert client.get("/health").json()["status"] == "ok"


def test_serve_config_and_binding() -> None:
    cfg = ServeConfig(run=Path("runs/x"))
    assert cfg.host == "127.0.0.1" and cfg.max_upload_bytes == 20_000_000
    with pytest.raises(ConfigError, match="--port"):
        ServeConfig(run=Path("runs/x"), port=70000)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ServeError, match="choose another --port"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()
