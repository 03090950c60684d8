"""graft.data: image loading by content, dataset scanning, splitting and reporting."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.core.errors import DataError, ImageError
from graft.core.preprocess import Preprocess, eval_transform
from graft.data import (
    MAX_PIXELS,
    DataReport,
    ImageDataset,
    Sample,
    check_image,
    load_rgb,
    scan,
)

GIF = "train/ants/imageNotFound.gif"


def jpeg_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0, **save: object) -> bytes:
    bands = len(Image.new(mode, (1, 1)).getbands())
    noise = np.random.default_rng(seed).integers(0, 256, size[0] * size[1] * bands, dtype=np.uint8)
    im = Image.frombytes(mode, size, noise.tobytes())
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(im: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **save)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header declares a huge RGB image, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --- the real dataset -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hym(hymenoptera: Path):
    return scan(hymenoptera)


def test_hymenoptera_scan(hym, hymenoptera: Path) -> None:
    assert hym.classes == ["ants", "bees"]
    assert len(hym.train) == 244 and len(hym.val) == 153
    assert [s.path for s in hym.report.skipped] == [GIF]
    assert "placeholder" in hym.report.skipped[0].reason
    assert hym.report.layout == "train/val" and hym.report.val_split is None
    assert all(s.path.is_file() and s.path.is_absolute() for s in hym.train + hym.val)
    assert {s.label for s in hym.train} == {0, 1}
    assert all(s.label == hym.classes.index(s.path.parent.name) for s in hym.train + hym.val)
    assert hymenoptera / GIF not in {s.path for s in hym.train}


def test_hymenoptera_report(hym, hymenoptera: Path) -> None:
    d = json.loads(json.dumps(hym.report.to_dict()))
    assert d["counts"] == {"train": {"ants": 123, "bees": 121}, "val": {"ants": 70, "bees": 83}}
    assert d["n_train"] == 244 and d["n_val"] == 153
    assert d["skipped"][0]["path"] == GIF
    assert Path(d["root"]) == hymenoptera.absolute()
    text = hym.report.format()
    assert "imageNotFound.gif" in text and "placeholder" in text and "ants" in text and "244" in text
    assert "imbalanced" not in text
    split = hym.split_dict()
    assert len(split["train"]) == 244 and len(split["val"]) == 153
    assert split["train"][0].startswith("train/ants/") and split["val"][-1].startswith("val/bees/")


def test_placeholder_recognised_by_content(hymenoptera: Path, tmp_path: Path) -> None:
    copy = tmp_path / "photo.jpg"
    shutil.copy(hymenoptera / GIF, copy)
    reason = check_image(copy)
    assert reason is not None and "placeholder" in reason and "could not be found" in reason
    with pytest.raises(ImageError) as e:
        load_rgb(copy)
    assert e.value.path == str(copy)


def test_imbalance_warning() -> None:
    counts = {"train": {"a": 40, "b": 10}, "val": {"a": 4, "b": 1}}
    report = DataReport("/x", "train/val", ["a", "b"], counts, [], None, None)
    assert "imbalanced" in report.format()
    counts["train"]["a"] = 30
    assert "imbalanced" not in report.format()


# --- odd and broken files ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val layout: train/cat holds every kind of odd file; the other folders hold plain JPEGs."""
    root = tmp_path_factory.mktemp("odd")
    cat = root / "train/cat"
    for folder in ("train/cat/sub", "train/dog", "val/cat", "val/dog", "train/cat/.thumbs"):
        (root / folder).mkdir(parents=True)
    for i, folder in enumerate(("train/dog", "val/cat", "val/dog")):
        (root / folder / "a.jpg").write_bytes(jpeg_bytes(seed=i))
    files = {
        "empty.jpg": b"",
        "truncated.jpg": jpeg_bytes((256, 256))[: len(jpeg_bytes((256, 256))) // 2],
        "notes.jpg": b"these are my notes, not a picture\n",
        "page.jpg": b"<!DOCTYPE html><html><body>404</body></html>",
        "png_named.jpg": png_bytes(Image.new("RGB", (20, 10), (0, 200, 0))),
        "gray.jpg": jpeg_bytes(mode="L"),
        "cmyk.jpg": jpeg_bytes(mode="CMYK"),
        "noext": jpeg_bytes(seed=7),
        "bomb.png": bomb_png(),
        ".DS_Store": b"\0\0\0\1Bud1" + bytes(100),
        "sub/deep.jpg": jpeg_bytes(seed=8),
        ".thumbs/hidden_dir.jpg": jpeg_bytes(seed=9),
    }
    for name, data in files.items():
        (cat / name).write_bytes(data)
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(cat / "rgba.png")
    Image.new("RGB", (16, 16), "red").save(cat / "icon.ico")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (40, 20), "blue").save(cat / "rotated.jpg", exif=exif)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(cat / "gray16.png")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(cat / "palette.png", transparency=0)
    frames = [Image.new("RGB", (12, 12), c) for c in ("red", "blue")]
    frames[0].save(cat / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    os.symlink("does-not-exist.jpg", cat / "broken.jpg")
    os.symlink("gray.jpg", cat / "link.jpg")
    return root


USED = {
    "png_named.jpg", "gray.jpg", "cmyk.jpg", "noext", "sub/deep.jpg", "rgba.png", "rotated.jpg",
    "gray16.png", "palette.png", "anim.gif", "link.jpg",
}  # fmt: skip
SKIPPED = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "notes.jpg": "not an image",
    "page.jpg": "html",
    "bomb.png": "decompression bomb",
    ".DS_Store": "hidden file",
    "icon.ico": "unsupported image format ico",
    "broken.jpg": "broken symbolic link",
}


