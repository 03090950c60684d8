"""Tests of graft.commands.serve: the real server in a subprocess on loopback, with an API key (valid images, every
refusal, the key checks, concurrency), the page in headless Chromium (with and without a key), the refusal to
start on a non-loopback host without a key, and the request time limit in process."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import secrets
import signal
import socket
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
from servers import uvicorn_thread

import graft
from graft.commands.serve import (
    ServeError,
    allowed_hosts,
    bind,
    create_app,
    host_check,
    host_name,
    is_loopback,
    resolve_api_key,
)
from graft.core.config import ServeConfig
from graft.core.errors import ConfigError
from graft.deploy.serving import decode_workers

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = secrets.token_urlsafe(24)  # the module server's key, given as $GRAFT_API_KEY
AUTH = {"Authorization": f"Bearer {KEY}"}
TEST_NET = "192.0.2.1"  # documentation-only address (RFC 5737): not on this machine, so binding it fails


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a ``graft serve`` subprocess: offline, and no API key unless given here."""
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_API_KEY"}
    return env | {"GRAFT_OFFLINE": "1", "GRAFT_NO_PROGRESS": "1"} | extra


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve") / "server.log"


@pytest.fixture(scope="module")
def server(frozen_run, server_log) -> Iterator[str]:
    """``graft serve RUN --port 0`` in a subprocess with ``GRAFT_API_KEY=KEY`` and the default limits; yields its
    base URL."""
    with running(frozen_run.run_dir, server_log) as url:
        yield url


@contextlib.contextmanager
def running(run_dir: Path, log: Path, *args: str) -> Iterator[str]:
    """``graft serve RUN --port 0 ARGS`` in a subprocess with ``GRAFT_API_KEY=KEY``, until it has started; yields
    its base URL, and checks that it stops cleanly."""
    env = serve_env(GRAFT_API_KEY=KEY)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graft", "serve", str(run_dir), "--port", "0", "--device", "cpu", *args],
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
    assert KEY not in log.read_text(errors="replace")  # every request of the module went by, 401s included


@pytest.fixture(scope="module")
def clf(frozen_run):
    return graft.load(frozen_run.run_dir, device="cpu")


@contextlib.contextmanager
def serving(clf, cfg: ServeConfig) -> Iterator[str]:
    """``create_app(clf, cfg)`` on a real loopback socket, served by uvicorn in a thread; yields its base URL."""
    with uvicorn_thread(create_app(clf, cfg)) as url:
        yield url


