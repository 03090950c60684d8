"""A run directory reaches nothing beyond itself: what its ``model.json`` names is refused, through the real CLI,
with one ``error:`` line, when it would load a pickle, read a file outside the run or another run's weights, or
build a model that does not fit in memory.

The pickle case plants a live payload where torchvision looks for MobileNetV2's ImageNet weights
(``$TORCH_HOME/hub/checkpoints``) and sets ``arch_kwargs`` to ``{"weights": "IMAGENET1K_V1"}``: each command must
refuse the run before anything opens that file, so the marker the payload would write never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graft.core import checkpoint as ckpt
from graft.core.runmeta import RunMeta

REPO = Path(__file__).resolve().parents[2]
TORCHVISION_FILE = "mobilenet_v2-b0353104.pth"  # the file torchvision's IMAGENET1K_V1 weights load from its hub

FIXTURES = REPO / "tests" / "fixtures"
INT8_META = FIXTURES / "model-int8.json"  # graft quantize's model.json of the fixture run


class Payload:
    """Unpickling this opens ``marker`` for writing (creating it): proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def copy_run(fixture_run: Path, dest: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    shutil.copytree(fixture_run, dest)
    if change is not None:
        meta = json.loads((dest / ckpt.META_FILE).read_text())
        change(meta)
        (dest / ckpt.META_FILE).write_text(json.dumps(meta))
    return dest


def image(hymenoptera: Path) -> Path:
    return sorted((hymenoptera / "val" / "ants").glob("*.jpg"))[0]


def commands(run: Path, hymenoptera: Path) -> dict[str, list[str]]:
    """Each command that loads a run; ``serve`` on a free port (it must refuse before binding)."""
    return {
        "predict": ["predict", str(run), str(image(hymenoptera))],
        "evaluate": ["evaluate", str(run), "--no-plots"],
        "export": ["export", str(run)],
        "serve": ["serve", str(run), "--port", "0"],
    }


def run_cli(argvs: dict[str, list[str]], env: dict[str, str] | None = None) -> dict[str, subprocess.Popen[str]]:
    """Start every command at once (each spends seconds importing torch), wait for all; ``.out``/``.err`` set."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "graft", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for name, argv in argvs.items()
    }
    for proc in procs.values():
        proc.out, proc.err = proc.communicate(timeout=300)  # type: ignore[attr-defined]
    return procs


def assert_one_error_line(proc: subprocess.Popen[str], *needles: str) -> None:
    err: str = proc.err  # type: ignore[attr-defined]
    assert proc.returncode == 1, (proc.args, proc.returncode, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), (proc.args, err)
    assert all(n in err for n in needles), (proc.args, err)
    assert "Uvicorn running" not in err + proc.out and "http://" not in proc.out  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_planted_pickle_never_runs(fixture_run: Path, hymenoptera: Path, tmp_path: Path) -> None:
    marker, control = tmp_path / "pickle-ran", tmp_path / "control-ran"
    pickle.loads(pickle.dumps(Payload(control)))  # the payload is live: unpickling it writes its marker
    assert control.exists()
    torch_home = tmp_path / "torch-home"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    (torch_home / "hub" / "checkpoints" / TORCHVISION_FILE).write_bytes(pickle.dumps(Payload(marker)))
    run = copy_run(fixture_run, tmp_path / "run", lambda m: m.update(arch_kwargs={"weights": "IMAGENET1K_V1"}))
    before = sorted(p.name for p in run.iterdir())

    procs = run_cli(commands(run, hymenoptera), env=os.environ | {"TORCH_HOME": str(torch_home)})

    for proc in procs.values():
        assert_one_error_line(proc, f"{run / ckpt.META_FILE}: field 'arch_kwargs' has 'weights'")
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == before  # no export or evaluation written


def test_no_path_reaches_a_model_builder_with_a_foreign_argument() -> None:
    """Below the schema too: the builder itself refuses what the registry never records."""
    from graft.core.errors import RunError
    from graft.models.backbones import get_backbone
    from graft.models.model import build_for_inference

    meta = RunMeta.read(FIXTURES / "run-mobilenet_v2-freeze")
    assert meta.head is not None
    for key in ("weights", "pretrained", "checkpoint_path"):
        with pytest.raises(RunError, match=f"model builder argument '{key}' is not one graft records"):
            build_for_inference(get_backbone(meta.arch), 2, meta.head, {key: "IMAGENET1K_V1"})


def other_run(fixture_run: Path, dest: Path) -> tuple[Path, str]:
    """A second real run beside the first (same model.json, other weights); its weights' sha256."""
    run = copy_run(fixture_run, dest)
    _, state = ckpt.load_model(run)
    sha = ckpt.save_model(run, {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, rundir_meta(run))
    return run, sha


def rundir_meta(run: Path) -> dict[str, Any]:
    return RunMeta.read(run).to_dict()


@pytest.mark.slow
@pytest.mark.subprocess
def test_weights_outside_the_run_are_refused(fixture_run: Path, hymenoptera: Path, tmp_path: Path) -> None:
    other, other_sha = other_run(fixture_run, tmp_path / "other")
    cases = {
        "passwd": copy_run(fixture_run, tmp_path / "passwd", lambda m: m.update(weights_file="/etc/passwd")),
        # another run's real weights, with their true sha256: the hash alone would let them through
        "other": copy_run(
            fixture_run,
            tmp_path / "victim",
            lambda m: m.update(weights_file=f"../{other.name}/{ckpt.MODEL_FILE}", weights_sha256=other_sha),
        ),
        "link": copy_run(fixture_run, tmp_path / "link"),
        "unverified": copy_run(fixture_run, tmp_path / "unverified", lambda m: m.pop("weights_sha256")),
    }
    (cases["link"] / ckpt.MODEL_FILE).unlink()
    (cases["link"] / ckpt.MODEL_FILE).symlink_to(other / ckpt.MODEL_FILE)
    procs = run_cli({name: ["predict", str(run), str(image(hymenoptera))] for name, run in cases.items()})
    procs |= run_cli({"serve-link": commands(cases["link"], hymenoptera)["serve"]})

    assert_one_error_line(procs["passwd"], "field 'weights_file' must name a file inside the run directory")
    assert_one_error_line(procs["other"], "field 'weights_file' must name a file inside the run directory")
    for name in ("link", "serve-link"):
        assert_one_error_line(procs[name], "resolves through a symbolic link to", "outside the run directory")
    assert_one_error_line(procs["unverified"], "records no weights_sha256")


BAD_META: dict[str, Callable[[dict[str, Any]], Any]] = {
    "no arch": lambda m: m.pop("arch"),
    "no classes": lambda m: m.pop("classes"),
    "no head": lambda m: m.pop("head"),
    "no preprocess": lambda m: m.pop("preprocess"),
    "input size 100000": lambda m: m["preprocess"].update(input_size=100000),
    "std 0": lambda m: m["preprocess"].update(std=[0.0, 0.0, 0.0]),
    "unknown arch": lambda m: m.update(arch="resnet_9000"),
}
EXPECTED = {
    "no arch": "field 'arch' is missing",
    "no classes": "field 'classes' is missing",
    "no head": "field 'head' is missing",
    "no preprocess": "field 'preprocess' is missing",
    "input size 100000": "input_size must be between 16 and 2048 pixels, got 100000",
    "std 0": "std must be greater than 0",
    "unknown arch": "field 'arch' names no architecture graft builds",
    "a JSON list": "must hold a JSON object, got list",
}


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_damaged_model_json_is_one_error_line(fixture_run: Path, hymenoptera: Path, tmp_path: Path) -> None:
    runs = {
        name: copy_run(fixture_run, tmp_path / f"run{i}", change) for i, (name, change) in enumerate(BAD_META.items())
    }
    runs["a JSON list"] = copy_run(fixture_run, tmp_path / "list")
    (runs["a JSON list"] / ckpt.META_FILE).write_text(json.dumps([rundir_meta(fixture_run)]))
    procs = run_cli({name: ["predict", str(run), str(image(hymenoptera))] for name, run in runs.items()})
    procs |= run_cli({"serve 100000": commands(runs["input size 100000"], hymenoptera)["serve"]})
    for name, proc in procs.items():
        assert_one_error_line(proc, EXPECTED[name.replace("serve ", "input size ")], str(tmp_path))


def test_an_ensemble_member_or_int8_program_outside_the_run_is_refused(tmp_path: Path) -> None:
    from graft.core.errors import RunError
    from graft.inference.ensemble import ensemble_meta
    from graft.inference.loading import load

    outside = copy_run(FIXTURES / "run-mobilenet_v2-freeze", tmp_path / "elsewhere")
    run = tmp_path / "ensemble"
    (run / "members").mkdir(parents=True)
    (run / "members" / "a").symlink_to(outside, target_is_directory=True)
    (run / ckpt.META_FILE).write_text(json.dumps(ensemble_meta([RunMeta.read(outside)], ["members/a"])))
    with pytest.raises(RunError, match="the member run 'members/a' resolves through a symbolic link"):
        load(run, device="cpu")

    int8 = tmp_path / "int8"
    int8.mkdir()
    shutil.copyfile(INT8_META, int8 / ckpt.META_FILE)
    (outside / "model.pt2").write_bytes(b"not read")
    (int8 / "model.pt2").symlink_to(outside / "model.pt2")
    with pytest.raises(RunError, match=r"the program file 'model\.pt2' resolves through a symbolic link"):
        load(int8, device="cpu")


def test_run_file_resolves_inside_the_run_only(tmp_path: Path) -> None:
    from graft.core.errors import RunError

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (run / "sub" / "w.safetensors").write_bytes(b"")
    (run / "inner").symlink_to(run / "sub" / "w.safetensors")  # a link that stays inside is fine
    assert ckpt.run_file(run, "sub/w.safetensors") == run / "sub" / "w.safetensors"
    assert ckpt.run_file(run, "inner") == run / "inner"
    (run / "out").symlink_to(elsewhere)
    (run / "loop").symlink_to(run / "loop")
    refused = {
        "/etc/passwd": "resolves to /etc/passwd, outside",
        "../elsewhere": "resolves to",
        "out/x": "resolves through a symbolic link to",
        ".": "outside the run directory",
        "loop": "cannot be resolved",
    }
    for name, problem in refused.items():
        with pytest.raises(RunError) as e:
            ckpt.run_file(run, name, what="weights file")
        assert str(e.value).startswith(f"{run / ckpt.META_FILE}: the weights file {name!r}") and problem in str(e.value)
