"""Property-based fuzzing (hypothesis) of the two places where outside bytes enter graft: the image loader
(:func:`graft.data.load_rgb` and the eval transform after it) and ``graft serve``'s ``POST /predict`` (the ASGI app
in process, through ``fastapi.testclient.TestClient``).

The property: whatever the bytes, the loader returns an 8-bit RGB image within the size limits or raises
:class:`graft.core.errors.ImageError` (nothing else), and the server answers 200 with a label or a 4xx with a JSON
``detail``, never a 5xx, and goes on serving.

Inputs are valid images of several formats mutated (bit flips, byte overwrites with boundary values, truncation,
insertion, deletion, splices), structurally valid PNGs with random header fields, and random bytes; for the server
also multipart bodies, content types and ``top_k`` values.

Bounded: each target runs batches of ``GRAFT_FUZZ_EXAMPLES`` examples (default 60) until ``GRAFT_FUZZ_SECONDS``
(default 0: one batch) have passed; ``make fuzz`` runs them for minutes. The executions are counted and, with
``GRAFT_FUZZ_REPORT=FILE``, written to FILE as JSON (RELIABILITY.md records them).
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

import graft
from graft.core.errors import ImageError
from graft.core.preprocess import Preprocess, eval_crop
from graft.data import MAX_ASPECT, MAX_PIXELS, load_rgb

EXAMPLES = int(os.environ.get("GRAFT_FUZZ_EXAMPLES", "60"))
SECONDS = float(os.environ.get("GRAFT_FUZZ_SECONDS", "0"))
REPORT = os.environ.get("GRAFT_FUZZ_REPORT")
COUNTS: dict[str, dict[str, Any]] = {}


def _seeds() -> dict[str, bytes]:
    """Small valid images, one per format (and mode) the loader meets most."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    out: dict[str, bytes] = {}
    for name, im, fmt, kwargs in [
        ("jpeg", rgb, "JPEG", {"quality": 80}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
        ("jpeg-cmyk", rgb.convert("CMYK"), "JPEG", {}),
        ("png", rgb, "PNG", {}),
        ("png-rgba", rgb.convert("RGBA"), "PNG", {}),
        ("png-palette", rgb.convert("P"), "PNG", {"transparency": 0}),
        ("png-16bit", Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16)), "PNG", {}),
        ("gif", rgb.convert("P"), "GIF", {}),
        ("webp", rgb, "WEBP", {}),
        ("bmp", rgb, "BMP", {}),
        ("tiff", rgb, "TIFF", {}),
    ]:
        buf = io.BytesIO()
        im.save(buf, fmt, **kwargs)
        out[name] = buf.getvalue()
    frames = [Image.new("RGB", (10, 10), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out["gif-animated"] = buf.getvalue()
    return out


SEEDS = _seeds()
BOUNDARY = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed image with a few random mutations, biased towards its header (where the sizes and modes are)."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        pos = draw(st.one_of(st.integers(0, min(len(data), 64) - 1), st.integers(0, len(data) - 1)))
        op = draw(st.sampled_from(["flip", "byte", "int", "truncate", "insert", "delete", "splice"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":  # a size or count field set to a boundary value
            width, order = draw(st.sampled_from([(2, ">H"), (2, "<H"), (4, ">I"), (4, "<I")]))
            value = draw(st.sampled_from(BOUNDARY)) & ((1 << (8 * width)) - 1)
            data[pos : pos + width] = struct.pack(order, value)
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 32))]
        else:  # a chunk of another seed
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos : pos + 16] = other[start : start + 16]
    return bytes(data)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def png_fields(draw: st.DrawFn) -> bytes:
    """A PNG with correct CRCs and random header fields (size, bit depth, colour type, interlace) and random,
    compressed pixel data: past the checksums, into the decoder."""
    w = draw(st.one_of(st.integers(1, 64), st.sampled_from([0, 1, 2**16, 2**31 - 1, 2**32 - 1])))
    h = draw(st.one_of(st.integers(1, 64), st.sampled_from([0, 1, 2**16, 2**31 - 1, 2**32 - 1])))
    depth = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255]))
    colour = draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
    interlace = draw(st.sampled_from([0, 1, 2]))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace)
    chunks = [_chunk(b"IHDR", ihdr)]
    if colour == 3 or draw(st.booleans()):
        chunks.append(_chunk(b"PLTE", draw(st.binary(min_size=0, max_size=48))))
    if draw(st.booleans()):
        chunks.append(_chunk(b"tRNS", draw(st.binary(min_size=0, max_size=16))))
    raw = draw(st.binary(min_size=0, max_size=4096))
    chunks.append(_chunk(b"IDAT", zlib.compress(raw) if draw(st.booleans()) else raw))
    if draw(st.booleans()):
        chunks.append(_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


IMAGE_BYTES = st.one_of(mutated(), png_fields(), st.binary(max_size=2048))


def fuzz(name: str, strategy: st.SearchStrategy[Any], target: Callable[[Any], None]) -> int:
    """Run ``target`` on examples of ``strategy``: batches of EXAMPLES until SECONDS have passed (at least one
    batch); return the number of executions (also kept in COUNTS)."""
    runs, slowest, batch = 0, 0.0, 0
    deadline = time.monotonic() + SECONDS

    def timed(x: Any) -> None:
        nonlocal runs, slowest
        began = time.perf_counter()
        target(x)
        runs += 1
        slowest = max(slowest, time.perf_counter() - began)

    started = time.monotonic()
    while batch == 0 or time.monotonic() < deadline:
        settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        )(seed(batch)(given(strategy)(timed)))()
        batch += 1
    COUNTS[name] = {
        "executions": runs,
        "batches": batch,
        "seconds": round(time.monotonic() - started, 1),
        "slowest_s": round(slowest, 3),
        "crashes": 0,  # a crash fails the test before this line
    }
    return runs


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if COUNTS:
        print("\nfuzz executions:", json.dumps(COUNTS))
        if REPORT:
            Path(REPORT).write_text(json.dumps(COUNTS, indent=2) + "\n")


