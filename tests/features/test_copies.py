"""graft.features.copies on real photos: edited copies are copies, other shots of one scene are same_scene, and
distinct photos that a backbone finds alike (flowers5's closest pairs) are neither."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from planted import SINGLE, TRANSFORMS, edited_copy

from graft.features import copies

#: flowers5 pairs a person looked at (NOTES.md, "Copies"), with their backbone similarity.
SAME_PHOTO = ("train/sunflowers/17433282043_441b0a07f4_n.jpg", "train/sunflowers/22429946721_e17a12cb39_n.jpg")
SAME_SCENE = [
    # a burst: the camera moved a little, the flowers swayed (cosine 0.74)
    ("train/sunflowers/5020805135_1219d7523d.jpg", "train/sunflowers/5020805619_6c710793f7.jpg"),
    # one tulip bed shot twice, framed differently (cosine 0.53)
    ("train/tulips/440714501_9f8268e1b0.jpg", "train/tulips/444963906_e41492b692.jpg"),
]
DISTINCT = [
    # different daisies filling the frame (cosine 0.73 and 0.60)
    ("val/daisy/2877860110_a842f8b14a_m.jpg", "train/daisy/163978992_8128b49d3e_n.jpg"),
    ("val/daisy/2877860110_a842f8b14a_m.jpg", "train/daisy/4668543441_79040ca329_n.jpg"),
    # two sunflower heads (0.68), two dandelion heads on grass (0.63)
    ("val/sunflowers/5139969631_743880e01d_n.jpg", "train/sunflowers/5979111555_61b400c070_n.jpg"),
    ("train/dandelion/459633569_5ddf6bc116_m.jpg", "train/dandelion/4634716478_1cbcbee7ca.jpg"),
]


def _verdicts(paths: list[Path], pairs: list[tuple[int, int]], **kw: object) -> list[copies.Verdict]:
    return copies.verify(paths, pairs, workers=1, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def edited(hymenoptera: Path, flowers5: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    """Every single edit and a few pairs of edits, on photos of both datasets: (original, edited copy)."""
    out = tmp_path_factory.mktemp("copies")
    rng = random.Random(0)
    sources = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:4] + sorted((flowers5 / "val/tulips").glob("*.jpg"))[:4]
    kinds = [*SINGLE, "crop+resize", "mirror+rotate", "resize+jpeg", "crop+colour"]
    pairs = []
    for i, kind in enumerate(kinds):
        src = sources[i % len(sources)]
        dst = out / f"{i:02d}-{kind}.jpg"
        edited_copy(src, dst, kind, rng)
        pairs.append((src, dst))
    return pairs


def test_edited_copies_are_copies(edited: list[tuple[Path, Path]]) -> None:
    paths = [p for pair in edited for p in pair]
    found = _verdicts(paths, [(2 * i, 2 * i + 1) for i in range(len(edited))])
    kinds = {dst.stem: v.kind for (_, dst), v in zip(edited, found, strict=True)}
    assert all(k == copies.COPY for k in kinds.values()), kinds
    by_edit = {dst.stem.split("-", 1)[1]: v for (_, dst), v in zip(edited, found, strict=True)}
    assert by_edit["mirror"].mirrored and by_edit["mirror+rotate"].mirrored
    assert not by_edit["crop"].mirrored and by_edit["crop"].scale > 1  # a crop, blown up to the same size
    assert all(v.agreement >= copies.COPY_AGREEMENT and v.inliers >= copies.COPY_INLIERS for v in found)
    assert set(TRANSFORMS) >= set(by_edit)


def test_other_shots_and_distinct_photos_are_not_copies(flowers5: Path) -> None:
    pairs = [SAME_PHOTO, *SAME_SCENE, *DISTINCT]
    paths = [flowers5 / p for pair in pairs for p in pair]
    found = _verdicts(paths, [(2 * i, 2 * i + 1) for i in range(len(pairs))])
    assert found[0].kind == copies.COPY  # the one real copy flowers5 ships: a shifted crop of one photo
    assert [v.kind for v in found[1:3]] == [copies.SAME_SCENE] * 2
    assert [v.kind for v in found[3:]] == [copies.SIMILAR] * len(DISTINCT)


def test_the_transform_maps_the_first_image_onto_the_second(hymenoptera: Path, tmp_path: Path) -> None:
    src = sorted((hymenoptera / "train/ants").glob("*.jpg"))[0]
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        box = (w // 4, h // 5, w // 4 + w // 2, h // 5 + h // 2)  # a quarter of the area, off-centre
        im.crop(box).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "crop.jpg", quality=90)
    (v,) = _verdicts([src, tmp_path / "crop.jpg"], [(0, 1)])
    assert v.kind == copies.COPY and v.mirrored
    m = np.array(v.transform).reshape(2, 3)
    # the crop's corners, in the mirrored original's normalised coordinates, land on the crop's corners
    left, top = 1 - (box[2] / w), box[1] / h  # mirrored: the box's right edge becomes its left
    corners = np.array([[left, top, 1], [left + 0.5, top + 0.5, 1]])
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [1, 1]], atol=0.03)
    assert abs(v.scale - 2.0) < 0.1 and abs(v.angle) < 1.5
    for xa, ya, xb, yb in v.points:  # every kept match agrees with the transform
        assert np.hypot(*(m @ [xa, ya, 1] - [xb, yb])) < 0.03


def test_chunks_give_the_same_verdicts_and_bad_files_are_no_copies(
    edited: list[tuple[Path, Path]], tmp_path: Path
) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths = [p for pair in edited[:4] for p in pair] + [tmp_path / "broken.jpg"]
    pairs = [(0, 1), (2, 3), (4, 5), (6, 7), (0, 8), (8, 1)]
    whole = _verdicts(paths, pairs)
    chunked = copies.verify(paths, pairs, workers=2, chunk=2)
    assert [v.kind for v in whole] == [v.kind for v in chunked] == [copies.COPY] * 4 + [copies.SIMILAR] * 2
    # identical by construction: the same pixels, and OpenCV seeds RANSAC afresh on every call
    assert [v.inliers for v in whole] == [v.inliers for v in chunked]