def test_odd_folder_scan(odd: Path) -> None:
    ds = scan(odd, workers=2)
    cat = odd / "train/cat"
    assert ds.classes == ["cat", "dog"]
    assert {s.path.relative_to(cat).as_posix() for s in ds.train if s.label == 0} == USED
    assert ds.report.counts == {"train": {"cat": len(USED), "dog": 1}, "val": {"cat": 1, "dog": 1}}
    reasons = {s.path.removeprefix("train/cat/"): s.reason for s in ds.report.skipped}
    assert reasons.keys() == SKIPPED.keys()  # hidden folders are ignored, not listed
    for name, word in SKIPPED.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    assert "text" in reasons["notes.jpg"]
    assert "pixels" in reasons["bomb.png"]


def test_load_rgb_conversions(odd: Path) -> None:
    cat = odd / "train/cat"

    def px(name: str, xy: tuple[int, int] = (5, 5)) -> tuple[int, ...]:
        im = load_rgb(cat / name)
        assert im.mode == "RGB"
        return im.getpixel(xy)

    assert load_rgb(cat / "rotated.jpg").size == (20, 40)
    assert load_rgb(cat / "png_named.jpg").size == (20, 10)
    assert abs(px("gray16.png")[0] - 128) <= 1  # 32768 of 65535: scaled, not clipped to 255
    assert px("palette.png") == (255, 255, 255)  # transparent index -> white
    assert px("palette.png", (0, 0)) == (0, 0, 255)
    assert px("rgba.png") == (255, 255, 255)
    r, g, b = px("anim.gif")
    assert r > 200 and b < 50  # first frame (red), not the blue second one
    r, g, b = px("gray.jpg")
    assert r == g == b
    assert len(set(load_rgb(cat / "cmyk.jpg").getdata())) > 1


def test_load_rgb_gray(odd: Path, hymenoptera: Path) -> None:
    """``gray=True``: the same picture in grey, whatever the file's mode (a JPEG decoded to grey directly)."""
    cat = odd / "train/cat"
    for name in ("rotated.jpg", "palette.png", "rgba.png", "gray16.png", "cmyk.jpg", "gray.jpg"):
        grey, rgb = load_rgb(cat / name, gray=True), load_rgb(cat / name)
        assert grey.mode == "L" and grey.size == rgb.size, name
        assert np.abs(np.asarray(grey, np.int16) - np.asarray(rgb.convert("L"), np.int16)).max() <= 3, name
    photo = sorted((hymenoptera / "train/bees").glob("*.jpg"))[0]
    grey, rgb = load_rgb(photo, draft=128, gray=True), load_rgb(photo, draft=128)
    assert grey.size == rgb.size  # the same DCT scaling
    # the decoder's own grey and Pillow's RGB -> L differ by rounding only
    assert np.abs(np.asarray(grey, np.int16) - np.asarray(rgb.convert("L"), np.int16)).mean() < 1.5


