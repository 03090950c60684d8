"""graft doctor on a small planted dataset: a few real hymenoptera photos, then copies, conflicts, bad images.

One module-scoped dataset is checked twice: clean (nothing serious: exit status 0), then with the plants added
(only their features are computed the second time). The thresholds themselves are calibrated on the whole of
hymenoptera by benchmarks/bench_doctor.py.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from planted import edited_copy

from graft.commands.cli import main
from graft.data.folders import read_exclude_list, scan
from graft.data.quality import hamming, perceptual_hashes
from graft.features.similarity import normalise, search
from graft.insight.doctor import doctor
from graft.insight.doctor.findings import EXIT_SERIOUS
from graft.insight.doctor.labels import score_labels

N_TRAIN, N_VAL = 10, 5  # per class


def _small(src: Path, dst: Path) -> None:
    """``src`` at 128 pixels on its shorter side (quick to decode; the backbone sees 224 either way)."""
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((int(128 * max(im.size) / min(im.size)) + 1, int(128 * max(im.size) / min(im.size)) + 1))
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=90)


#: flowers5 pairs put across train and val of the clean set: another shot of one scene (a burst), and two
#: different daisies a backbone finds alike (cosine 0.73); neither is a copy.
BURST = ("train/sunflowers/5020805135_1219d7523d.jpg", "train/sunflowers/5020805619_6c710793f7.jpg")
DAISIES = ("val/daisy/2877860110_a842f8b14a_m.jpg", "train/daisy/163978992_8128b49d3e_n.jpg")


@pytest.fixture(scope="module")
def planted(hymenoptera: Path, flowers5: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("doctor") / "data"
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for c in ("ants", "bees"):
            for f in sorted((hymenoptera / split / c).glob("*.jpg"))[:n]:
                _small(f, root / split / c / f.name)
    for pair, c in ((BURST, "bees"), (DAISIES, "ants")):
        for split, f in zip(("val", "train"), pair, strict=True):
            shutil.copyfile(flowers5 / f, root / split / c / Path(f).name)
    clean = doctor(root, out=root.parent / "clean", html=False)
    strict = doctor(root, out=root.parent / "strict", html=False, fail_on_same_scene=True)
    rng = random.Random(0)
    train_ants = sorted((root / "train/ants").glob("*.jpg"))
    train_bees = sorted((root / "train/bees").glob("*.jpg"))
    val_ants = sorted((root / "val/ants").glob("*.jpg"))
    val_bees = sorted((root / "val/bees").glob("*.jpg"))
    plants = {
        # exact: a byte copy within a split, one across splits (also a leak), one across classes (a conflict)
        "copy_within": (train_ants[0], root / "train/ants/copy_within.jpg"),
        "copy_across_splits": (val_bees[0], root / "train/bees/copy_of_val.jpg"),
        "copy_across_classes": (train_ants[1], root / "train/bees/conflict.jpg"),
    }
    for src, dst in plants.values():
        shutil.copyfile(src, dst)
    # identical pixels, different bytes: one PNG saved at two compression levels
    with Image.open(train_bees[1]) as im:
        im.save(root / "train/bees/pixels_a.png", compress_level=1)
        im.save(root / "train/bees/pixels_b.png", compress_level=9)
    edited_copy(val_ants[1], root / "train/ants/mirror_of_val.jpg", "mirror", rng)  # a near copy: leakage
    edited_copy(train_bees[2], root / "train/bees/resized.jpg", "resize", rng)  # a near copy within train
    with Image.open(train_ants[2]) as im:
        im.point(lambda v: v // 12).save(root / "train/ants/dark.jpg", quality=95)
        im.filter(ImageFilter.GaussianBlur(6)).save(root / "train/ants/blurry.jpg", quality=95)
        im.convert("L").save(root / "train/ants/gray.jpg", quality=95)
        im.resize((48, 36)).save(root / "train/ants/tiny.jpg", quality=95)
        im.crop((0, 0, im.width, im.width // 4)).save(root / "train/ants/strip.jpg", quality=95)
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "val/bees/noise.png")
    (root / "train/bees/notes.jpg").write_text("not an image\n")
    exclude = root.parent / "exclude.txt"
    result = doctor(root, out=root.parent / "out", exclude_list=exclude)
    return {"root": root, "clean": clean, "strict": strict, "result": result, "exclude": exclude}


def _files(result: Any, kind: str) -> list[set[str]]:
    return [set(f.files) for f in result.of(kind)]


@pytest.mark.slow
def test_a_clean_dataset_has_nothing_serious(planted: dict[str, Any]) -> None:
    clean = planted["clean"]
    assert clean.exit_code == 0
    assert clean.count("leakage") == clean.count("label_conflict") == clean.count("exact_duplicate") == 0
    assert clean.count("near_duplicate") == 0  # the two daisies look alike, but are two photos


@pytest.mark.slow
def test_another_shot_of_a_scene_is_its_own_softer_finding(planted: dict[str, Any]) -> None:
    clean, strict = planted["clean"], planted["strict"]
    (scene,) = clean.of("same_scene")
    assert {Path(f).name for f in scene.files} == {Path(f).name for f in BURST}
    assert scene.evidence["kind"] == "same_scene" and scene.evidence["splits"] == ["train", "val"]
    assert scene.evidence["inliers"] >= 15 and scene.evidence["agreement"] < 0.8
    assert clean.exit_code == 0 and strict.exit_code == EXIT_SERIOUS  # --fail-on-same-scene opts in
    assert strict.count("same_scene") == 1 and strict.count("leakage") == 0


@pytest.mark.slow
def test_exact_duplicates_are_all_found_and_none_invented(planted: dict[str, Any]) -> None:
    r = planted["result"]
    groups = {frozenset(f.files): f.evidence for f in r.of("exact_duplicate")}
    names = {Path(x).name for g in groups for x in g}
    assert {"copy_within.jpg", "copy_of_val.jpg", "conflict.jpg", "pixels_a.png", "pixels_b.png"} <= names
    assert len(groups) == 4  # the three byte copies and the PNG pair: nothing else is identical
    by_name = {Path(x).name: ev for g, ev in groups.items() for x in g}
    assert by_name["pixels_a.png"]["identical"] == "pixels"
    assert by_name["copy_within.jpg"]["identical"] == "file"
    assert by_name["copy_of_val.jpg"]["splits"] == ["train", "val"]
    (conflict,) = r.of("label_conflict")
    assert "train/bees/conflict.jpg" in conflict.files and conflict.evidence["classes"] == ["ants", "bees"]


@pytest.mark.slow
def test_leakage_and_near_duplicates(planted: dict[str, Any]) -> None:
    r = planted["result"]
    leaked = {f.files[1]: f for f in r.of("leakage")}
    assert set(leaked) == {"train/ants/mirror_of_val.jpg", "train/bees/copy_of_val.jpg"}
    mirrored = leaked["train/ants/mirror_of_val.jpg"].evidence
    assert mirrored["kind"] == "copy" and mirrored["mirrored"] and mirrored["agreement"] >= 0.8
    assert leaked["train/bees/copy_of_val.jpg"].evidence["kind"] == "identical"
    near = [{Path(x).name for x in f} for f in _files(r, "near_duplicate")]
    assert any("resized.jpg" in pair for pair in near)
    assert any("mirror_of_val.jpg" in pair for pair in near)
    assert r.exit_code == EXIT_SERIOUS


@pytest.mark.slow
def test_quality_outliers_and_unreadable(planted: dict[str, Any]) -> None:
    r = planted["result"]
    flagged = {k: {Path(f.files[0]).name for f in r.of(k)} for k in ("dark", "blurry", "tiny", "aspect", "grayscale")}
    assert "dark.jpg" in flagged["dark"] and "blurry.jpg" in flagged["blurry"]
    assert "tiny.jpg" in flagged["tiny"] and "strip.jpg" in flagged["aspect"]
    assert flagged["grayscale"] == {"gray.jpg"}
    assert "noise.png" in {Path(f.files[0]).name for f in r.of("outlier")}
    assert [f.files[0] for f in r.of("unreadable")] == ["train/bees/notes.jpg"]


@pytest.mark.slow
def test_outputs_and_exclude_list(planted: dict[str, Any]) -> None:
    r, out = planted["result"], planted["root"].parent / "out"
    report = json.loads((out / "doctor.json").read_text())
    assert report["exit_status"] == EXIT_SERIOUS and len(report["findings"]) == len(r.findings)
    rows = list(csv.DictReader((out / "doctor.csv").open()))
    assert len(rows) == sum(max(1, len(f.files)) for f in r.findings)
    assert {"kind", "file", "split", "label", "score"} <= set(rows[0])
    excluded = read_exclude_list(planted["exclude"])
    # one copy of each group goes, train copies of val images go, both sides of a label conflict go
    assert {"train/ants/mirror_of_val.jpg", "train/bees/copy_of_val.jpg", "train/bees/conflict.jpg"} <= set(excluded)
    assert "train/bees/notes.jpg" in excluded
    # the PNGs hold the very pixels of the JPEG they were saved from (128 pixels: no draft scaling): one of 3 stays
    (pixels,) = [f.files for f in r.of("exact_duplicate") if "train/bees/pixels_a.png" in f.files]
    assert len(pixels) == 3 and len(set(pixels) - set(excluded)) == 1
    # a duplicate group keeps its val copy (a val image goes only when its own label is in doubt)
    assert not any(x.startswith("val/") for x in excluded if not excluded[x].startswith(("label_", "unreadable")))
    ds = scan(planted["root"], exclude=excluded)
    skipped = {s.path: s.reason for s in ds.report.skipped}
    assert skipped["train/ants/mirror_of_val.jpg"].startswith("excluded: leakage")
    assert all(s.path.relative_to(planted["root"]).as_posix() not in excluded for s in ds.train + ds.val)


@pytest.mark.slow
def test_train_warns_about_leakage_and_excludes(planted: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    root = planted["root"]
    assert main(["train", str(root), "--epochs", "1", "--out", str(tmp_path), "--name", "leaky"]) == 0
    assert "val images have a near-copy in train" in capsys.readouterr().out
    assert json.loads((tmp_path / "leaky/metrics.json").read_text())["val_near_copies_in_train"] == 2
    args = ["train", str(root), "--epochs", "1", "--out", str(tmp_path), "--name", "clean"]
    assert main([*args, "--exclude", str(planted["exclude"])]) == 0
    assert "near-copy" not in capsys.readouterr().out
    report = json.loads((tmp_path / "clean/data_report.json").read_text())
    assert report["val_near_copies_in_train"] == []
    assert any(s["reason"].startswith("excluded:") for s in report["skipped"])


@pytest.mark.slow
def test_cli_exit_status_and_summary(planted: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    code = main(["doctor", str(planted["root"]), "--out", str(tmp_path / "d"), "--no-html", "--json"])
    assert code == EXIT_SERIOUS
    summary = json.loads(capsys.readouterr().out)
    assert summary["found"]["leakage"] == 2 and summary["found"]["label_conflict"] == 1


def test_knn_is_exact_across_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    x = normalise(torch.randn(50, 16, generator=g))
    found = search(x, x, 5, same=True, block_bytes=4 * 50 * 7)  # 7 rows a block: several blocks, a ragged last
    full = x @ x.T
    full.fill_diagonal_(-2)
    want = full.topk(5, dim=1)
    np.testing.assert_allclose(found.sims, want.values.numpy(), rtol=1e-5, atol=1e-6)
    assert (found.index[:, 0] == want.indices[:, 0].numpy()).all()


def test_mirror_hash_matches_the_mirrored_image(hymenoptera: Path) -> None:
    with Image.open(sorted((hymenoptera / "train/bees").glob("*.jpg"))[0]) as im:
        gray = im.convert("L").resize((128, 96))
    direct, flipped = perceptual_hashes(gray)
    of_mirror, _ = perceptual_hashes(ImageOps.mirror(gray))
    assert hamming(np.array([flipped], np.uint64), np.array([of_mirror], np.uint64))[0] <= 2
    assert hamming(np.array([direct], np.uint64), np.array([of_mirror], np.uint64))[0] > 10


def test_label_scores_rank_flipped_labels_first() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32)) * 3
    labels = np.repeat(np.arange(3), 40)
    feats = centres[labels] + rng.normal(size=(120, 32))
    noisy = labels.copy()
    flipped = rng.choice(120, 8, replace=False)
    noisy[flipped] = (noisy[flipped] + 1) % 3
    x = normalise(torch.as_tensor(feats, dtype=torch.float32))
    found = search(x, x, 10, same=True)
    scores = score_labels(x, noisy, 3, found.sims, found.index)
    assert set(np.argsort(-scores.score)[:8]) == set(flipped)
    assert (scores.suggested[flipped] == labels[flipped]).all() and scores.candidate[flipped].all()