def test_fuzz_image_loader(tmp_path: Path) -> None:
    crop = eval_crop(Preprocess())
    path = tmp_path / "upload"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        try:
            im = load_rgb(path, draft=256)
        except ImageError as e:
            assert e.reason and str(path) in str(e)
            return
        w, h = im.size
        assert im.mode == "RGB" and w >= 1 and h >= 1 and w * h <= MAX_PIXELS
        assert max(w, h) <= MAX_ASPECT * min(w, h)
        if w * h <= 4_000_000:  # what predict and serve do next
            assert tuple(crop(im).shape) == (3, 224, 224)

    assert fuzz("image loader (load_rgb + eval crop)", IMAGE_BYTES, target) >= EXAMPLES


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``graft serve``'s app on a tiny random-weight run, in process."""
    from fastapi.testclient import TestClient

    from graft.commands.serve import create_app
    from graft.core.config import ServeConfig

    data = tmp_path_factory.mktemp("fuzz-data")
    for split, n in (("train", 2), ("val", 1)):
        for c, colour in (("ants", (200, 30, 30)), ("bees", (30, 30, 200))):
            (data / split / c).mkdir(parents=True)
            for j in range(n):
                Image.new("RGB", (32, 32), colour).save(data / split / c / f"{j}.jpg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_NO_PROGRESS", "1")
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr("graft.insight.report.write_run_report", lambda *a, **k: None)
        run = graft.train(
            data,
            arch="mobilenet_v3_small",
            pretrained="none",
            epochs=1,
            batch_size=2,
            device="cpu",
            out=tmp_path_factory.mktemp("runs"),
            name="fuzz",
        )
    clf = graft.load(run.run_dir, device="cpu")
    # a small upload limit, so that oversize bodies are cheap to make
    cfg = ServeConfig(run=run.run_dir, max_upload_mb=0.05, max_pixels=4_000_000, timeout=30)
    # a loopback Host: the app answers only the names it was told (TestClient sends "testserver" by default)
    with TestClient(create_app(clf, cfg), raise_server_exceptions=False, base_url="http://127.0.0.1") as client:
        yield client


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            None,
            "image/jpeg",
            "application/octet-stream",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "text/plain; charset=utf-8",
            "",
        ]
    ),
    st.text(max_size=40),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of one ``POST /predict``."""
    body = draw(st.one_of(IMAGE_BYTES, st.binary(min_size=50_000, max_size=50_010)))
    params = draw(
        st.one_of(
            st.just({}),
            st.fixed_dictionaries({"top_k": st.one_of(st.integers(-3, 2000), st.text(max_size=5))}),
        )
    )
    kind = draw(st.sampled_from(["raw", "multipart", "multipart-other-field", "multipart-text-only"]))
    if kind == "raw":
        headers = {}
        content_type = draw(CONTENT_TYPES)
        if content_type is not None:
            headers["content-type"] = content_type.encode("latin-1", "replace")
        return {"content": body, "headers": headers, "params": params}
    filename = draw(st.text(max_size=20))
    mime = draw(st.sampled_from(["image/jpeg", "text/plain", "application/x-evil", ""]))
    if kind == "multipart":
        return {"files": {"file": (filename, body, mime)}, "params": params}
    if kind == "multipart-other-field":
        return {"files": {draw(st.text(min_size=1, max_size=8)): (filename, body, mime)}, "params": params}
    return {"data": {"file": draw(st.text(max_size=30))}, "params": params}


@pytest.mark.slow
def test_fuzz_serve_predict(app_client) -> None:
    good = SEEDS["jpeg"]

    def target(kwargs: dict[str, Any]) -> None:
        r = app_client.post("/predict", **kwargs)
        assert r.status_code < 500, (r.status_code, r.text[:300])
        body = r.json()
        if r.status_code == 200:
            assert body["label"] in ("ants", "bees")
        else:
            assert r.status_code >= 400 and isinstance(body["detail"], str | list), body

    assert fuzz("serve POST /predict (ASGI app in process)", requests(), target) >= EXAMPLES
    assert app_client.post("/predict", content=good).status_code == 200  # and it goes on serving