def test_load_rgb_alpha_composited_over_white(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 128  # half-transparent red over white -> pink
    Image.fromarray(arr).save(tmp_path / "a.png")
    r, g, b = load_rgb(tmp_path / "a.png").getpixel((0, 0))
    assert r == 255 and 120 <= g <= 135 and g == b
    Image.fromarray(np.ascontiguousarray(arr[..., [0, 3]])).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((0, 0))[0] == 255


def test_load_rgb_constant_float_image_out_of_range(tmp_path: Path) -> None:
    Image.new("F", (8, 8), 300.0).save(tmp_path / "flat.tif")  # no range to stretch: clipped
    assert load_rgb(tmp_path / "flat.tif").getpixel((0, 0)) == (255, 255, 255)


def test_decoded_bytes_counts_the_pixel_format() -> None:
    from graft.data.images import decoded_bytes

    rgb, flt, gray16 = (decoded_bytes(Image.new(m, (100, 100))) for m in ("RGB", "F", "I;16"))
    assert rgb == 100 * 100 * 6 and flt == 100 * 100 * 16 and gray16 == 100 * 100 * 14


def test_load_rgb_draft_downsamples_jpeg(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes((1024, 768)))
    assert load_rgb(tmp_path / "big.jpg").size == (1024, 768)
    w, h = load_rgb(tmp_path / "big.jpg", draft=200).size
    assert min(w, h) >= 200 and w < 1024


def test_load_rgb_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageError, match="not found"):
        load_rgb(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_rgb(tmp_path)
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())
    assert check_image(tmp_path / "x.jpg") is None

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    monkeypatch.setattr(Path, "read_bytes", denied)
    assert check_image(tmp_path / "x.jpg") == "cannot read file: Permission denied"


def test_decompression_bomb_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    reason = check_image(tmp_path / "bomb.png")
    assert reason is not None and "decompression bomb" in reason and "10,000,000,000 pixels" in reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard off: graft's must still hold
    reason = check_image(tmp_path / "bomb.png")
    assert reason is not None and "100000x100000" in reason and f"{MAX_PIXELS:,}" in reason


# --- folder errors ----------------------------------------------------------------------------------------


def test_missing_root_or_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan(tmp_path / "file")
    with pytest.raises(DataError, match="No class folders"):
        scan(tmp_path)


def test_one_class(tmp_image_folder) -> None:
    with pytest.raises(DataError, match="only one class") as e:
        scan(tmp_image_folder({"cats": 3}))
    assert "cats" in str(e.value)


def test_class_without_usable_image(tmp_image_folder) -> None:
    root = tmp_image_folder({"train/ok": 2, "train/broken": 0, "val/ok": 1, "val/broken": 1})
    (root / "train/broken/a.jpg").write_text("not an image")
    (root / "train/broken/b.jpg").write_bytes(b"")
    with pytest.raises(DataError) as e:
        scan(root)
    msg = str(e.value)
    assert "'broken'" in msg and "no usable image" in msg and "2 file(s)" in msg
    assert "not an image" in msg and "empty" in msg


def test_train_val_class_mismatch(tmp_image_folder) -> None:
    root = tmp_image_folder({"train/ant": 1, "train/bee": 1, "train/wasp": 1, "val/ant": 1, "val/bees": 1})
    with pytest.raises(DataError) as e:
        scan(root)
    assert "only in train: bee, wasp" in str(e.value) and "only in val: bees" in str(e.value)


