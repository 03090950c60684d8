"""The bad-input corpus: every kind of odd file a dataset folder or an upload can hold, generated here, run through
``graft check``, ``graft train`` (with its end-of-run evaluation and report), ``graft evaluate``, ``graft predict``
and the real ``graft serve``'s ``POST /predict``. Each kind has one documented outcome (RELIABILITY.md lists the
same table): *used* (converted to 8-bit RGB), *skipped* with a reason (check, train, evaluate; an error row in
predict), or *ignored* (hidden files); over HTTP a 4xx with that reason. Nothing crashes.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import graft
from graft.commands import cli
from graft.data import MAX_ASPECT, load_rgb
from graft.inference.paths import iter_paths

# Class folders with a space and with non-ASCII letters (one of the kinds).
GOOD, OTHER = "honey bees", "guêpes ü"
ROOT = os.geteuid() == 0


def noisy(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(colour) + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def encoded(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header (IHDR with a correct CRC) declaring ``width`` x ``height`` pixels, and almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def palette_transparent() -> bytes:
    im = Image.new("P", (16, 16), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    for x in range(8):
        im.putpixel((x, x), 1)
    return encoded(im, "PNG", transparency=0)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    return encoded(noisy((200, 150, 40), 90, (60, 30)), "JPEG", exif=exif)


def bad_exif() -> bytes:
    """A JPEG whose APP1 EXIF segment is garbage."""
    data = encoded(noisy((200, 150, 40), 91), "JPEG")
    junk = b"Exif\0\0" + b"MM\0*\xff\xff\xff\xff" + bytes(40)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + data[2:]


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 80)) -> bytes:
    return encoded(noisy((200, 150, 40), seed, size), "JPEG", quality=90)


def png16() -> bytes:
    return encoded(Image.fromarray(np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)), "PNG")


def float_tiff() -> bytes:
    return encoded(Image.fromarray(np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)), "TIFF")


@dataclass(frozen=True)
class Kind:
    """One kind of bad or odd input: its file name in a class folder, how to write it, and its outcome."""

    name: str
    file: str
    make: Callable[[Path], None]
    reason: str | None  # None: used; "hidden": ignored; else words of the skip reason
    status: int | None  # graft serve's answer to its bytes; None: nothing to upload (not a readable file)


def write(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data() if callable(data) else data)


def unreadable(p: Path) -> None:
    p.write_bytes(jpeg(5))
    p.chmod(0)


def fifo(p: Path) -> None:
    os.mkfifo(p)


def non_utf8(p: Path) -> None:  # the name comes from the bytes b"caf\xe9.jpg" (Latin-1), kept as they are
    with open(os.path.join(os.fsencode(p.parent), b"caf\xe9.jpg"), "wb") as f:
        f.write(jpeg(7))


def folder_loop(p: Path) -> None:
    os.symlink(".", p)  # a folder symlink back to its own folder: walked once


def unreadable_folder(p: Path) -> None:
    p.mkdir()
    (p / "inside.jpg").write_bytes(jpeg(10))
    p.chmod(0)


def link_outside(p: Path) -> None:
    """A link to a folder of images beside the dataset: not followed by the scan or predict's folder walk."""
    outside = p.parents[2].with_name(p.parents[2].name + "-outside")
    outside.mkdir(exist_ok=True)
    (outside / "elsewhere.jpg").write_bytes(jpeg(11))
    os.symlink(outside, p, target_is_directory=True)


