"""``graft train --image-size N``: the run trains, predicts, serves and exports at NxN pixels, the eval resize keeps
the weights' crop ratio, the stored features are keyed by the size, and architectures built for one size refuse
another before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import graft
from graft.core.config import ServeConfig, TrainConfig
from graft.core.errors import ConfigError
from graft.core.preprocess import Preprocess
from graft.features.store import store_key
from graft.models.backbones import get_backbone
from graft.models.model import choose_weights, run_preprocess

SIZE = 320


@pytest.fixture(scope="module")
def small_hymenoptera(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train and 8 val images per class of the real data: a run at 320 px in seconds."""
    root = tmp_path_factory.mktemp("hymenoptera-small")
    for split, n in (("train", 16), ("val", 8)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for image in sorted((hymenoptera / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(image, root / split / cls / image.name)
    return root


@pytest.fixture(scope="module")
def run_320(small_hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen mobilenet_v2 run at 320x320 (CPU, 2 epochs)."""
    result = graft.train(
        small_hymenoptera,
        arch="mobilenet_v2",
        mode="freeze",
        image_size=SIZE,
        epochs=2,
        device="cpu",
        out=tmp_path_factory.mktemp("runs"),
        name="size320",
        seed=0,
    )
    return result.run_dir


def test_at_size_keeps_the_crop_ratio() -> None:
    p = Preprocess()  # 224 crop of a 256 resize
    assert p.at_size(224) is p
    assert (p.at_size(320).input_size, p.at_size(320).resize_size) == (320, 366)  # round(320 * 256 / 224)
    assert (p.at_size(384).input_size, p.at_size(384).resize_size) == (384, 439)
    assert p.at_size(320).mean == p.mean and p.at_size(320).interpolation == p.interpolation


def test_default_is_the_weights_own_size() -> None:
    spec = get_backbone("mobilenet_v2")
    weights = choose_weights(spec, "auto")
    assert run_preprocess(spec, weights, None) == weights.preprocess
    assert run_preprocess(spec, weights, 224) == weights.preprocess
    assert TrainConfig(data=Path("x")).image_size is None


def test_fixed_size_architectures_and_bad_sizes_are_refused(small_hymenoptera: Path, tmp_path: Path) -> None:
    vit = get_backbone("vit_b_16")
    assert run_preprocess(vit, None, 224).input_size == 224  # its own size is fine
    with pytest.raises(ConfigError, match=r"vit_b_16 takes 224x224 inputs only.*leave out --image-size"):
        graft.train(small_hymenoptera, arch="vit_b_16", image_size=SIZE, device="cpu", out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written
    with pytest.raises(ConfigError, match="below inception_v3's smallest input"):
        run_preprocess(get_backbone("inception_v3"), None, 64)
    for bad in (16, 4096):
        with pytest.raises(ConfigError, match=r"--image-size must be in 32\.\.2048"):
            TrainConfig(data=Path("x"), image_size=bad)


def test_feature_store_key_includes_the_size() -> None:
    p = Preprocess()
    key = {"arch": "mobilenet_v2", "view": 0, "engine": "torch"}
    assert store_key(**key, preprocess=p) != store_key(**key, preprocess=p.at_size(SIZE))
    assert store_key(**key, preprocess=p.at_size(SIZE))["preprocess"]["input_size"] == SIZE


@pytest.mark.slow
def test_run_records_the_size(run_320: Path) -> None:
    meta = json.loads((run_320 / "model.json").read_text())
    assert meta["preprocess"]["input_size"] == SIZE and meta["preprocess"]["resize_size"] == 366
    assert json.loads((run_320 / "config.json").read_text())["image_size"] == SIZE
    assert graft.load(run_320, device="cpu").preprocess.input_size == SIZE


@pytest.mark.slow
def test_predict_feeds_the_model_320_pixels(run_320, small_hymenoptera, tmp_path, monkeypatch, capsys) -> None:
    from graft.commands.cli import main
    from graft.inference.float_classifier import FloatClassifier

    shapes = []
    logits = FloatClassifier.logits

    def recording(self, batch):
        shapes.append(tuple(batch.shape[1:]))
        return logits(self, batch)

    monkeypatch.setattr(FloatClassifier, "logits", recording)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_320), str(small_hymenoptera / "val"), "--out", str(out), "--device", "cpu"]) == 0
    assert shapes and set(shapes) == {(3, SIZE, SIZE)}
    assert len(out.read_text().splitlines()) == 1 + 16


@pytest.mark.slow
def test_serve_predicts_at_the_run_size(run_320, small_hymenoptera) -> None:
    from fastapi.testclient import TestClient

    from graft.commands.serve import create_app

    clf = graft.load(run_320, device="cpu")
    image = sorted((small_hymenoptera / "val/bees").glob("*.jpg"))[0]
    app = create_app(clf, ServeConfig(run=run_320, device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # lifespan: the batcher; a loopback Host
        assert client.get("/model").json()["preprocess"]["input_size"] == SIZE
        answer = client.post("/predict?top_k=2", content=image.read_bytes()).json()
    want = clf.predict(image, top_k=2)
    assert [p["label"] for p in answer["predictions"]] == [p.label for p in want]


@pytest.mark.slow
def test_onnx_export_takes_320_inputs(run_320, tmp_path) -> None:
    import onnx

    from graft.deploy.export import export

    result = export(run_320, format="onnx", out=tmp_path / "m.onnx", verify_images=8)
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, SIZE, SIZE]
    side = json.loads(result.sidecar.read_text())
    assert side["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert side["preprocess"]["input_size"] == SIZE
