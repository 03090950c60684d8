"""Faults injected into graft's writes and training: a write that fails part-way (disk full), a crash between the
two files of a model, a planted pickle, a diverging loss, an out-of-memory error. Each leaves the previous model
and run files intact and readable, and says what to do."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import graft
import graft.core.rundir
import graft.training.loop
from graft.core import atomic
from graft.core import checkpoint as ckpt
from graft.core.errors import GraftError, ResourceError, RunError, WriteError

GRAFT = Path(graft.__file__).parent
SMALL = {"arch": "mobilenet_v3_small", "pretrained": "none", "seed": 0, "device": "cpu", "batch_size": 4}
SMALL["checkpoint_budget"] = 1.0  # a checkpoint after every epoch, however fast: the tests count on it
SMALL["workers"] = 0  # images decoded in-process: then a resumed run is exact on any machine (see the README)
TINY = {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2}


@pytest.fixture(autouse=True)
def fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("GRAFT_NO_PROGRESS", "1")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "feature-cache"))
    monkeypatch.setattr("graft.insight.report.write_run_report", lambda *a, **k: None)


def files(run_dir: Path) -> dict[str, str]:
    """name -> sha256 of every file in ``run_dir``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def fail_writes(monkeypatch: pytest.MonkeyPatch, name: str, *, after_bytes: int | None, nth: int = 1) -> list[int]:
    """The ``nth`` atomic write of the file called ``name`` fails with ENOSPC: after ``after_bytes`` bytes of its
    temp file are written (a disk filling up), or, with None, at the final rename. Returns a call counter."""
    calls = [0]
    real_fdopen, real_replace = os.fdopen, os.replace

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:after_bytes])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if after_bytes is not None and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            calls[0] += 1
            if calls[0] == nth:
                return FullDisk(f)
        return f

    def replace(src, dst, *args, **kwargs):
        if after_bytes is None and os.path.basename(dst) == name:
            calls[0] += 1
            if calls[0] == nth:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return calls


@pytest.fixture
def run(tmp_image_folder, tmp_path) -> Path:
    """A finished small run (2 epochs of a head on stored features)."""
    return graft.train(tmp_image_folder(TINY), out=tmp_path / "runs", name="run", epochs=2, **SMALL).run_dir


def other_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    _, state = ckpt.load_model(run_dir)
    return {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}


# --- atomic writes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("after_bytes", [0, 4096, None], ids=["nothing-written", "part-written", "at-rename"])
def test_a_model_write_failing_part_way_leaves_the_previous_model(run, monkeypatch, after_bytes) -> None:
    before = files(run)
    meta, _ = ckpt.load_model(run)
    fail_writes(monkeypatch, ckpt.MODEL_FILE, after_bytes=after_bytes)
    with pytest.raises(WriteError) as info:
        ckpt.save_model(run, other_weights(run), meta)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, OSError | GraftError)
    assert "cannot write" in str(info.value) and "No space left" in str(info.value) and "intact" in str(info.value)
    assert files(run) == before  # nothing changed, no temp file left behind
    assert graft.load(run, device="cpu").classes == ["a", "b"]


def test_a_crash_between_weights_and_model_json_is_resolved_on_load(run, monkeypatch) -> None:
    """The weights are written, then model.json fails: the pair on disk mismatches; load uses the copy of
    model.json inside the weights, so the model it returns is the new one, consistently."""
    meta, _ = ckpt.load_model(run)
    new = other_weights(run)
    fail_writes(monkeypatch, ckpt.META_FILE, after_bytes=None)
    with pytest.raises(WriteError):
        ckpt.save_model(run, new, meta)
    monkeypatch.undo()
    recorded = json.loads((run / ckpt.META_FILE).read_text())["weights_sha256"]
    assert recorded != hashlib.sha256((run / ckpt.MODEL_FILE).read_bytes()).hexdigest()  # the mismatch is there
    clf = graft.load(run, device="cpu")
    assert all(torch.equal(v, new[k]) for k, v in clf.model.state_dict().items())
    assert clf.meta.classes == ("a", "b") and clf.meta.weights_sha256 != recorded

    # model.json lost altogether: the copy inside the weights is enough
    (run / ckpt.META_FILE).unlink()
    assert graft.load(run, device="cpu").meta.arch == "mobilenet_v3_small"


