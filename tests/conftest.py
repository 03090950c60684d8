"""Shared fixtures: the real hymenoptera dataset, a factory of small synthetic image folders, and one real run.

Every test is hermetic: before any test runs, ``GRAFT_CACHE_DIR`` points at a fresh folder for the whole session
(never the user's ``~/.cache/graft``: neither its stored features nor its scan verdicts leak in), and
``GRAFT_OFFLINE=1``. Subprocesses inherit both. Tests that need a cache of their own still set one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

#: The session's feature and scan cache (set in pytest_configure, removed at the end).
SESSION_CACHE = Path()


def pytest_configure(config: pytest.Config) -> None:
    global SESSION_CACHE
    SESSION_CACHE = Path(tempfile.mkdtemp(prefix="graft-test-cache-"))
    os.environ["GRAFT_CACHE_DIR"] = str(SESSION_CACHE)
    os.environ["GRAFT_OFFLINE"] = "1"
    config.add_cleanup(lambda: shutil.rmtree(SESSION_CACHE, ignore_errors=True))


#: The session fixtures below that train a run on the real data (a minute or more on 2 cores).
TRAINING_FIXTURES = frozenset({"frozen_run", "mosaic_run"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a trained run (directly or through another fixture) is ``slow`` whatever its own body costs.
    The test files say so with their own markers; this catches a new test that does not, so that make test-fast
    never trains these runs."""
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The real ants/bees dataset: ``$GRAFT_DATA``, else ``../shared/data/hymenoptera_data`` from the repo."""
    env = os.environ.get("GRAFT_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"
    assert (path / "train").is_dir() and (path / "val").is_dir(), f"hymenoptera dataset not found at {path}"
    return path


@pytest.fixture(scope="session")
def flowers5() -> Path:
    """Five flower species, fine-grained (distinct photos look alike): ``../shared/data/flowers5`` from the repo."""
    path = Path(__file__).resolve().parents[2] / "shared/data/flowers5"
    assert (path / "train").is_dir() and (path / "val").is_dir(), f"flowers5 dataset not found at {path}"
    return path


#: json/csv files of a frozen mobilenet_v2 run written by an earlier graft (its weights are made by fixture_run).
FIXTURE_RUN = Path(__file__).resolve().parent / "fixtures/run-mobilenet_v2-freeze"


@pytest.fixture(scope="session")
def fixture_run(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture's files, its data root pointed at this checkout's hymenoptera, and weights: the pretrained body
    it names (sha256 checked) and a seeded head, saved by graft's own writer (only ``weights_sha256`` changes).
    No training: a real run directory in seconds. Shared by the session: copy it before changing anything."""
    import torch

    from graft.core import rundir
    from graft.core.runmeta import RunMeta
    from graft.models.backbones import get_backbone
    from graft.models.model import build_model

    run = tmp_path_factory.mktemp("fixture-run") / FIXTURE_RUN.name
    shutil.copytree(FIXTURE_RUN, run)
    report = json.loads((run / rundir.DATA_REPORT).read_text())
    (run / rundir.DATA_REPORT).write_text(json.dumps(report | {"root": str(hymenoptera)}))
    meta = RunMeta.read(run)
    assert meta.head is not None and meta.pretrained is not None
    torch.manual_seed(0)
    model, _, info = build_model(get_backbone(meta.arch), len(meta.classes), head=meta.head, pretrained="auto")
    assert info.sha256 == meta.pretrained["sha256"]
    rundir.save_model(run, model, meta.to_dict())
    return run


@pytest.fixture
def tmp_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make({"train/cat": 3, "val/cat": 1, ...}, size=(32, 32))`` writes that many small JPEGs
    (each a distinct colour) under a fresh folder and returns the folder."""
    made = 0

    def make(layout: dict[str, int], size: tuple[int, int] = (32, 32), name: str = "data") -> Path:
        nonlocal made
        made += 1
        root = tmp_path / f"{name}{made}"
        for i, (folder, n) in enumerate(layout.items()):
            (root / folder).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                colour = ((40 * i) % 256, (25 * j) % 256, 128)
                Image.new("RGB", size, colour).save(root / folder / f"img{j:03d}.jpg", quality=90)
        return root

    return make


@pytest.fixture(scope="session")
def frozen_run(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory):
    """One frozen mobilenet_v2 run on the real data, shared by every test that needs a trained run.

    On the CPU: with ``auto`` a CUDA host would train in bf16, and every comparison with CPU numbers would drift.
    Its features go to the session's cache (whatever a test has set meanwhile), where ``evaluate()`` later finds
    the very val rows that training's val phase used."""
    import graft

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_CACHE_DIR", str(SESSION_CACHE))
        return graft.train(
            hymenoptera,
            arch="mobilenet_v2",
            mode="freeze",
            epochs=5,
            device="cpu",
            out=tmp_path_factory.mktemp("runs"),
            name="frozen",
            seed=0,
        )


@pytest.fixture(scope="session")
def mosaics(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-label set of real photos: 24 train / 12 val 2x2 mosaics of hymenoptera images (128 px), a third
    ants only, a third bees only, a third both; ``labels.csv`` (path, labels space-separated, split) beside them."""
    from benchmarks.bench_multilabel import build_mosaics

    return build_mosaics(hymenoptera, tmp_path_factory.mktemp("mosaics"), n_train=24, n_val=12, size=128)


@pytest.fixture(scope="session")
def mosaic_run(mosaics: Path, tmp_path_factory: pytest.TempPathFactory):
    """One frozen multi-label mobilenet_v2 run on :func:`mosaics` (CPU, the session's cache)."""
    import graft

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("GRAFT_CACHE_DIR", str(SESSION_CACHE))
        return graft.train(
            mosaics,
            label_delim=" ",
            epochs=8,
            device="cpu",
            out=tmp_path_factory.mktemp("runs"),
            name="multilabel",
            seed=0,
        )


#: The import names predict.py needs with ONNX Runtime, and the shared-library folders their wheels ship beside them.
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "numpy.libs", "PIL", "pillow.libs")


@pytest.fixture(scope="session")
def runtime_python(tmp_path_factory) -> Callable[..., Path]:
    """A factory of new venvs (the base interpreter, no system site-packages) that see only the named import
    packages of the test's environment (plus numpy and Pillow), through a .pth naming a folder of symbolic links:
    ``runtime_python("openvino", "openvino.libs")`` is a Python where predict.py has OpenVINO and no torch."""
    made: dict[tuple[str, ...], Path] = {}

    def make(*packages: str) -> Path:
        names = tuple(dict.fromkeys((*packages, "numpy", "numpy.libs", "PIL", "pillow.libs")))
        if names in made:
            return made[names]
        root = tmp_path_factory.mktemp("runtime-python")
        site = Path(sysconfig.get_paths()["purelib"])
        pkgs = root / "pkgs"
        pkgs.mkdir()
        for name in names:
            if (site / name).exists():
                (pkgs / name).symlink_to(site / name)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
        python = root / "venv/bin/python"
        venv_site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        (Path(venv_site) / "runtime.pth").write_text(f"{pkgs}\n")
        made[names] = python
        return python

    return make


@pytest.fixture(scope="session")
def torch_free_python(runtime_python) -> Path:
    """A Python that sees only onnxruntime, numpy and Pillow (:func:`runtime_python`)."""
    return runtime_python(*RUNTIME_PACKAGES)
