"""Tests of graft.inference: loading a run, top-k predictions, streaming over files, refusing damaged runs."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from numerics import PROB_ATOL, assert_accuracy_within_one_image
from PIL import Image

import graft
from graft.commands import cli
from graft.core.errors import GraftError, ImageError, RunError
from graft.inference.classifier import Classifier, Prediction
from graft.inference.paths import expand_paths

GRAFT = Path(graft.__file__).parent


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")


@pytest.fixture(scope="module")
def clf(frozen_run) -> Classifier:
    return graft.load(frozen_run.run_dir, device="cpu")


@pytest.fixture
def run_copy(frozen_run, tmp_path: Path) -> Path:
    """A copy of the shared run that a test may damage."""
    return Path(shutil.copytree(frozen_run.run_dir, tmp_path / "run"))


def check_top_k(preds: list[Prediction], k: int) -> None:
    assert len(preds) == k
    probs = [p.probability for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs)
    assert len({p.label for p in preds}) == k


@pytest.mark.slow
def test_predict_one_bee(clf, hymenoptera) -> None:
    preds = clf.predict(hymenoptera / "val/bees/72100438_73de9f17af.jpg", top_k=2)
    check_top_k(preds, 2)
    assert preds[0].label == "bees"
    assert preds[0].probability > 0.5
    assert sum(p.probability for p in preds) == pytest.approx(1.0, abs=1e-5)
    assert preds[0].to_dict() == {"label": "bees", "probability": preds[0].probability}


@pytest.mark.slow
@pytest.mark.numerics
def test_predicting_the_val_folder_reproduces_best_val_acc(clf, frozen_run, hymenoptera) -> None:
    """Through the backbone again (training's val phase read its stored features): the same accuracy, to one
    near-tie image."""
    paths = expand_paths([hymenoptera / "val"])
    assert len(paths) == 153
    results = list(clf.predict_paths(paths, top_k=1))
    assert [r.path for r in results] == [str(p) for p in paths]
    assert all(r.error is None for r in results)
    correct = sum(r.predictions[0].label == Path(r.path).parent.name for r in results)
    assert_accuracy_within_one_image(correct / len(results), frozen_run.metrics["best_val_acc"], 153)


@pytest.mark.slow
@pytest.mark.numerics
def test_predict_pil_image_and_lists(clf, hymenoptera) -> None:
    path = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    from_path = clf.predict(path, top_k=2)
    with Image.open(path) as im:
        from_pil = clf.predict(im, top_k=2)
        from_gray = clf.predict(im.convert("L"), top_k=2)  # any mode is converted
    assert [p.label for p in from_pil] == [p.label for p in from_path]
    assert from_pil[0].probability == pytest.approx(from_path[0].probability, abs=0.02)
    check_top_k(from_gray, 2)

    ant = next((hymenoptera / "val/ants").glob("*.jpg"))
    batch = clf.predict([path, str(ant), path], top_k=1, batch_size=2)
    assert isinstance(batch, list) and len(batch) == 3
    assert all(isinstance(b, list) and len(b) == 1 and isinstance(b[0], Prediction) for b in batch)
    assert batch[0][0].label == batch[2][0].label == "bees"
    # the same image in a batch of two, then alone: other batch shapes, so equal to rounding
    assert batch[0][0].probability == pytest.approx(batch[2][0].probability, abs=PROB_ATOL)
    # a tuple is a list of images too; exactly: both are one batch of this one image, in this process
    assert clf.predict((path,), top_k=1) == [clf.predict(path, top_k=1)]

    clipped = clf.predict(path, top_k=10)
    check_top_k(clipped, 2)
    assert sum(p.probability for p in clipped) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_predict_raises_image_error_for_a_bad_file(clf, tmp_path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("just text")
    with pytest.raises(ImageError) as info:
        clf.predict(bad)
    assert "not an image" in info.value.reason


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_predict_paths_reports_bad_files_and_goes_on(clf, hymenoptera, tmp_path, batch_size) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("just text, no picture")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    bees = sorted((hymenoptera / "val/bees").glob("*.jpg"))[:3]
    paths = [bees[0], bad, bees[1], empty, bees[2]]
    results = list(clf.predict_paths(paths, top_k=2, batch_size=batch_size))
    assert [r.path for r in results] == [str(p) for p in paths]
    for i in (1, 3):
        assert results[i].predictions is None and results[i].error
        assert results[i].to_dict() == {"path": str(paths[i]), "error": results[i].error}
    assert "text" in results[1].error and "empty" in results[3].error
    for i in (0, 2, 4):
        assert results[i].error is None
        check_top_k(results[i].predictions, 2)
        assert set(results[i].to_dict()) == {"path", "predictions"}


def test_expand_paths(hymenoptera, tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.jpg", "a.jpg", "sub/c.jpg", ".hidden/d.jpg", ".e.jpg"):
        (tmp_path / name).write_bytes(b"x")
    one = hymenoptera / "val/bees/72100438_73de9f17af.jpg"
    assert expand_paths([tmp_path, one]) == [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "sub/c.jpg", one]
    with pytest.raises(GraftError, match="does not exist"):
        expand_paths([tmp_path / "nope.jpg"])


def _linked_folder(tmp_path: Path) -> tuple[Path, Path]:
    """DIR with an image, a link to a folder inside DIR, and a link to a folder outside DIR (holding an image)."""
    folder, outside = tmp_path / "dir", tmp_path / "outside"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    for name in ("dir/a.jpg", "dir/sub/b.jpg", "outside/c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (folder / "inside").symlink_to(folder / "sub", target_is_directory=True)
    (folder / "out").symlink_to(outside, target_is_directory=True)
    return folder, outside


def test_folder_links_out_of_the_folder_given_are_passed_over(tmp_path) -> None:
    folder, outside = _linked_folder(tmp_path)
    skipped: list[tuple[Path, str]] = []
    inside = [folder / "a.jpg", folder / "inside/b.jpg"]  # dir/inside leads to dir/sub, walked once
    assert expand_paths([folder], on_skip=lambda p, why: skipped.append((p, why))) == inside
    assert skipped == [(folder / "out", f"a link to {outside}, outside {folder}: not followed (--follow-links)")]
    assert expand_paths([folder], follow_links=True) == [*inside, folder / "out/c.jpg"]
    (folder / "root").symlink_to("/", target_is_directory=True)
    assert expand_paths([folder]) == inside
    assert expand_paths([folder / "out"]) == [folder / "out/c.jpg"]  # a link named by the user is followed


def test_a_path_that_may_not_be_looked_at_is_yielded_for_its_read_to_fail(tmp_path, monkeypatch) -> None:
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.stat

    def stat(path, *args, **kwargs):  # type: ignore[no-untyped-def]  # as in a folder without search permission
        if str(path).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "lstat", stat)
    assert expand_paths([locked / "x.jpg", locked]) == [locked / "x.jpg", locked]


@pytest.mark.slow
def test_predict_cli_passes_over_links_out_of_the_folder(frozen_run, tmp_path, capsys) -> None:
    folder, outside = _linked_folder(tmp_path)
    base = ["predict", str(frozen_run.run_dir), str(folder), "--json", "--device", "cpu"]
    assert cli.main(base) == 0
    captured = capsys.readouterr()
    assert [r["path"] for r in json.loads(captured.out)] == [str(folder / "a.jpg"), str(folder / "inside/b.jpg")]
    assert (
        captured.err.strip() == f"note: {folder / 'out'}: a link to {outside}, outside {folder}: not followed "
        "(--follow-links)"
    )
    assert cli.main([*base, "--follow-links"]) == 0
    assert str(folder / "out/c.jpg") in [r["path"] for r in json.loads(capsys.readouterr().out)]
    csv = tmp_path / "p.csv"
    assert cli.main(["predict", str(frozen_run.run_dir), str(folder), "--out", str(csv), "--device", "cpu"]) == 0
    assert "c.jpg" not in csv.read_text() and "not followed" in capsys.readouterr().err


# --- damaged or missing runs -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tampered_weights_are_refused(run_copy) -> None:
    weights = run_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(RunError, match="sha256"):
        graft.load(run_copy, device="cpu")


def test_missing_run_dir(tmp_path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        graft.load(tmp_path / "no-such-run", device="cpu")


@pytest.mark.slow
def test_missing_or_damaged_files(run_copy) -> None:
    (run_copy / "model.safetensors").unlink()
    with pytest.raises(RunError, match=r"model\.safetensors"):
        graft.load(run_copy, device="cpu")
    (run_copy / "model.json").write_text("{ not json")
    with pytest.raises(RunError, match=r"model\.json"):
        graft.load(run_copy, device="cpu")
    (run_copy / "model.json").unlink()
    with pytest.raises(RunError, match=r"model\.json"):
        graft.load(run_copy, device="cpu")


@pytest.mark.slow
def test_model_json_that_does_not_fit_the_weights(run_copy) -> None:
    meta = json.loads((run_copy / "model.json").read_text())
    (run_copy / "model.json").write_text(json.dumps(meta | {"classes": ["ants", "bees", "wasps"]}))
    with pytest.raises(RunError, match="does not fit"):
        graft.load(run_copy, device="cpu")
    (run_copy / "model.json").write_text(json.dumps(meta | {"format": "graft-run/99"}))
    with pytest.raises(RunError, match="format"):
        graft.load(run_copy, device="cpu")


def unpickling_uses(source: str) -> list[str]:
    """Code (not docstrings or comments) in ``source`` that could unpickle: pickle/dill/joblib, torch.load."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in {"pickle", "_pickle", "dill", "joblib", "cloudpickle"} for n in names):
                found.append(ast.unparse(node))
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in names:
                found.append(ast.unparse(node))
        elif isinstance(node, ast.Attribute) and node.attr == "load" and ast.unparse(node.value) == "torch":
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Name) and node.id in {"pickle", "dill"}:
            found.append(node.id)
    return found


@pytest.mark.slow
def test_load_never_unpickles(frozen_run, monkeypatch) -> None:
    for name in (
        "inference/loading.py",
        "inference/float_classifier.py",
        "core/checkpoint.py",
        "training/resume.py",
        "int8/program.py",
    ):
        assert unpickling_uses((GRAFT / name).read_text(encoding="utf-8")) == [], name
    assert unpickling_uses("import pickle\nx = torch.load(f)\nfrom torch import load") != []  # the check works

    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("graft.load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    clf = graft.load(frozen_run.run_dir, device="cpu")
    assert clf.classes == ["ants", "bees"]
