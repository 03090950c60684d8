"""Experiment tracking (``--log tensorboard,mlflow``) and the model card (``README.md``) of a real run, read back
with the trackers' own readers: TensorBoard's EventAccumulator, MLflow's search and artifact APIs, and a YAML parser
for the card's front matter.

One tiny frozen run (mobilenet_v2, 12 generated images, 3 epochs, CPU) with both trackers serves most tests."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import graft
from graft.commands.cli import main
from graft.core.config import TrainConfig
from graft.core.errors import ConfigError
from graft.insight.modelcard import render_model_card, to_yaml

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
yaml = pytest.importorskip("yaml")  # mlflow's own dependency; graft's card writer does not use it

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

LAYOUT = {"train/red": 4, "train/blue": 4, "val/red": 2, "val/blue": 2}
EPOCHS = 3
TOL = 1e-5  # results.csv keeps 6 decimals; TensorBoard stores float32


def make_images(root: Path) -> Path:
    """Two classes of noisy colour patches: learnable, so the losses move from epoch to epoch."""
    rng = np.random.default_rng(0)
    for folder, n in LAYOUT.items():
        (root / folder).mkdir(parents=True)
        colour = np.array([200, 40, 40] if folder.endswith("red") else [40, 40, 200])
        for j in range(n):
            pixels = np.clip(colour + rng.integers(-60, 60, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / folder / f"img{j}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[graft.training.RunResult, str]:
    """A run logged to TensorBoard and to MLflow (a SQLite store in a temporary folder); (run, tracking URI)."""
    base = tmp_path_factory.mktemp("tracked")
    data = make_images(base / "colours")
    store = base / "mlflow"
    run = graft.train(
        data,
        arch="mobilenet_v2",
        epochs=EPOCHS,
        device="cpu",
        out=base / "runs",
        name="tracked",
        seed=0,
        log=["tensorboard", "mlflow"],
        mlflow_uri=str(store),
    )
    return run, f"sqlite:///{store / 'mlflow.db'}"


def results(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


# ----------------------------------------------------------------------------------------------------------------
# TensorBoard


@pytest.mark.slow
def test_tensorboard_has_every_epoch_of_results_csv(tracked) -> None:
    run, _ = tracked
    acc, rows = events(run.run_dir), results(run.run_dir)
    assert len(rows) == EPOCHS
    for tag, column in [
        ("train/loss", "train_loss"),
        ("train/acc", "train_acc"),
        ("val/loss", "val_loss"),
        ("val/acc", "val_acc"),
        ("lr", "lr"),
        ("val/balanced_acc", "val_balanced_acc"),
        ("val/macro_f1", "val_macro_f1"),
    ]:
        scalars = acc.Scalars(tag)
        assert [s.step for s in scalars] == [int(r["epoch"]) for r in rows], tag
        expected = [float(r[column]) for r in rows]
        assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-5, abs=TOL), tag
    assert len({round(s.value, 4) for s in acc.Scalars("train/loss")}) > 1  # the values are the epochs' own
    assert [s.value for s in acc.Scalars("stage")] == [0.0] * EPOCHS  # a frozen run: head stage only


@pytest.mark.slow
def test_tensorboard_has_the_figures_and_the_hparams(tracked) -> None:
    run, _ = tracked
    acc = events(run.run_dir)
    images = set(acc.Tags()["images"])
    assert {"curves", "confusion_matrix", "predictions", "top_losses"} <= images
    curves = acc.Images("curves")[-1]
    with Image.open(run.run_dir / "curves.png") as im:
        assert (curves.width, curves.height) == im.size
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["arch"].string_value == "mobilenet_v2"
    assert hparams["epochs"].number_value == EPOCHS
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/best_val_acc" in {m.name.tag for m in experiment.metric_infos}
    assert acc.Scalars("final/best_val_acc")[-1].value == pytest.approx(metrics["best_val_acc"], abs=TOL)
    evaluation = json.loads((run.run_dir / "evaluation.json").read_text())
    low = acc.Scalars("final/eval_accuracy_ci95_low")[-1].value
    assert low == pytest.approx(evaluation["accuracy_ci95"][0], abs=TOL)


# ----------------------------------------------------------------------------------------------------------------
# MLflow


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_and_artifacts(tracked, monkeypatch) -> None:
    run, uri = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    found = mlflow.search_runs(experiment_names=["colours"], output_format="list")
    assert len(found) == 1
    info, data = found[0].info, found[0].data
    saved = json.loads((run.run_dir / "mlflow.json").read_text())
    assert (info.run_id, info.run_name, info.status) == (saved["run_id"], "tracked", "FINISHED")
    config = json.loads((run.run_dir / "config.json").read_text())
    assert data.params["arch"] == "mobilenet_v2" and data.params["epochs"] == str(EPOCHS)
    assert data.params["log"] == "tensorboard,mlflow" and data.params["lr"] == "none"
    assert set(config) <= set(data.params)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert data.metrics["best_val_acc"] == pytest.approx(metrics["best_val_acc"], abs=1e-9)
    assert data.metrics["n_train"] == metrics["n_train"] == 8
    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(info.run_id, "val/loss")
    rows = results(run.run_dir)
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx([float(r["val_loss"]) for r in rows], abs=TOL)
    names = {a.path for a in mlflow.artifacts.list_artifacts(run_id=info.run_id)}
    assert {"metrics.json", "config.json", "model.safetensors", "README.md", "report.html", "tensorboard"} <= names
    assert "resume.safetensors" not in names
    local = Path(mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path="metrics.json"))
    assert json.loads(local.read_text()) == metrics


# ----------------------------------------------------------------------------------------------------------------
# the model card


def front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.slow
def test_model_card_front_matter_and_numbers(tracked) -> None:
    run, _ = tracked
    card, body = front_matter((run.run_dir / "README.md").read_text(encoding="utf-8"))
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    evaluation = json.loads((run.run_dir / "evaluation.json").read_text())
    assert card["library_name"] == "graft" and card["pipeline_tag"] == "image-classification"
    assert {"graft", "mobilenet_v2", "freeze"} <= set(card["tags"])
    result = card["model-index"][0]["results"][0]
    assert card["model-index"][0]["name"] == "tracked" and result["dataset"]["name"] == "colours"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == pytest.approx(metrics["best_val_acc"], abs=1e-6)
    assert values["balanced_accuracy"] == pytest.approx(evaluation["balanced_accuracy"], abs=1e-6)
    assert values["f1"] == pytest.approx(evaluation["macro_f1"], abs=1e-6)
    for heading in ("## Model description", "## Training data", "## Metrics", "## Intended use", "## How to use"):
        assert heading in body
    lo, hi = evaluation["accuracy_ci95"]
    assert f"{lo:.4f}-{hi:.4f} (Wilson)" in body
    assert f"{evaluation['correct']}/{evaluation['n']}" in body
    assert "| `blue` | 4 | 2 |" in body and "| **total** | 8 | 4 |" in body
    for m in evaluation["per_class"]:
        assert f"| `{m['class']}` | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |" in body
    assert f"graft predict {run.run_dir} " in body and f'graft.load("{run.run_dir}")' in body
    assert "run `" + json.loads((run.run_dir / "mlflow.json").read_text())["run_id"] in body


@pytest.mark.slow
def test_model_card_from_metrics_alone_and_warnings(tracked, tmp_path) -> None:
    """Without evaluation.json the interval comes from metrics.json (Wilson of its count); near-copies, skipped
    files and imbalance become limits."""
    run, _ = tracked
    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("tensorboard", "*.safetensors", "*.png"))
    (copy / "evaluation.json").unlink()
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics |= {"best_val_acc": 0.75, "n_val": 4, "val_near_copies_in_train": 2}
    (copy / "metrics.json").write_text(json.dumps(metrics))
    report = json.loads((copy / "data_report.json").read_text())
    report["counts"]["train"] = {"blue": 40, "red": 4}
    report["skipped"] = [{"path": "a.jpg", "reason": "not an image"}, {"path": "b.jpg", "reason": "not an image"}]
    (copy / "data_report.json").write_text(json.dumps(report))
    card, body = front_matter(render_model_card(copy))
    assert card["model-index"][0]["results"][0]["metrics"] == [
        {"type": "accuracy", "value": 0.75, "name": "Val accuracy"}
    ]
    assert "3/4" in body and "0.3006-0.9544 (Wilson)" in body  # Wilson 95% of 3/4, by hand
    assert "**2 of 4 val images have a near-copy in the training images**" in body
    assert "- 2 x not an image" in body and "Imbalanced training data (40 `blue` vs 4 `red`" in body
    assert "Per-class figures: `graft evaluate`" in body


def test_yaml_emitter_round_trips_awkward_strings() -> None:
    value = {"a": ['x: "y"', "#not a comment", "ünïcode", "- dash"], "b": [{"c": 1.5, "d": None, "e": True}], "f": []}
    assert yaml.safe_load(to_yaml(value)) == value


# ----------------------------------------------------------------------------------------------------------------
# errors before training


def test_log_names(tmp_path) -> None:
    assert TrainConfig(data=tmp_path, log="TensorBoard, mlflow,tensorboard").log == ("tensorboard", "mlflow")
    with pytest.raises(ConfigError, match="unknown tracker 'wandb'; choose from tensorboard, mlflow"):
        graft.train(tmp_path, log=["wandb"])


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_missing_package_is_one_error_line_before_training(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The package cannot be imported (None in sys.modules, as when it is not installed; torch's tensorboard
    module is imported again, and fails as it does without the package): graft train stops with one error line
    naming the extra, and no run directory is made."""
    data = make_images(tmp_path / "data")
    monkeypatch.setitem(sys.modules, name, None)
    if name == "tensorboard":
        monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    out = tmp_path / "runs"
    code, err = run_cli(["train", str(data), "--log", name, "--out", str(out), "--device", "cpu"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: --log {name} needs the {name} package: pip install 'graft[{name}]'")
    assert not out.exists()


def test_unknown_tracker_and_refused_store_are_error_lines(tmp_path: Path, capsys) -> None:
    data = make_images(tmp_path / "data")
    out = tmp_path / "runs"
    code, err = run_cli(["train", str(data), "--log", "tensorboard,wandb", "--out", str(out)], capsys)
    assert code == 1 and err == [
        "error: --log: unknown tracker 'wandb'; choose from tensorboard, mlflow (comma-separated)"
    ]
    # MLflow 3 refuses its plain file store: that is said before any training, with the way out
    uri = (tmp_path / "legacy").as_uri()
    code, err = run_cli(["train", str(data), "--log", "mlflow", "--mlflow-uri", uri, "--out", str(out)], capsys)
    assert (
        code == 1 and len(err) == 1 and err[0].startswith(f"error: --log mlflow: cannot use the tracking store {uri}")
    )
    assert "--mlflow-uri" in err[0] and not out.exists()


@pytest.mark.slow
def test_evaluate_rewrites_the_model_card(tracked, capsys) -> None:
    """graft evaluate RUN rewrites evaluation.json, and with it the card (last in this file: it rewrites the
    shared run's README.md)."""
    run, _ = tracked
    card = run.run_dir / "README.md"
    before = card.read_text(encoding="utf-8")
    card.write_text("stale\n", encoding="utf-8")
    assert main(["evaluate", str(run.run_dir), "--no-plots", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert card.read_text(encoding="utf-8") == before  # the same files give the same card