def test_a_tampered_weights_file_is_still_refused(run) -> None:
    """The copy of model.json inside the weights does not excuse changed tensor bytes (test_predict covers a
    flipped byte without that copy)."""
    data = bytearray((run / ckpt.MODEL_FILE).read_bytes())
    data[-100] ^= 0xFF
    (run / ckpt.MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(RunError, match="sha256"):
        graft.load(run, device="cpu")


def test_files_keep_the_usual_permissions(run) -> None:
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in run.iterdir()} == {oct(0o666 & ~umask)}


# --- training under faults ----------------------------------------------------------------------------------------


@pytest.mark.numerics
def test_a_full_disk_during_training_keeps_the_best_model_and_resumes(tmp_image_folder, tmp_path, monkeypatch) -> None:
    """results.csv cannot be written at epoch 3 (disk full): the run stops with a clear error, everything written
    at epoch 2 is intact, and --resume finishes the run as if nothing had happened."""
    data, out = tmp_image_folder(TINY), tmp_path / "runs"
    options = SMALL | {"epochs": 4, "lr": 0.05}
    whole = graft.train(data, out=out, name="whole", **options).run_dir

    snapshot: dict[str, str] = {}
    real_write_csv = atomic.write_csv

    def write_csv(path, header, rows):
        if len(rows) == 3:
            snapshot.update(files(path.parent))
        real_write_csv(path, header, rows)

    monkeypatch.setattr(atomic, "write_csv", write_csv)
    fail_writes(monkeypatch, "results.csv", after_bytes=10, nth=3)
    with pytest.raises(WriteError, match=r"results\.csv"):
        graft.train(data, out=out, name="full", **options)
    monkeypatch.undo()
    monkeypatch.setattr("graft.insight.report.write_run_report", lambda *a, **k: None)
    run_dir = out / "full"
    assert files(run_dir) == snapshot  # as after epoch 2: results.csv, model, resume state
    assert len((run_dir / "results.csv").read_text().splitlines()) == 3  # header + 2 epochs
    graft.load(run_dir, device="cpu")

    graft.train(data, out=out, name="full", resume=run_dir, **options)
    # exactly: the whole run and the resumed one are this process on the CPU (same batches, threads, kernels)
    assert (run_dir / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (whole, run_dir)]
    untimed = [{k: v for k, v in m.items() if "seconds" not in k} for m in metrics]
    assert untimed[0] == untimed[1]


def test_nan_loss_stops_with_advice_and_keeps_the_best_model(tmp_image_folder, tmp_path, monkeypatch) -> None:
    real, calls = graft.training.loop.run_epoch, [0]

    def run_epoch(model, loader, criterion, device, *, optimizer=None, desc="", precision="auto"):
        phase = real(model, loader, criterion, device, optimizer=optimizer, desc=desc)
        if optimizer is not None:
            calls[0] += 1
            if calls[0] == 3:  # the third epoch diverges
                return phase._replace(loss=float("nan"))
        return phase

    monkeypatch.setattr(graft.training.loop, "run_epoch", run_epoch)
    run_dir = tmp_path / "runs/nan"
    saved: dict[str, str] = {}
    real_save = graft.core.rundir.save_model

    def save_model(*args, **kwargs):
        real_save(*args, **kwargs)
        saved.update({k: v for k, v in files(run_dir).items() if k.startswith("model.")})

    monkeypatch.setattr(graft.core.rundir, "save_model", save_model)
    with pytest.raises(RunError) as info:
        graft.train(tmp_image_folder(TINY), out=tmp_path / "runs", name="nan", epochs=5, **SMALL)
    message = str(info.value)
    assert "nan" in message and "epoch 3" in message and "--lr" in message and "is kept" in message
    assert saved and {k: v for k, v in files(run_dir).items() if k.startswith("model.")} == saved
    assert not (run_dir / "metrics.json").exists()
    graft.load(run_dir, device="cpu")