KINDS: list[Kind] = [
    Kind("zero-byte file", "empty.jpg", write(b""), "empty file (0 bytes)", 400),
    Kind("truncated JPEG", "truncated.jpg", write(lambda: jpeg(1, (320, 240))[:2500]), "truncated", 422),
    Kind(
        "truncated PNG",
        "truncated.png",
        write(lambda: encoded(noisy((10, 200, 90), 2, (120, 100)), "PNG")[:3000]),
        "truncated",
        422,
    ),
    Kind(
        "text named .jpg",
        "notes.jpg",
        write(b"my notes, not a photo\n" * 20),
        "not an image: the file contains text",
        415,
    ),
    Kind("HTML page named .jpg", "page.jpg", write(b"<!DOCTYPE html><html>404</html>"), "HTML page", 415),
    Kind(
        "random bytes",
        "noise.jpg",
        write(bytes(np.random.default_rng(3).integers(1, 256, 4096, dtype=np.uint8))),
        "not a recognised image format",
        415,
    ),
    Kind("PNG named .jpg", "png_named.jpg", write(lambda: encoded(noisy((200, 150, 40), 4), "PNG")), None, 200),
    Kind("animated GIF", "anim.gif", write(animated_gif), None, 200),
    Kind("16-bit PNG", "gray16.png", write(png16), None, 200),
    Kind("32-bit float TIFF", "float.tif", write(float_tiff), None, 200),
    Kind("CMYK JPEG", "cmyk.jpg", write(lambda: encoded(noisy((200, 150, 40), 5).convert("CMYK"), "JPEG")), None, 200),
    Kind("palette PNG with transparency", "palette.png", write(palette_transparent), None, 200),
    Kind("LA (gray + alpha)", "la.png", write(lambda: encoded(noisy((99, 99, 99), 6).convert("LA"), "PNG")), None, 200),
    Kind(
        "1x1 pixel", "one_pixel.png", write(lambda: encoded(Image.new("RGB", (1, 1), (250, 10, 10)), "PNG")), None, 200
    ),
    Kind(
        "100000x1 strip", "strip.png", write(lambda: encoded(Image.new("RGB", (100_000, 1), "red"), "PNG")), None, 200
    ),
    Kind("WebP", "photo.webp", write(lambda: encoded(noisy((200, 150, 40), 8), "WEBP")), None, 200),
    Kind("BMP", "photo.bmp", write(lambda: encoded(noisy((200, 150, 40), 9), "BMP")), None, 200),
    Kind("EXIF rotation", "rotated.jpg", write(exif_rotated), None, 200),
    Kind("malformed EXIF", "bad_exif.jpg", write(bad_exif), None, 200),
    Kind(
        "decompression bomb (100000x100000 declared)",
        "bomb.png",
        write(lambda: png_declaring(100_000, 100_000)),
        "decompression bomb",
        413,
    ),
    Kind(
        "unsupported format (ICO)",
        "icon.ico",
        write(lambda: encoded(Image.new("RGB", (16, 16), "red"), "ICO")),
        "unsupported image format ICO",
        415,
    ),
    Kind("unreadable file (mode 000)", "locked.jpg", unreadable, "cannot read file", None),
    Kind("broken symlink", "broken.jpg", lambda p: os.symlink("does-not-exist.jpg", p), "broken symbolic link", None),
    Kind("FIFO named .jpg", "pipe.jpg", fifo, "not a regular file", None),
    Kind("non-UTF-8 file name", "caf\udce9.jpg", non_utf8, None, 200),
    Kind("hidden file (.DS_Store)", ".DS_Store", write(b"\0\0\0\1Bud1" + bytes(200)), "hidden", 415),
    Kind(
        "hidden AppleDouble file (._photo.jpg)",
        "._photo.jpg",
        write(b"\0\5\26\7\0\2\0\0Mac OS X" + bytes(60)),
        "hidden",
        415,
    ),
    Kind("folder symlink loop", "loop", folder_loop, "loop", None),
    Kind("unreadable folder (mode 000)", "locked_dir", unreadable_folder, "cannot read folder", None),
    Kind("folder symlink out of the data", "outside", link_outside, "a folder outside the data root", None),
]
#: the kinds that are folders: skipped as ``path/``, and passed over by predict's folder walk
FOLDERS = {"locked_dir", "outside"}
USED = [k for k in KINDS if k.reason is None]
SKIPPED = [k for k in KINDS if k.reason not in (None, "hidden", "loop")]
# The class folder names are the last kind: "honey bees" and "guêpes ü" hold the corpus and the valid images.
N_KINDS = len(KINDS) + 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ with two classes of valid images; every kind is in train/<GOOD>/ and val/<GOOD>/."""
    root = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 8), ("val", 4)):
        for c, (cls, colour) in enumerate(((GOOD, (200, 150, 40)), (OTHER, (40, 90, 200)))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for j in range(n):
                noisy(colour, 100 * c + j + (50 if split == "val" else 0)).save(folder / f"ok{j}.jpg", quality=90)
            if cls == GOOD:
                for kind in KINDS:
                    kind.make(folder / kind.file)
    return root


@pytest.fixture(scope="module")
def unreadable_as_root(corpus: Path) -> Iterator[None]:
    """Root reads a mode-000 file or folder anyway: then opening the ``locked.jpg`` files and listing the
    ``locked_dir`` folders raise EACCES, as for a user."""
    if not ROOT:
        yield
        return
    real = builtins.open

    def guarded(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(file, str | os.PathLike) and os.path.basename(os.fspath(file)) == "locked.jpg":
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real(file, *args, **kwargs)

    def unlisted(real_list):  # type: ignore[no-untyped-def]  # listing a mode-000 folder: EACCES
        def call(path=".", *args, **kwargs):  # type: ignore[no-untyped-def]
            if isinstance(path, str | os.PathLike) and os.path.basename(os.fspath(path)) == "locked_dir":
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_list(path, *args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", guarded)
        mp.setattr(io, "open", guarded)
        mp.setattr(os, "listdir", unlisted(os.listdir))
        mp.setattr(os, "scandir", unlisted(os.scandir))
        yield


@pytest.fixture(scope="module")
def run(corpus: Path, unreadable_as_root: None, tmp_path_factory: pytest.TempPathFactory) -> graft.RunResult:
    """A tiny CPU run on the corpus, with the end-of-run evaluation and report."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_NO_PROGRESS", "1")
        mp.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        return graft.train(
            corpus,
            arch="mobilenet_v3_small",
            pretrained="none",
            epochs=2,
            batch_size=4,
            device="cpu",
            seed=0,
            out=tmp_path_factory.mktemp("runs"),
            name="corpus",
        )


