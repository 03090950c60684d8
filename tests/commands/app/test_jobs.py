"""The app's jobs on a real project (hymenoptera's train folder imported, its val folder as the pool): a real
frozen ``graft train`` subprocess of 2 epochs on the CPU, its results, Grad-CAM, a tried image, the export zip, the
check, and the model routes over HTTP (FastAPI's test client). One trained run for the module."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


@pytest.fixture(scope="module")
def project(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    from graft.commands.app.store import Store

    folder = tmp_path_factory.mktemp("app") / "project"
    store = Store(folder)
    store.import_data(hymenoptera / "train")
    store.import_pool(hymenoptera / "val")
    yield store, folder
    store.close()


@pytest.fixture(scope="module")
def trained(project: tuple[Any, Path]) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    from graft.commands.app.jobs import Trainer

    store, folder = project
    events: list[tuple[str, dict[str, Any]]] = []
    trainer = Trainer(store, folder, lambda kind, data: events.append((kind, data)), device="cpu")
    name = trainer.start({"arch": "mobilenet_v2", "mode": "freeze", "epochs": 2})
    assert trainer.status() == {"run": name, "status": "running"}
    trainer.wait(timeout=900)
    assert trainer.status() == {"run": name, "status": "done"}, "\n".join(trainer.lines)
    return trainer, events


@pytest.fixture(scope="module")
def run_dir(trained: tuple[Any, Any], project: tuple[Any, Path]) -> Path:
    trainer, _ = trained
    return project[1] / "runs" / trainer.status()["run"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_training_job_streams_and_records_its_run(trained: tuple[Any, Any], project: tuple[Any, Path]) -> None:
    trainer, events = trained
    store, folder = project
    name = trainer.status()["run"]
    lines = [d["line"] for k, d in events if k == "train"]
    assert lines and any("epoch" in line.lower() for line in lines)
    epochs = [d["epoch"] for k, d in events if k == "train" and "epoch" in d]
    assert [e["epoch"] for e in epochs] == [1, 2]  # the figures of each epoch, for the page's curve
    assert all(0 <= e["val_acc"] <= 1 and e["train_loss"] > 0 for e in epochs)
    kind, done = events[-1]
    assert kind == "train_done" and done["run"] == name and done["status"] == "done"
    assert 0.5 < done["metrics"]["best_val_acc"] <= 1
    (row,) = [r for r in store.runs() if r.name == name]
    assert row.status == "done" and row.metrics["best_val_acc"] == done["metrics"]["best_val_acc"]
    assert row.settings["epochs"] == 2 and row.settings["mode"] == "freeze"
    with open(folder / "work" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(store.labelled())
    assert (Path(row.dir) / "app-labels.csv").read_bytes() == (folder / "work" / "labels.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.subprocess
def test_run_loads_in_graft_predict(run_dir: Path, hymenoptera: Path) -> None:
    image = next((hymenoptera / "val" / "ants").iterdir())
    out = subprocess.run(
        [sys.executable, "-m", "graft", "predict", str(run_dir), str(image), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "ants" in out.stdout or "bees" in out.stdout


@pytest.mark.slow
@pytest.mark.subprocess
def test_results_cover_the_val_split(run_dir: Path, project: tuple[Any, Path]) -> None:
    from graft.commands.app.results import RESULTS_FILE, results

    store, _ = project
    val = [r for r in store.labelled() if r.split == "val"]
    out = results(run_dir, store, device="cpu")
    assert out["classes"] == ["ants", "bees"]
    assert sum(map(sum, out["matrix"])) == len(val) == out["images"]
    cells = {k: sorted(v) for k, v in out["cells"].items()}
    assert sorted(i for ids in cells.values() for i in ids) == sorted(r.id for r in val)
    for key, ids in cells.items():
        t, p = map(int, key.split(","))
        assert out["matrix"][t][p] == len(ids)
        assert all(store.image(i).label == out["classes"][t] for i in ids)
    correct = out["matrix"][0][0] + out["matrix"][1][1]
    assert out["accuracy"] == pytest.approx(correct / len(val))
    (row,) = [r for r in store.runs() if r.name == run_dir.name]
    assert out["accuracy"] == pytest.approx(row.metrics["best_val_acc"])  # training's own val figure
    assert [c["support"] for c in out["per_class"]] == [sum(row) for row in out["matrix"]]
    losses = [t["loss"] for t in out["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    assert (run_dir / RESULTS_FILE).is_file()
    assert results(run_dir, store, device="cpu") == out  # from the cache


@pytest.mark.slow
@pytest.mark.subprocess
def test_gradcam_and_try(run_dir: Path, hymenoptera: Path) -> None:
    from graft.commands.app.results import gradcam_png, try_image
    from graft.core.errors import ImageError

    image = next((hymenoptera / "val" / "bees").iterdir())
    png = gradcam_png(run_dir, image, device="cpu")
    assert png.startswith(b"\x89PNG")
    answer = try_image(run_dir, image.read_bytes(), gradcam=True, device="cpu")
    assert [t["label"] for t in answer["top"]] in (["ants", "bees"], ["bees", "ants"])
    assert sum(t["probability"] for t in answer["top"]) == pytest.approx(1, abs=1e-5)
    assert answer["gradcam"].startswith("data:image/png;base64,")
    with pytest.raises(ImageError):
        try_image(run_dir, b"not an image", device="cpu")


@pytest.mark.slow
@pytest.mark.subprocess
def test_export_zip_holds_the_files(
    run_dir: Path, project: tuple[Any, Path], tmp_path: Path, hymenoptera: Path
) -> None:
    from graft.commands.app.results import export_zip

    store, _ = project
    path = export_zip(store, run_dir, int8=False)
    names = set(zipfile.ZipFile(path).namelist())
    expected = ["model.onnx", "model.onnx.json", "predict.py", "requirements.txt", "MODEL_CARD.md", "labels.csv"]
    assert {f"{run_dir.name}/{n}" for n in [*expected, "README.txt"]} <= names
    labels = zipfile.ZipFile(path).read(f"{run_dir.name}/labels.csv")
    assert labels == (run_dir / "app-labels.csv").read_bytes()  # the labels the run was trained on
    stamp = path.stat().st_mtime
    assert export_zip(store, run_dir, int8=False) == path and path.stat().st_mtime == stamp  # kept
    zipfile.ZipFile(path).extractall(tmp_path)
    image = next((hymenoptera / "val" / "ants").iterdir())
    out = subprocess.run(  # the zip's own script, as its README says to run it
        [sys.executable, "predict.py", str(image)], cwd=tmp_path / run_dir.name, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(image)) and ("ants" in out.stdout or "bees" in out.stdout)


@pytest.mark.slow
@pytest.mark.subprocess
def test_busy_and_cancel(trained: tuple[Any, Any], project: tuple[Any, Path]) -> None:
    from graft.commands.app.jobs import JobBusy, Trainer
    from graft.commands.app.records import AppError

    trainer, events = trained
    store, _ = project
    with pytest.raises(AppError, match="mode"):
        trainer.start({"mode": "sideways"})
    name = trainer.start({"arch": "mobilenet_v2", "mode": "freeze", "epochs": 200})
    with pytest.raises(JobBusy):
        trainer.start({"epochs": 1})
    deadline = time.monotonic() + 120
    while not any(k == "train" and d["run"] == name for k, d in events) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trainer.cancel()
    trainer.wait(timeout=60)
    assert trainer.status() == {"run": name, "status": "cancelled"}
    assert events[-1][0] == "train_done" and events[-1][1]["status"] == "cancelled"
    assert [r.status for r in store.runs() if r.name == name] == ["cancelled"]
    assert not trainer.cancel()
    store.add_run("999-left-running", run_dir_of(store, name), status="running")
    Trainer(store, project[1])  # a new app: a run still marked running ended with the old one
    assert store.run("999-left-running").status == "interrupted"


def run_dir_of(store: Any, name: str) -> Path:
    return Path(store.run(name).dir)


@pytest.mark.slow
@pytest.mark.subprocess
def test_check_maps_findings_to_images(project: tuple[Any, Path], trained: Any) -> None:
    from graft.commands.app.jobs import Checker

    store, folder = project
    events: list[str] = []
    checker = Checker(store, folder, lambda kind, data: events.append(kind), device="cpu")
    assert checker.result() == {"status": "none", "findings": []}
    checker.start()
    checker.wait(timeout=600)
    out = checker.result()
    assert out["status"] == "done", out
    assert events == ["check_done"] and (folder / "work" / "doctor" / "doctor.json").is_file()
    ids = {r.id for r in store.labelled()}
    with_images = [f for f in out["findings"] if f["images"]]
    assert with_images, "hymenoptera's train folder has known duplicates and outliers"
    for f in out["findings"]:
        assert {"kind", "severity", "message", "suggested", "images"} <= f.keys()
        assert all(i["id"] in ids and i["label"] in ("ants", "bees") for i in f["images"])
    first = with_images[0]
    store.set_reviewed([i["id"] for i in first["images"]], source="doctor")
    now = checker.result()
    assert first not in now["findings"]  # reviewed: left out
    assert Checker(store, folder).result() == now  # a restarted app shows the last check (doctor.json)


@pytest.mark.slow
@pytest.mark.subprocess
def test_model_routes(run_dir: Path, trained: tuple[Any, Any], project: tuple[Any, Path], hymenoptera: Path) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from graft.commands.app.routes_model import add_model_routes

    store, _ = project
    trainer, _ = trained
    ctx = SimpleNamespace(cfg=SimpleNamespace(max_upload_mb=1, max_pixels=40_000_000), store=store)
    ctx.learner, ctx.trainer, ctx.checker = None, trainer, None
    app = FastAPI()
    add_model_routes(app, ctx)
    client = TestClient(app)
    name = run_dir.name
    runs = client.get("/api/runs").json()["items"]
    assert name in [r["name"] for r in runs]
    queue = client.get("/api/queue?limit=5").json()
    assert queue["model"]["status"] == "none" and len(queue["items"]) == 5
    res = client.get(f"/api/runs/{name}/results").json()
    assert res["classes"] == ["ants", "bees"]
    assert client.get("/api/runs/nope/results").status_code == 404
    assert client.post("/api/check").status_code == 503
    image = next((hymenoptera / "val" / "ants").iterdir())
    answer = client.post(f"/api/try?run={name}", content=image.read_bytes()).json()
    assert answer["run"] == name and answer["gradcam"] is None and len(answer["top"]) == 2
    form = client.post("/api/try", files={"file": ("a.jpg", image.read_bytes(), "image/jpeg")})
    assert form.status_code == 200 and form.json()["run"] == name  # the newest finished run
    assert client.post(f"/api/try?run={name}", content=b"x" * 2_000_001).status_code == 413
    assert client.post(f"/api/try?run={name}", content=b"not an image").status_code in (415, 422)
    some_id = res["top_losses"][0]["id"]
    cam = client.get(f"/api/runs/{name}/gradcam/{some_id}")
    assert cam.status_code == 200 and cam.headers["content-type"] == "image/png"
    zipped = client.get(f"/api/runs/{name}/export")
    assert zipped.status_code == 200 and zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    assert client.post("/api/train/cancel").json() == {"cancelled": False}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_failed_check_says_why(project: tuple[Any, Path], tmp_path: Path) -> None:
    from graft.commands.app.jobs import Checker

    store, folder = project
    events: list[dict[str, Any]] = []
    checker = Checker(store, folder, lambda kind, data: events.append(data), arch="no_such_arch", device="cpu")
    checker.start()
    checker.wait(timeout=300)
    out = checker.result()
    assert out["status"] == "error" and "no_such_arch" in out["error"], out
    assert events == [{"status": "error", "error": out["error"]}]


def test_train_settings_and_command(tmp_path: Path) -> None:
    from graft.commands.app.jobs import train_command, train_settings
    from graft.commands.app.labels import Export
    from graft.commands.app.records import AppError

    s = train_settings({"epochs": "", "budget": ""})  # a form's empty fields: the defaults
    assert s == {"arch": "mobilenet_v2", "mode": "freeze", "epochs": 10, "auto": False, "budget": None}
    for bad in ({"epochs": 0}, {"epochs": "many"}, {"mode": "qat"}, {"budget": -1}):
        with pytest.raises(AppError):
            train_settings(bad)
    csv_path = tmp_path / "work" / "labels.csv"
    exported = Export(csv_path, tmp_path / "data", 10, ["a", "b"])
    cmd = train_command(exported, tmp_path / "runs", "001-x", train_settings({"mode": "finetune"}), "cpu")
    assert cmd[1:5] == ["-m", "graft", "train", str(csv_path)]
    assert cmd[cmd.index("--root") + 1] == str(tmp_path / "data") and cmd[cmd.index("--mode") + 1] == "finetune"
    auto = train_command(exported, tmp_path / "runs", "002-auto", train_settings({"auto": 1, "budget": 60}), "cpu")
    assert "--auto" in auto and auto[auto.index("--time-budget") + 1] == "60" and "--mode" not in auto


def test_epoch_lines() -> None:
    from graft.commands.app.jobs import epoch_of

    line = "epoch   3 head train loss 0.5123 acc 0.7500  val loss 0.3000 acc 0.9000  lr 1.00e-03    2.1s  *best"
    assert epoch_of(line) == {
        "epoch": 3,
        "stage": "head",
        "train_loss": 0.5123,
        "train_acc": 0.75,
        "val_loss": 0.3,
        "val_acc": 0.9,
    }
    assert epoch_of("best val acc 0.7320 at epoch 1; 7.2s in all") is None