def test_out_of_memory_suggests_a_batch_size(tmp_image_folder, tmp_path, monkeypatch) -> None:
    def run_epoch(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total)")

    monkeypatch.setattr(graft.training.loop, "run_epoch", run_epoch)
    with pytest.raises(ResourceError) as info:
        graft.train(tmp_image_folder(TINY), out=tmp_path / "runs", name="oom", epochs=2, **(SMALL | {"batch_size": 8}))
    message = str(info.value)
    assert "out of CPU memory with --batch-size 8" in message and "Try --batch-size 4" in message
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in message and "--resume" in message


# --- safe loading -----------------------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("as_torch_save", [False, True], ids=["pickle", "torch.save"])
def test_a_planted_pickle_as_model_weights_is_refused_unrun(run, tmp_path, as_torch_save) -> None:
    """A pickle put in place of model.safetensors, with model.json's sha256 updated to match it (so the hash
    check passes and the loader itself must refuse it)."""
    marker = tmp_path / "pwned"
    path = run / ckpt.MODEL_FILE
    if as_torch_save:
        torch.save({"head.weight": torch.zeros(2), "x": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"head.weight": Payload(marker)}))
    meta = json.loads((run / ckpt.META_FILE).read_text())
    meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(RunError, match="not a valid safetensors file"):
        graft.load(run, device="cpu")
    assert not marker.exists()


# --- every writer is atomic ---------------------------------------------------------------------------------------

#: Writes that do not go through graft.core.atomic, and why they are safe.
NON_ATOMIC_ALLOWED = {
    "core/atomic.py": "the atomic helpers themselves",
    "features/store.py": "append-only feature matrix (a crash leaves a partial row, dropped; rows carry a crc32) and "
    "a lock file; its index is written atomically",
    "inference/csvout.py": "predict --out streams rows to OUT.partial, fsyncs it and renames it to OUT; the merged "
    "predict --out of several processes likewise",
    "deploy/serving.py": "an upload's scratch copy in a private temporary folder",
    "commands/app/routes_upload.py": "an upload's scratch copy, fsynced and checked, then renamed into PROJECT/images",
}


def raw_writes(source: str) -> list[str]:
    """Calls in ``source`` that write a file directly: open(..., "w"/"a"/"x"), write_text/write_bytes, savefig to
    a path (not to the ``buf`` of an in-memory PNG), safetensors save_file, torch.save, numpy save/tofile."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        modes = node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
        constants = [c.value for m in modes for c in ast.walk(m) if isinstance(c, ast.Constant)]  # also `a if b else c`
        writes = any(isinstance(c, str) and set(c) & set("wax+") for c in constants)
        to_buffer = bool(node.args) and isinstance(node.args[0], ast.Name) and node.args[0].id == "buf"
        if (
            (name in {"open", "fdopen"} and writes)
            or name in {"write_text", "write_bytes", "save_file", "tofile"}
            or (name == "save" and ast.unparse(node.func) in {"torch.save", "np.save", "numpy.save"})
            or (name == "savefig" and not to_buffer)
        ):
            found.append(ast.unparse(node))
    return found


def test_every_file_graft_writes_goes_through_the_atomic_helpers() -> None:
    assert raw_writes("open(p, 'w').write(x)\nPath(p).write_text(t)\nfig.savefig(p)\ntorch.save(m, p)") != []
    offenders = {
        rel: found
        for path in sorted(GRAFT.rglob("*.py"))
        if (rel := path.relative_to(GRAFT).as_posix()) not in NON_ATOMIC_ALLOWED
        and (found := raw_writes(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
    for rel in NON_ATOMIC_ALLOWED:  # the allow-list is not stale
        assert raw_writes((GRAFT / rel).read_text(encoding="utf-8")) != [], rel
