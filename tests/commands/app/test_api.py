"""Tests of graft app's server: the real application on a loopback socket (uvicorn in a thread), real HTTP with
httpx. The security of graft serve (start-up refusal, Host check, API key), uploads and their refusals, labels seen
by a second client, thumbnails of a 20-image project, imports inside and outside the project's folders, and the event
stream."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from servers import uvicorn_thread

from graft.commands.app.server import create_app, open_context, run_app
from graft.commands.serve import ServeError
from graft.core.config import AppConfig

KEY = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_UPLOAD_MB = 0.2
COLOURS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    im = Image.new("RGB", size, colour)
    im.putpixel((seed % size[0], 0), (seed % 256, 0, 0))  # no two files alike
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header (signature, IHDR with its CRC) declaring ``width`` x ``height`` pixels, with no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """data/{cat,dog}/ with 8 images each and pool/ with 4: a 20-image project."""
    root = tmp_path_factory.mktemp("app")
    for name, colour in COLOURS.items():
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            (root / "data" / name / f"{name}{i}.png").write_bytes(png(colour, seed=i))
    (root / "pool").mkdir()
    for i in range(4):
        (root / "pool" / f"p{i}.png").write_bytes(png((40, 200, 40), seed=i))
    (root / "outside").mkdir()
    return {"root": root, "project": root / "project", "data": root / "data", "pool": root / "pool"}


@contextlib.contextmanager
def serving(cfg: AppConfig) -> Iterator[tuple[str, object]]:
    """The app of ``cfg`` (its --data and --pool imported) on a loopback socket, uvicorn in a thread; yields the
    base URL and the app's context."""
    ctx = open_context(cfg, workers=False)
    for folder, pool in ((cfg.data, False), (cfg.pool, True)):
        if folder is not None:
            if pool:
                ctx.store.import_pool(folder)
            else:
                ctx.store.import_data(folder)
    with uvicorn_thread(create_app(cfg, ctx), graceful_s=2) as url:
        yield url, ctx


@pytest.fixture(scope="module")
def app(folders) -> Iterator[tuple[str, object]]:
    cfg = AppConfig(
        project=folders["project"],
        data=folders["data"],
        pool=folders["pool"],
        port=0,
        api_key=KEY,
        max_upload_mb=MAX_UPLOAD_MB,
    )
    with serving(cfg) as served:
        yield served


@pytest.fixture()
def client(app) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app[0], headers=AUTH, timeout=30) as c:
        yield c