@pytest.fixture(scope="module")
def open_server(clf, frozen_run) -> Iterator[str]:
    """The app without a key (loopback's default), on a real loopback socket."""
    with serving(clf, ServeConfig(run=frozen_run.run_dir, device="cpu")) as url:
        yield url


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
    r = httpx.post(f"{url}/predict", content=bee.read_bytes(), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["label"] == "bees"


# --- the API -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
def test_valid_images_give_graft_labels(server, samples) -> None:
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
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


@pytest.mark.slow
@pytest.mark.subprocess
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
    r = httpx.post(f"{server}/predict", headers=AUTH, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    check_serving(server, bee)


@pytest.mark.slow
@pytest.mark.subprocess
def test_health_and_model(server, frozen_run) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}  # without the key: nothing about the run
    health = httpx.get(f"{server}/health", headers=AUTH).json()
    assert health["status"] == "ok" and health["model"] == frozen_run.run_dir.name and health["requests"] >= 0
    model = httpx.get(f"{server}/model", headers=AUTH).json()
    assert model["classes"] == ["ants", "bees"] and model["arch"] == "mobilenet_v2" and model["mode"] == "freeze"
    assert model["metrics"]["best_val_acc"] == frozen_run.metrics["best_val_acc"]
    assert model["preprocess"]["input_size"] == 224 and model["top_k"] == 2
    assert model["limits"] == {
        "max_upload_bytes": 20_000_000,
        "max_pixels": 64_000_000,
        "max_decoded_bytes": 512_000_000,
        "timeout_s": 30.0,
        "max_batch": 16,
    }
    assert "file" not in model["pretrained"]  # no local paths leak


# --- the API key ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(("method", "path"), [("POST", "/predict"), ("GET", "/model"), ("GET", "/openapi.json")])
def test_requests_without_the_right_key_get_401(server, hymenoptera, method, path) -> None:
    bee = (hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes()
    wrong = secrets.token_urlsafe(24)
    cases = {
        "no key": ({}, "needs an API key"),
        "wrong Bearer": ({"Authorization": f"Bearer {wrong}"}, "wrong API key"),
        "wrong X-API-Key": ({"X-API-Key": wrong}, "wrong API key"),
        "the key under another scheme": ({"Authorization": f"Basic {KEY}"}, "needs an API key"),
        "a prefix of the key": ({"X-API-Key": KEY[:-1]}, "wrong API key"),
        "Bearer without a token": ({"Authorization": "Bearer"}, "needs an API key"),
    }
    for case, (headers, words) in cases.items():
        r = httpx.request(method, f"{server}{path}", headers=headers, content=bee if method == "POST" else None)
        assert r.status_code == 401, (case, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.headers["content-type"] == "application/json", case
        assert words in r.json()["detail"] and "X-API-Key: KEY" in r.json()["detail"], case
        assert KEY not in r.text and wrong not in r.text, case
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store", case


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_key_is_accepted_as_bearer_or_x_api_key(server, hymenoptera) -> None:
    bee = (hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes()
    for headers in (AUTH, {"X-API-Key": KEY}, {"authorization": f"bearer {KEY}"}):
        r = httpx.post(f"{server}/predict", content=bee, headers=headers, timeout=30)
        assert r.status_code == 200, (headers.keys(), r.text)
        assert r.json()["label"] == "bees"
        assert httpx.get(f"{server}/model", headers=headers).json()["classes"] == ["ants", "bees"]
    # one right credential is enough, whichever header holds it
    wrong = {"Authorization": "Bearer not-the-key", "X-API-Key": KEY}
    assert httpx.post(f"{server}/predict", content=bee, headers=wrong, timeout=30).status_code == 200


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_refused_upload_is_answered_before_its_body_is_read(server) -> None:
    r = httpx.post(f"{server}/predict", content=os.urandom(8_000_000), headers={"X-API-Key": "nope"}, timeout=60)
    assert r.status_code == 401 and "wrong API key" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_health_and_the_page_stay_open(server) -> None:
    health = httpx.get(f"{server}/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and 'id="keyform"' in page.text  # static; the page asks for the key itself
    assert KEY not in page.text
    assert httpx.get(f"{server}/favicon.ico").status_code == 204
    assert httpx.get(f"{server}/no-such-page").status_code == 401  # no route list without the key


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_key_is_never_shown(server, server_log, hymenoptera) -> None:
    # the key came from $GRAFT_API_KEY: not in the banner, the access log, the model's description or the schema
    bee = (hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes()
    assert httpx.post(f"{server}/predict", content=bee, headers={"X-API-Key": KEY[::-1]}).status_code == 401
    assert httpx.post(f"{server}/predict", content=bee, headers=AUTH, timeout=30).status_code == 200
    deadline = time.monotonic() + 10
    while 'HTTP/1.1" 200' not in server_log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)  # the access log line follows the answer
    text = server_log.read_text(errors="replace")
    assert re.search(r"on http://127\.0\.0\.1:\d+/ \(API key required; Ctrl-C stops\)", text), text
    assert 'POST /predict HTTP/1.1" 401' in text and 'POST /predict HTTP/1.1" 200' in text  # requests were logged
    assert KEY not in text
    for path in ("/model", "/openapi.json", "/health"):
        assert KEY not in httpx.get(f"{server}{path}", headers=AUTH).text


@pytest.mark.slow
def test_without_a_key_loopback_serves_everyone(open_server, hymenoptera) -> None:
    bee = (hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes()
    r = httpx.post(f"{open_server}/predict", content=bee, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == "bees"
    assert httpx.get(f"{open_server}/model").status_code == 200
    # a key sent to a server without one is ignored
    assert httpx.post(f"{open_server}/predict", content=bee, headers=AUTH, timeout=30).status_code == 200


@pytest.mark.slow
def test_an_api_key_in_the_config_protects_a_loopback_server(clf, frozen_run, hymenoptera) -> None:
    key = secrets.token_hex(16)
    bee = (hymenoptera / "val/bees/72100438_73de9f17af.jpg").read_bytes()
    with serving(clf, ServeConfig(run=frozen_run.run_dir, device="cpu", api_key=key)) as url:
        assert httpx.post(f"{url}/predict", content=bee, timeout=30).status_code == 401
        assert httpx.post(f"{url}/predict", content=bee, headers=AUTH, timeout=30).status_code == 401
        assert httpx.post(f"{url}/predict", content=bee, headers={"X-API-Key": key}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.slow
@pytest.mark.subprocess
def test_concurrent_requests_are_all_served(server, samples) -> None:
    payloads = [(path.read_bytes(), label) for path, label, _ in samples]

    def client(i: int) -> list[bool]:
        with httpx.Client(base_url=server, headers=AUTH, timeout=60) as c:
            return [c.post("/predict", content=data).json()["label"] == label for data, label in payloads[i % 2 :: 2]]

    with ThreadPoolExecutor(8) as pool:
        results = [ok for oks in pool.map(client, range(8)) for ok in oks]
    assert len(results) == 8 * 3 and all(results)


@pytest.mark.slow
@pytest.mark.subprocess
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


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.browser
def test_page_asks_for_the_key_then_classifies_an_uploaded_bee(
    server, browser, hymenoptera, frozen_run, tmp_path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{server}/")
    wait = WebDriverWait(driver, 30)
    key_field = driver.find_element(By.ID, "key")
    wait.until(lambda d: key_field.is_displayed())  # /model answered 401: the page asks for the key
    assert driver.find_element(By.ID, "title").text == "graft" and "API key" in driver.find_element(By.ID, "about").text

    key_field.send_keys("not-the-key\n")
    wait.until(lambda d: "refused" in d.find_element(By.ID, "keymsg").text)
    assert key_field.is_displayed() and key_field.get_attribute("value") == ""
    assert driver.execute_script("return sessionStorage.getItem('graft-api-key')") is None  # a refused key is dropped

    key_field.send_keys(KEY + "\n")
    wait.until(lambda d: d.find_element(By.ID, "title").text == frozen_run.run_dir.name)  # /model was fetched
    assert "mobilenet_v2" in driver.find_element(By.ID, "about").text
    assert not key_field.is_displayed() and driver.find_element(By.ID, "forget").is_displayed()
    assert driver.execute_script("return sessionStorage.getItem('graft-api-key')") == KEY  # this tab only
    assert KEY not in driver.page_source  # the field was cleared; the key is nowhere in the document

    classify_a_bee_then_a_text_file(driver, hymenoptera, tmp_path)

    driver.refresh()  # the tab keeps the key
    wait.until(lambda d: d.find_element(By.ID, "title").text == frozen_run.run_dir.name)
    assert not driver.find_element(By.ID, "key").is_displayed()
    driver.find_element(By.ID, "forget").click()
    wait.until(lambda d: d.find_element(By.ID, "key").is_displayed())
    assert driver.execute_script("return sessionStorage.getItem('graft-api-key')") is None
    assert not driver.find_element(By.ID, "forget").is_displayed()
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    # the only errors are the refusals the test provoked (Chromium logs every 4xx answer to fetch)
    assert [m for m in severe if not re.search(r"/(model|predict)\S* - Failed to load resource.* 4(01|15)", m)] == []


@pytest.mark.slow
@pytest.mark.browser
def test_page_without_a_key_classifies_at_once(open_server, browser, hymenoptera, frozen_run, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(f"{open_server}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "title").text == frozen_run.run_dir.name)
    assert not driver.find_element(By.ID, "key").is_displayed()
    assert not driver.find_element(By.ID, "forget").is_displayed()
    classify_a_bee_then_a_text_file(driver, hymenoptera, tmp_path)
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert [m for m in severe if "predict" not in m] == []


def classify_a_bee_then_a_text_file(driver, hymenoptera: Path, tmp_path: Path) -> None:
    """Drop a bee on the page (the file input), then a text file: the bars, then the server's refusal."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 30)
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


# --- in process: the time limit, configuration, binding ----------------------------------------------------------


@pytest.mark.slow
def test_a_request_over_the_time_limit_gets_408(clf, frozen_run, hymenoptera) -> None:
    from fastapi.testclient import TestClient

    app = create_app(clf, ServeConfig(run=frozen_run.run_dir, timeout=1e-4, device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
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
    assert decode_workers() >= 2  # one heavy upload never holds every decoding thread
    # the Host names answered: loopback, the address listened on, --allowed-host (comma lists, ports dropped)
    hosts = ServeConfig(run=Path("runs/x"), host="192.0.2.7", allowed_host=("A.example, b.example:81", "::5"))
    assert hosts.allowed_host == ("a.example", "b.example:81", "::5")
    assert allowed_hosts(hosts) == {"localhost", "127.0.0.1", "[::1]", "192.0.2.7", "a.example", "b.example", "[::5]"}
    assert host_name("[::1]:8000") == "[::1]" and host_name("Example.ORG:80") == "example.org"
    # listening on every address: any address is answered (it cannot be rebound by DNS), names only when allowed
    everywhere = host_check(ServeConfig(run=Path("runs/x"), host="0.0.0.0", api_key=KEY, allowed_host=("a.example",)))
    assert all(map(everywhere, ("192.168.1.4:8000", "[fe80::1]", "localhost", "a.example:80", "127.0.0.1")))
    assert not any(map(everywhere, ("0.0.0.0:8000", "[::]", "evil.example", "192.168.1.4.evil.example")))
    loopback = host_check(ServeConfig(run=Path("runs/x")))
    assert loopback("127.0.0.1:8000") and not loopback("192.168.1.4") and not loopback("0.0.0.0")
    with pytest.raises(ConfigError, match="--allowed-host takes host names"):
        ServeConfig(run=Path("runs/x"), allowed_host=("http://a.example/",))
    with pytest.raises(ConfigError, match="--header-timeout"):
        ServeConfig(run=Path("runs/x"), header_timeout=float("inf"))
    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ServeError, match="choose another --port"):
            bind("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


def test_api_key_options() -> None:
    run = Path("runs/x")
    key = secrets.token_urlsafe(24)
    assert key not in repr(ServeConfig(run=run, api_key=key))  # a printed config or a traceback shows no key
    with pytest.raises(ConfigError, match="--api-key and --no-auth contradict"):
        ServeConfig(run=run, api_key=key, auth=False)
    for bad in ("", "two words", "clé"):
        with pytest.raises(ConfigError, match=r"--api-key (is empty|must be printable ASCII)") as e:
            ServeConfig(run=run, api_key=bad)
        assert bad == "" or bad not in str(e.value)

    env = {"GRAFT_API_KEY": key}
    # the command line first, then the environment; --no-auth ignores both
    assert resolve_api_key(ServeConfig(run=run, api_key="from-the-command-line"), env) == "from-the-command-line"
    assert resolve_api_key(ServeConfig(run=run), env) == key
    assert resolve_api_key(ServeConfig(run=run, host="0.0.0.0"), env) == key
    assert resolve_api_key(ServeConfig(run=run, host="0.0.0.0", auth=False), env) is None
    assert resolve_api_key(ServeConfig(run=run), {}) is None  # loopback may go without
    assert resolve_api_key(ServeConfig(run=run, auth=False), {}) is None
    for host in ("0.0.0.0", "::", "192.168.1.4", "example.org", ""):
        with pytest.raises(ServeError, match=r"GRAFT_API_KEY=.*--no-auth"):
            resolve_api_key(ServeConfig(run=run, host=host), {"GRAFT_API_KEY": ""})  # empty counts as unset
    with pytest.raises(ServeError, match=r"\$GRAFT_API_KEY must be printable ASCII") as e:
        resolve_api_key(ServeConfig(run=run), {"GRAFT_API_KEY": "secret with spaces"})
    assert "secret" not in str(e.value)

    # off loopback a key must be long enough not to be guessed; on loopback any key will do
    short = secrets.token_urlsafe(11)  # 15 characters
    for host in ("0.0.0.0", "::", "192.168.1.4"):
        with pytest.raises(ConfigError, match=r"--api-key is 15 characters long: .* at least 16") as e:
            ServeConfig(run=run, host=host, api_key=short)
        assert "secrets.token_urlsafe(32)" in str(e.value) and short not in str(e.value)
        with pytest.raises(ServeError, match=r"\$GRAFT_API_KEY is 15 characters long"):
            resolve_api_key(ServeConfig(run=run, host=host), {"GRAFT_API_KEY": short})
        assert resolve_api_key(ServeConfig(run=run, host=host), {"GRAFT_API_KEY": short + "x"}) == short + "x"
    assert resolve_api_key(ServeConfig(run=run, host="localhost", api_key="k"), {}) == "k"


def graft_serve(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``graft serve ARGS`` as a user runs it, to its exit (these cases never get to listen)."""
    return subprocess.run(
        [sys.executable, "-m", "graft", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("host", ["0.0.0.0", "::", TEST_NET])
def test_a_non_loopback_host_without_a_key_refuses_to_start(frozen_run, host) -> None:
    proc = graft_serve(str(frozen_run.run_dir), "--host", host, "--port", "0", "--device", "cpu", env=serve_env())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: --host {host} "), proc.stderr
    assert "GRAFT_API_KEY=" in proc.stderr and "--no-auth" in proc.stderr and "--host 127.0.0.1" in proc.stderr
    assert "Application startup" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_key_options_are_one_error_line(frozen_run) -> None:
    key = secrets.token_urlsafe(24)
    run = str(frozen_run.run_dir)
    cases = [
        (["--api-key", key, "--no-auth"], serve_env(), "error: --api-key and --no-auth contradict each other"),
        (["--api-key", ""], serve_env(), "error: --api-key is empty"),
        ([], serve_env(GRAFT_API_KEY=f"{key} {key}"), "error: $GRAFT_API_KEY must be printable ASCII"),
        (["--host", "0.0.0.0", "--api-key", key[:10]], serve_env(), "error: --api-key is 10 characters long"),
        (["--host", "0.0.0.0"], serve_env(GRAFT_API_KEY=key[:10]), "error: $GRAFT_API_KEY is 10 characters long"),
    ]
    for args, env, words in cases:
        proc = graft_serve(run, "--port", "0", "--device", "cpu", *args, env=env)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(words), proc.stderr
        assert key[:10] not in proc.stderr
        if "characters long" in words:
            assert "python -c 'import secrets; print(secrets.token_urlsafe(32))'" in proc.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("how", ["--no-auth", "--api-key", "GRAFT_API_KEY"])
def test_a_non_loopback_host_starts_with_a_key_or_no_auth(frozen_run, how) -> None:
    """Past the key check, the server loads the model and binds: on an address this machine does not have, binding
    fails (so nothing listens beyond loopback), which shows that the key check let it through."""
    key = secrets.token_urlsafe(24)
    args = {"--no-auth": ["--no-auth"], "--api-key": ["--api-key", key], "GRAFT_API_KEY": []}[how]
    env = serve_env(GRAFT_API_KEY=key) if how == "GRAFT_API_KEY" else serve_env()
    proc = graft_serve(str(frozen_run.run_dir), "--host", TEST_NET, "--port", "0", "--device", "cpu", *args, env=env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and lines[-1].startswith(f"error: cannot listen on {TEST_NET}:0"), proc.stderr
    warnings = [line for line in lines if line.startswith("warning:")]
    if how == "--no-auth":  # one line, before the model loads
        assert lines[0] == warnings[0] and len(warnings) == 1, proc.stderr
        assert f"--no-auth on {TEST_NET}: anyone who can reach this machine can use the model" in warnings[0]
    else:
        assert warnings == [], proc.stderr
    assert key not in proc.stderr + proc.stdout


# --- slow clients, Host names, decoding: a server with small limits ----------------------------------------------

HEADER_TIMEOUT = 3.0
HALF_HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


@pytest.fixture(scope="module")
def guarded_server(frozen_run, tmp_path_factory) -> Iterator[str]:
    """``graft serve`` with a 3 s header time limit, 50 connections per client, 2 MB of decoding per image, and
    three more Host names (a comma list, then the option repeated)."""
    log = tmp_path_factory.mktemp("guarded") / "server.log"
    limits = ["--header-timeout", f"{HEADER_TIMEOUT:g}", "--max-client-connections", "50", "--max-decoded-mb", "2"]
    hosts = ["--allowed-host", "a.example,B.example", "--allowed-host", "c.example:8080"]
    with running(frozen_run.run_dir, log, *limits, *hosts) as url:
        yield url


def half_headers(url: str, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request header and hold."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(HALF_HEADER)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed ``s`` (looked at without waiting)."""
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


def close_times(socks: list[socket.socket], start: float, limit: float) -> list[float | None]:
    """Seconds from ``start`` at which the server closed each of ``socks`` (None: still open after ``limit`` s)."""
    when: list[float | None] = [None] * len(socks)
    while any(t is None for t in when) and time.monotonic() - start < limit:
        for i, s in enumerate(socks):
            if when[i] is None and closed_by_server(s):
                when[i] = time.monotonic() - start
        time.sleep(0.05)
    for s in socks:
        s.close()
    return when


@pytest.mark.slow
@pytest.mark.subprocess
def test_half_header_connections_cannot_hold_the_server(guarded_server, hymenoptera) -> None:
    bee = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    check_serving(guarded_server, bee)  # the model's first run is not what is measured
    host, port = guarded_server.removeprefix("http://").rsplit(":", 1)
    served_once = socket.create_connection((host, int(port)), timeout=10)  # keep-alive, then half a header
    served_once.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert served_once.recv(4096).startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    held = half_headers(guarded_server, 40)
    served_once.sendall(HALF_HEADER)

    t0 = time.monotonic()
    r = httpx.post(f"{guarded_server}/predict", content=bee.read_bytes(), headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["label"] == "bees", r.text
    assert time.monotonic() - t0 < 2.0
    assert httpx.get(f"{guarded_server}/health").json() == {"status": "ok"}
    if time.monotonic() - start < HEADER_TIMEOUT - 0.5:
        assert not any(closed_by_server(s) for s in held)  # they were held all along: the limit did the work

    when = close_times([*held, served_once], start, HEADER_TIMEOUT + 3)
    assert all(t is not None and HEADER_TIMEOUT - 0.5 <= t <= HEADER_TIMEOUT + 2 for t in when), when
    check_serving(guarded_server, bee)


@pytest.mark.slow
@pytest.mark.subprocess
def test_one_client_address_holds_at_most_its_connection_cap(guarded_server, hymenoptera) -> None:
    held = half_headers(guarded_server, 60)
    time.sleep(0.5)
    closed = [closed_by_server(s) for s in held]
    assert closed == [True] * 10 + [False] * 50, closed  # each one over 50 closed the oldest waiting one
    check_serving(guarded_server, hymenoptera / "val/bees/72100438_73de9f17af.jpg")  # makes room the same way
    for s in held:
        s.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_only_loopback_and_allowed_host_names_are_answered(server, guarded_server) -> None:
    for host in ("127.0.0.1", "localhost:8000", "LOCALHOST", "[::1]:80", "127.0.0.1:1"):
        r = httpx.get(f"{server}/health", headers={"Host": host})
        assert r.status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "a.example", "[::2]", "0.0.0.0"):
        for path in ("/health", "/", "/model"):
            r = httpx.get(f"{server}{path}", headers={"Host": host} | AUTH)
            assert r.status_code == 400 and "--allowed-host NAME" in r.json()["detail"], (host, path)
            assert r.headers["x-content-type-options"] == "nosniff"
    for host in ("a.example", "b.example:9000", "c.example", "localhost"):
        assert httpx.get(f"{guarded_server}/model", headers={"Host": host} | AUTH).status_code == 200, host
    assert httpx.get(f"{guarded_server}/health", headers={"Host": "d.example"}).status_code == 400


def image_bytes(mode: str, size: int, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (size, size), 300 if mode != "RGB" else (120, 80, 40)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("mode", "size", "fmt", "status"),
    [
        ("F", 400, "TIFF", 413),  # 16 bytes a pixel to decode and convert: 2.6 MB
        ("I;16", 420, "PNG", 413),  # 14 bytes a pixel: 2.5 MB
        ("RGB", 420, "PNG", 200),  # the same pixels in 8-bit RGB: 6 bytes a pixel, 1.1 MB
        ("F", 300, "TIFF", 200),  # 1.4 MB (a constant 300: out of 0..255, clipped)
    ],
)
def test_decoding_is_bounded_in_bytes_by_the_pixel_format(guarded_server, mode, size, fmt, status) -> None:
    r = httpx.post(f"{guarded_server}/predict", content=image_bytes(mode, size, fmt), headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    if status == 413:
        assert "--max-decoded-mb" in r.json()["detail"] and f"{size}x{size} pixels ({mode})" in r.json()["detail"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_heavy_image_does_not_stall_the_others(server, hymenoptera) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000)).save(buf, "PNG")  # 140 KB that take ~1 s to decode
    bee = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    check_serving(server, bee)

    def post_heavy() -> tuple[int, float]:
        r = httpx.post(f"{server}/predict", content=buf.getvalue(), headers=AUTH, timeout=60)
        return r.status_code, time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        heavy = pool.submit(post_heavy)
        time.sleep(0.2)  # the heavy one is decoding
        check_serving(server, bee)
        bee_done = time.monotonic()
        status, heavy_done = heavy.result()
    assert status == 200 and bee_done < heavy_done