def test_the_corpus_has_at_least_15_kinds() -> None:
    assert N_KINDS >= 15
    assert len({k.name for k in KINDS}) == len(KINDS) and len({k.file for k in KINDS}) == len(KINDS)


def test_check_reports_every_kind(corpus, unreadable_as_root, capsys) -> None:
    assert cli.main(["check", str(corpus), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == sorted([GOOD, OTHER])
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    for split in ("train", "val"):
        for kind in SKIPPED:
            key = f"{split}/{GOOD}/{kind.file}" + ("/" if kind.file in FOLDERS else "")
            assert kind.reason.lower() in reasons.pop(key).lower(), kind.name
        for kind in KINDS:
            if kind.reason == "hidden":
                assert reasons.pop(f"{split}/{GOOD}/{kind.file}") == "hidden file"
        assert report["counts"][split] == {
            GOOD: len(USED) + (8 if split == "train" else 4),
            OTHER: 8 if split == "train" else 4,
        }
    assert reasons == {}  # the folder loop is walked once, not reported


def test_used_kinds_decode_to_rgb(corpus) -> None:
    folder = corpus / "train" / GOOD
    for kind in USED:
        im = load_rgb(folder / kind.file)
        assert im.mode == "RGB" and min(im.size) >= 1, kind.name
        assert max(im.size) <= MAX_ASPECT * min(im.size), kind.name
    assert load_rgb(folder / "rotated.jpg").size == (30, 60)  # EXIF orientation applied
    assert load_rgb(folder / "strip.png").size == (MAX_ASPECT, 1)  # cropped to its centre, not 25600000x256
    assert load_rgb(folder / "palette.png").getpixel((5, 0)) == (255, 255, 255)  # transparent -> white


@pytest.mark.slow
def test_train_uses_the_good_kinds_and_reports_the_rest(run, corpus) -> None:
    run_dir = run.run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n_train"] == 2 * 8 + len(USED) and metrics["n_val"] == 2 * 4 + len(USED)
    assert json.loads((run_dir / "model.json").read_text())["classes"] == sorted([GOOD, OTHER])
    report = json.loads((run_dir / "data_report.json").read_text())
    skipped = {f"train/{GOOD}/{k.file}" + ("/" if k.file in FOLDERS else "") for k in SKIPPED}
    assert {s["path"] for s in report["skipped"]} >= skipped
    # the non-UTF-8 name: escaped in the JSON file, read back as the str Python uses for those bytes
    assert "caf\\udce9.jpg" in (run_dir / "data_report.json").read_text(encoding="utf-8")
    assert f"val/{GOOD}/caf\udce9.jpg" in report["split"]["val"]
    assert (run_dir / "report.html").stat().st_size > 0 and (run_dir / "evaluation.json").exists()


@pytest.mark.slow
def test_evaluate_on_the_corpus(run, corpus, unreadable_as_root) -> None:
    from graft.insight.evaluation import evaluate

    own = evaluate(run.run_dir, plots=False, device="cpu")
    assert own.n == 2 * 4 + len(USED)
    other = evaluate(run.run_dir, corpus / "val", out=run.run_dir / "eval-val", plots=True, device="cpu")
    assert other.n == 2 * 4 + len(USED)


@pytest.mark.slow
def test_predict_gives_a_row_per_file_and_an_error_for_each_bad_one(run, corpus, unreadable_as_root, capsys) -> None:
    clf = graft.load(run.run_dir, device="cpu")
    folder = corpus / "val" / GOOD
    rows = {Path(r.path).name: r for r in clf.predict_paths(iter_paths([folder]), top_k=2, batch_size=4)}
    for kind in KINDS:
        if kind.reason in ("hidden", "loop") or kind.file in {"pipe.jpg"} | FOLDERS:
            assert kind.file not in rows, kind.name  # walked past: hidden, visited already, not a file, not read
            assert not any(name in rows for name in ("inside.jpg", "elsewhere.jpg")), kind.name
        elif kind.reason is None:
            assert rows[kind.file].error is None and len(rows[kind.file].predictions) == 2, kind.name
        else:
            assert kind.reason.lower() in rows[kind.file].error.lower(), kind.name
    # named explicitly, a hidden file is read, and refused for its content
    (ds_store, pipe) = clf.predict_paths([folder / ".DS_Store", folder / "pipe.jpg"])
    assert "not an image" in ds_store.error and "not a regular file" in pipe.error

    plots = run.run_dir / "predict-plots"
    args = ["predict", str(run.run_dir), str(folder), "--json", "--plot", "--plot-dir", str(plots), "--device", "cpu"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(r.get("error") is None for r in out) == 4 + len(USED)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory) -> Iterator[str]:
    """The real ``graft serve`` on the corpus run (as in test_serve.py)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = os.environ | {"GRAFT_OFFLINE": "1", "GRAFT_NO_PROGRESS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "graft", "serve", str(run.run_dir), "--port", "0", "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline, url = time.monotonic() + 90, None
        while time.monotonic() < deadline and url is None:
            text = log.read_text(errors="replace")
            assert proc.poll() is None, text
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", text)
            url = m.group(1) if m and "Application startup complete" in text else None
            time.sleep(0.2)
        assert url, log.read_text(errors="replace")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("kind", [k for k in KINDS if k.status is not None], ids=lambda k: k.name)
def test_serve_answers_every_kind(server, corpus, kind) -> None:
    data = (corpus / "val" / GOOD / kind.file).read_bytes()
    r = httpx.post(f"{server}/predict", content=data, timeout=60)
    assert r.status_code == kind.status, r.text
    if kind.status == 200:
        assert r.json()["label"] in (GOOD, OTHER)
    else:
        assert r.json()["detail"].startswith(("cannot use the upload", "empty request body")), r.text
    ok = httpx.post(f"{server}/predict", content=(corpus / "val" / OTHER / "ok0.jpg").read_bytes(), timeout=60)
    assert ok.status_code == 200  # and the server goes on