def ids(client: httpx.Client, **params: object) -> list[int]:
    r = client.get("/api/images", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return [item["id"] for item in r.json()["items"]]


# ----------------------------------------------------------------------------------------------------------------
# security


def test_off_loopback_start_refused_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAFT_API_KEY", raising=False)
    with pytest.raises(ServeError, match="--no-auth"):
        run_app(AppConfig(project=tmp_path / "p", host="0.0.0.0"))
    assert not (tmp_path / "p").exists()  # refused before any work


@pytest.mark.subprocess
def test_off_loopback_refusal_is_one_error_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_API_KEY"} | {"PYTHONPATH": str(Path.cwd())}
    proc = subprocess.run(
        [sys.executable, "-m", "graft", "app", str(tmp_path / "p"), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--no-auth" in lines[0], proc.stderr
    assert "graft app: http" not in proc.stdout


def test_foreign_host_header_answered_400(app):
    r = httpx.get(f"{app[0]}/api/project", headers={**AUTH, "Host": "attacker.example"})
    assert r.status_code == 400
    assert "--allowed-host" in r.json()["detail"]
    r = httpx.get(f"{app[0]}/", headers={"Host": "attacker.example:8765"})
    assert r.status_code == 400


def test_api_needs_the_key_page_does_not(app):
    url = app[0]
    for path in ("/api/project", "/api/images", "/api/events", "/api/images/1/thumb", "/openapi.json"):
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{url}/api/project", headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert httpx.post(f"{url}/api/label", json={"id": 1, "label": "cat"}).status_code == 401
    assert httpx.get(f"{url}/api/project", headers={"X-API-Key": KEY}).status_code == 200
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert csp.startswith(
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'"
    )
    assert httpx.get(f"{url}/static/app.js").status_code in (200, 404)  # open (the file may not be installed)
    assert httpx.get(f"{url}/static/../api/project").status_code != 200


def test_the_key_cookie_lets_img_tags_load(app, client):
    first = client.get("/api/project")
    cookie = first.cookies.get("graft_app_key")
    assert cookie == KEY and "httponly" in first.headers["set-cookie"].lower()
    assert "set-cookie" not in client.get("/api/project").headers  # once is enough
    image_id = ids(client)[0]
    with httpx.Client(base_url=app[0], cookies={"graft_app_key": KEY}) as browser:
        assert browser.get(f"/api/images/{image_id}/thumb").status_code == 200
    with httpx.Client(base_url=app[0], cookies={"graft_app_key": "wrong"}) as browser:
        assert browser.get(f"/api/images/{image_id}/thumb").status_code == 401


def test_import_outside_the_project_folders_is_403(app, client, folders):
    r = client.post("/api/import", json={"path": str(folders["root"] / "outside")})
    assert r.status_code == 403
    assert "outside the project's folders" in r.json()["detail"]
    r = client.post("/api/import", json={"path": str(folders["data"] / ".." / "outside")})
    assert r.status_code == 403
    before = client.get("/api/project").json()["counts"]["total"]
    r = client.post("/api/import", json={"path": str(folders["data"])})
    assert r.status_code == 200, r.text
    assert client.get("/api/project").json()["counts"]["total"] == before  # the same files: nothing new


# ----------------------------------------------------------------------------------------------------------------
# uploads


def upload(client: httpx.Client, files: list[tuple[str, bytes]], **params: str) -> httpx.Response:
    return client.post("/api/upload", params=params, files=[("files", (n, d)) for n, d in files])


def test_upload_images_and_a_zip(client, folders):
    r = upload(client, [("a.png", png((1, 2, 3))), ("b.jpg", png((3, 2, 1), seed=5))], label="cat")
    assert r.status_code == 200, r.text
    added = r.json()["added"]
    assert len(added) == 2 and r.json()["skipped"] == []
    for image_id in added:
        item = client.get(f"/api/images/{image_id}").json()
        assert item["label"] == "cat" and item["source"] == "upload"
    saved = sorted((folders["project"] / "images").iterdir())
    assert all(p.suffix == ".png" and len(p.stem) == 32 for p in saved)  # new names; the content decides the type

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos/one.png", png((9, 9, 9), seed=1))
        zf.writestr("photos/notes.txt", "not an image")
        zf.writestr("__MACOSX/photos/._one.png", b"\0\1")
    r = upload(client, [("photos.zip", archive.getvalue())], label="dog", source="webcam")
    assert r.status_code == 200, r.text
    assert len(r.json()["added"]) == 1
    assert [s["name"] for s in r.json()["skipped"]] == ["photos.zip/photos/notes.txt"]


def test_upload_refusals_carry_their_status(client, folders):
    before = sorted((folders["project"] / "images").iterdir()) if (folders["project"] / "images").exists() else []
    big = os.urandom(int(MAX_UPLOAD_MB * 1_000_000) + 1000)
    r = upload(client, [("big.png", big)])
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
    r = upload(client, [("fake.jpg", b"hello, I am text pretending to be a JPEG\n" * 10)])
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = upload(client, [("bomb.png", png_header(20_000, 20_000))])
    assert r.status_code == 413 and "--max-pixels" in r.json()["detail"]
    r = upload(client, [("empty.png", b"")])
    assert r.status_code == 400
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.png", png((5, 5, 5)))
        zf.writestr("../../escape.png", png((6, 6, 6)))
    r = upload(client, [("evil.zip", evil.getvalue())])
    assert r.status_code == 400 and "unsafe paths" in r.json()["detail"]
    assert not (folders["project"] / "escape.png").exists() and not (folders["root"] / "escape.png").exists()
    r = upload(client, [("a.png", png((1, 1, 1)))], label="no such class")
    assert r.status_code == 400
    r = client.post("/api/upload", content=png((1, 1, 1)), headers={"Content-Type": "image/png"})
    assert r.status_code == 415
    after = sorted((folders["project"] / "images").iterdir()) if (folders["project"] / "images").exists() else []
    assert after == before  # nothing refused was kept, no temporary file left


def test_upload_keeps_the_good_files_of_a_mixed_request(client):
    r = upload(client, [("good.png", png((7, 7, 7), seed=3)), ("bad.png", b"<html>oops</html>")])
    assert r.status_code == 200
    assert len(r.json()["added"]) == 1
    assert r.json()["skipped"][0]["name"] == "bad.png" and "HTML" in r.json()["skipped"][0]["reason"]


# ----------------------------------------------------------------------------------------------------------------
# labels and images


def test_labels_seen_by_a_second_tab_and_undone(app, client):
    url = app[0]
    pool = ids(client, pool=1)
    assert len(pool) >= 4
    version = client.get("/api/project").json()["version"]
    r = client.post("/api/label", json={"id": pool[0], "label": "dog", "source": "keyboard"})
    assert r.status_code == 200, r.text
    assert r.json()["image"]["label"] == "dog" and r.json()["action"]["new"] == "dog"
    with httpx.Client(base_url=url, headers=AUTH) as tab2:
        assert pool[0] in ids(tab2, label="dog")
        assert pool[0] not in ids(tab2, pool=1)
        assert tab2.get("/api/project").json()["version"] > version
        undone = tab2.post("/api/undo").json()["action"]
        assert undone["source"] == "undo" and undone["image_id"] == pool[0]
    assert pool[0] in ids(client, pool=1)
    r = client.post("/api/exclude", json={"id": pool[1], "excluded": True})
    assert r.status_code == 200
    assert pool[1] in ids(client, excluded=1)
    kinds = [a["kind"] for a in client.get("/api/actions", params={"limit": 5}).json()["items"]]
    assert "exclude" in kinds


def test_classes_routes_and_their_errors(client):
    r = client.post("/api/classes", json={"name": "bird"})
    assert r.status_code == 200
    assert "bird" in [c["name"] for c in r.json()["classes"]]
    r = client.post("/api/classes/rename", json={"old": "bird", "new": "owl"})
    assert [c["name"] for c in r.json()["classes"]].count("owl") == 1
    r = client.post("/api/classes", json={"name": "a/b"})
    assert r.status_code == 400 and r.json()["detail"]
    r = client.post("/api/classes/delete", json={"name": "owl"})
    assert "owl" not in [c["name"] for c in r.json()["classes"]]
    assert client.post("/api/label", json={"id": 10**6, "label": "cat"}).status_code == 404
    assert client.get(f"/api/images/{10**6}/thumb").status_code == 404
    assert client.post("/api/label", json={"id": 1, "label": "cat", "source": "import"}).status_code == 422


def test_project_state(client):
    p = client.get("/api/project").json()
    assert p["name"] == "project"
    assert {c["name"] for c in p["classes"]} >= {"cat", "dog"}
    assert p["counts"]["total"] >= 20
    assert p["model"]["status"] in ("none", "fitting", "ready", "error")


def test_thumbnails_of_a_20_image_project(app, client, folders):
    every = ids(client) + ids(client, pool=1)
    assert len(every) >= 20
    for image_id in every:
        r = client.get(f"/api/images/{image_id}/thumb")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert "max-age" in r.headers["cache-control"]
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.format == "JPEG" and max(im.size) <= 192
        assert (folders["project"] / "thumbs" / f"{image_id}.jpg").is_file()
    again = client.get(f"/api/images/{every[0]}/thumb")
    assert again.content == (folders["project"] / "thumbs" / f"{every[0]}.jpg").read_bytes()
    r = client.get(f"/api/images/{every[0]}/file")
    assert r.status_code == 200
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (64, 48)


# ----------------------------------------------------------------------------------------------------------------
# events


def test_events_stream_publishes_from_any_thread(app):
    url, ctx = app
    ctx.events.keep_alive_s = 0.3
    seen: list[str] = []
    with (
        httpx.Client(base_url=url, headers=AUTH, timeout=10) as c,
        c.stream("GET", "/api/events") as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 10
        while ctx.events.subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        threading.Thread(target=ctx.events.publish, args=("model", {"version": 3})).start()
        for line in r.iter_lines():
            seen.append(line)
            if ": keep-alive" in seen and 'data: {"version":3}' in seen:
                break
    assert "event: model" in seen
    deadline = time.monotonic() + 10
    while ctx.events.subscribers and time.monotonic() < deadline:  # the stream ends with its client
        ctx.events.publish("ping")
        time.sleep(0.05)
    assert ctx.events.subscribers == 0


def test_concurrent_requests_from_many_tabs(app):
    """Labels and thumbnails requested at once from 8 clients: every answer 200, every label kept."""
    url = app[0]
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        cats = ids(c, label="cat")
        version = c.get("/api/project").json()["version"]

    def work(image_id: int) -> tuple[int, int]:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as tab:
            labelled = tab.post("/api/label", json={"id": image_id, "label": "dog", "source": "keyboard"})
            thumb = tab.get(f"/api/images/{image_id}/thumb")
            return labelled.status_code, thumb.status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(work, cats))
    assert answers == [(200, 200)] * len(cats)
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        assert set(cats) <= set(ids(c, label="dog"))
        assert c.get("/api/project").json()["version"] >= version + len(cats)
        for _ in cats:  # back as they were, for the tests after this one
            assert c.post("/api/undo").json()["action"]["kind"] == "label"
        assert set(ids(c, label="cat")) == set(cats)