def test_val_folder_aliases_and_missing_val(tmp_image_folder) -> None:
    root = tmp_image_folder({"train/a": 2, "train/b": 2, "validation/a": 1, "validation/b": 1})
    ds = scan(root)
    assert ds.report.layout == "train/val" and len(ds.val) == 2
    with pytest.raises(DataError, match="no val/ folder"):
        scan(tmp_image_folder({"train/a": 2, "train/b": 2}))
    ds = scan(tmp_image_folder({"valid": 2, "invalid": 2}))  # class folders that only look like split names
    assert ds.report.layout == "split" and ds.classes == ["invalid", "valid"]


# --- split layout -----------------------------------------------------------------------------------------


def test_split_layout(tmp_image_folder) -> None:
    root = tmp_image_folder({"alpha": 10, "beta": 5, "gamma nü": 2})
    (root / "README.txt").write_text("about this data")
    ds = scan(root, val_split=0.2, seed=0)
    assert ds.classes == ["alpha", "beta", "gamma nü"]
    assert ds.report.layout == "split" and ds.report.val_split == 0.2 and ds.report.seed == 0
    assert ds.report.counts == {
        "train": {"alpha": 8, "beta": 4, "gamma nü": 1},
        "val": {"alpha": 2, "beta": 1, "gamma nü": 1},
    }
    split = ds.split_dict()
    assert not set(split["train"]) & set(split["val"])
    every = {p.relative_to(root).as_posix() for p in root.glob("*/*.jpg")}
    assert set(split["train"]) | set(split["val"]) == every
    assert [s.path for s in ds.report.skipped] == ["README.txt"]
    assert scan(root, val_split=0.2, seed=0).split_dict() == split
    assert scan(root, val_split=0.2, seed=1).split_dict() != split
    assert "20% of each class" in ds.report.format()


def test_split_layout_errors(tmp_image_folder) -> None:
    root = tmp_image_folder({"a": 3, "b": 1})
    with pytest.raises(DataError, match="only 1 usable image") as e:
        scan(root)
    assert "'b'" in str(e.value)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DataError, match="val_split"):
            scan(root, val_split=bad)


# --- ImageDataset -----------------------------------------------------------------------------------------


def test_image_dataset(hym) -> None:
    ds = ImageDataset(hym.val[:2], eval_transform(Preprocess()))
    assert len(ds) == 2 and ds.targets == [0, 0]
    x, y = ds[0]
    assert tuple(x.shape) == (3, 224, 224) and y == 0
    raw, _ = ImageDataset(hym.val[:1])[0]
    assert isinstance(raw, Image.Image) and raw.mode == "RGB"


def test_image_dataset_file_changed_after_scan(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes())
    ds = ImageDataset([Sample(path, 1)])
    assert ds[0][1] == 1
    path.write_text("gone")
    with pytest.raises(ImageError) as e:
        ds[0]
    assert e.value.path == str(path) and "not an image" in e.value.reason


def test_a_second_scan_of_unchanged_files_does_not_decode_them(tmp_image_folder, tmp_path, monkeypatch) -> None:
    """Scan verdicts are remembered by path, size and mtime: unchanged files are not decoded again, a changed or
    new file is, and a damaged verdict file is ignored."""
    import graft.data.folders as datamod
    import graft.data.samples as samplesmod

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_image_folder({"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    (root / "train/a/notes.jpg").write_text("not an image")
    decoded: list[str] = []
    real = samplesmod.load_rgb

    def counting(path, **kw):
        decoded.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(samplesmod, "load_rgb", counting)  # the validating decode folders and tables share
    first = datamod.scan(root)
    assert len(decoded) == 9
    decoded.clear()
    again = datamod.scan(root)
    assert decoded == [] and again.report.to_dict() == first.report.to_dict()  # the skip reason is remembered too
    assert [s.path for s in again.train] == [s.path for s in first.train]

    changed = root / "train/b/img001.jpg"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))
    (root / "val/b/new.jpg").write_bytes((root / "val/a/img000.jpg").read_bytes())
    datamod.scan(root)
    assert sorted(decoded) == ["img001.jpg", "new.jpg"]

    decoded.clear()
    for f in (tmp_path / "cache" / "scan").iterdir():
        f.write_text("{broken")
    datamod.scan(root)
    assert len(decoded) == 10  # nothing trusted from a damaged file
