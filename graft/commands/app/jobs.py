"""The app's long jobs: training (``graft train`` in a subprocess) and the data check (``graft doctor``).

Both start from the project's labels as ``export_labels`` writes them (``PROJECT/work/labels.csv`` for training,
``PROJECT/work/doctor/labels.csv`` for the check), so a run trained by the app is the run ``graft train labels.csv
--root ROOT`` gives. Training streams each output line as a ``train`` event and ends with ``train_done``
``{run, status, metrics}``; the check ends with ``check_done``. One of each runs at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.commands.app.records import AppError

log = logging.getLogger(__name__)
EventSink = Callable[[str, dict[str, Any]], None]
MODES = ("freeze", "finetune")
MAX_EPOCHS = 1000
#: The copy of the labels a run was trained on, kept in its directory (the export's labels.csv).
RUN_LABELS = "app-labels.csv"
#: Lines of the newest training log kept for a page opened while it runs.
LOG_LINES = 200


#: graft train's line at the end of an epoch (graft.training.callbacks): the Train page's accuracy curve.
EPOCH_LINE = re.compile(
    r"^epoch\s+(?P<epoch>\d+)\s+(?P<stage>\S+)\s+train loss (?P<train_loss>[\d.]+) \w+ (?P<train_acc>[\d.]+)\s+"
    r"val loss (?P<val_loss>[\d.]+) \w+ (?P<val_acc>[\d.]+)"
)


def epoch_of(line: str) -> dict[str, Any] | None:
    """The figures of an end-of-epoch line, or None for any other line."""
    m = EPOCH_LINE.match(line.strip())
    if m is None:
        return None
    d = m.groupdict()
    return {"epoch": int(d.pop("epoch")), "stage": d.pop("stage")} | {k: float(v) for k, v in d.items()}


class JobBusy(AppError):
    """A job of that kind is already running (the API answers 409)."""


def _no_events(kind: str, data: dict[str, Any]) -> None:
    """The default event sink: nobody listens."""


def train_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /api/train`` body checked and completed: ``{arch, mode, epochs, auto, budget}``."""
    from graft.models.backbones import get_backbone

    arch = str(settings.get("arch") or "mobilenet_v2")
    get_backbone(arch)  # an unknown name is an ArchitectureError with the close matches
    mode = str(settings.get("mode") or "freeze")
    if mode not in MODES:
        raise AppError(f"mode {mode!r} is not one of {', '.join(MODES)}: pick freeze (fast) or finetune")
    try:
        epochs = settings.get("epochs")
        epochs = 10 if epochs in (None, "") else int(epochs)
        budget = settings.get("budget")
        budget = None if budget in (None, "", 0) else float(budget)
    except (TypeError, ValueError):
        raise AppError("epochs must be a whole number and budget a number of seconds") from None
    if not 1 <= epochs <= MAX_EPOCHS:
        raise AppError(f"epochs must be between 1 and {MAX_EPOCHS} (got {epochs})")
    if budget is not None and budget <= 0:
        raise AppError("the time budget must be a positive number of seconds (or empty for none)")
    return {"arch": arch, "mode": mode, "epochs": epochs, "auto": bool(settings.get("auto")), "budget": budget}


def train_command(exported: Any, out: Path, name: str, s: dict[str, Any], device: str) -> list[str]:
    """The ``graft train`` command line of a job: the one ``graft app export-labels`` prints, with the job's
    settings (``--auto`` picks the backbone and trains it frozen)."""
    cmd = [sys.executable, "-m", "graft", *exported.train_args(), "--out", str(out), "--name", name]
    cmd += ["--epochs", str(s["epochs"]), "--device", device]
    if s["auto"]:
        cmd += ["--auto"] + (["--time-budget", f"{s['budget']:g}"] if s["budget"] else [])
    else:
        cmd += ["--arch", s["arch"], "--mode", s["mode"]]
    return cmd


class _Job:
    """What a background job of a project holds: the store, the project folder, where its events go, the device
    and the feature cache (default graft's, ``GRAFT_CACHE_DIR``: the learner's, so that a frozen run and the check
    read the features the learner stored)."""

    def __init__(
        self,
        store: Any,
        project: Path,
        on_event: EventSink = _no_events,
        *,
        device: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.project = Path(project)
        self.on_event = on_event
        self.device = device
        self.cache_dir = cache_dir
        self._lock = threading.Lock()


class Trainer(_Job):
    """One ``graft train`` subprocess at a time on the project's labels; its run recorded in the store."""

    def __init__(self, store: Any, project: Path, on_event: EventSink = _no_events, **job: Any) -> None:
        super().__init__(store, project, on_event, **job)
        self._proc: subprocess.Popen[str] | None = None
        self._run: str | None = None
        self._status: str | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        for row in store.runs():  # a job of an earlier app that ended with it: nothing will ever finish it
            if row.status == "running":
                store.update_run(row.name, status="interrupted")

    @property
    def runs_dir(self) -> Path:
        return self.project / "runs"

    def status(self) -> dict[str, Any] | None:
        """``{run, status}`` of the newest job (running, done, failed, cancelled), None before any."""
        with self._lock:
            return None if self._run is None else {"run": self._run, "status": self._status}

    def running(self) -> bool:
        with self._lock:
            return self._status == "running"

    def start(self, settings: dict[str, Any]) -> str:
        """Write the labels, start ``graft train`` and return the run's name. Raises :class:`JobBusy` while a job
        runs and :class:`AppError` when the labels cannot make a run (fewer than two classes)."""
        from graft.commands.app.labels import export_labels
        from graft.core.rundir import next_run_name

        s = train_settings(settings)
        with self._lock:
            if self._status == "running":
                raise JobBusy(f"run {self._run} is still training: wait for it or cancel it first")
            work = self.project / "work"
            work.mkdir(parents=True, exist_ok=True)
            exported = export_labels(self.store, work / "labels.csv")
            if len(exported.classes) < 2:
                raise AppError("training needs labelled images of at least two classes: label some first")
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            name = next_run_name(self.runs_dir, "auto" if s["auto"] else f"{s['arch']}-{s['mode']}")
            cmd = train_command(exported, self.runs_dir, name, s, self.device)
            env = os.environ | {"PYTHONUNBUFFERED": "1", "GRAFT_NO_PROGRESS": "1"}
            if self.cache_dir is not None:
                env["GRAFT_CACHE_DIR"] = str(self.cache_dir)
            self.store.add_run(name, self.runs_dir / name, status="running", settings=s | {"command": cmd[1:]})
            self._proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                env=env,
                cwd=self.project,
            )
            self._run, self._status, self._cancelled = name, "running", False
            self.lines.clear()
            self._thread = threading.Thread(
                target=self._follow, args=(self._proc, name, exported.path), name="graft-app-train", daemon=True
            )
            self._thread.start()
        return name

    def cancel(self) -> bool:
        """Stop the running job (terminate, then kill after 10 s); False when none runs."""
        with self._lock:
            proc = self._proc if self._status == "running" else None
            self._cancelled = proc is not None
        if proc is None:
            return False
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return True

    def close(self) -> None:
        """At the app's end: stop a running job (its run is recorded as cancelled)."""
        if self.cancel() and self._thread is not None:
            self._thread.join(30)

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait for the job's end; its final status."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()["status"] if self.status() else None  # type: ignore[index]

    def _follow(self, proc: subprocess.Popen[str], name: str, labels: Path) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # universal newlines: a progress bar's \r also ends a line
            line = raw.rstrip("\n")
            if line.strip():
                self.lines.append(line)
                epoch = epoch_of(line)
                self.on_event("train", {"run": name, "line": line} | ({"epoch": epoch} if epoch else {}))
        code = proc.wait()
        run_dir = self.runs_dir / name
        with self._lock:
            status = "cancelled" if self._cancelled else ("done" if code == 0 else "failed")
        metrics: dict[str, Any] = {}
        if status == "done":
            metrics = _read_json(run_dir / "metrics.json")
            shutil.copyfile(labels, run_dir / RUN_LABELS)
        try:
            self.store.update_run(name, status=status, metrics=metrics)
        except Exception:  # the event still tells the page; the table keeps "running" until the next start
            log.exception("cannot record the end of run %s", name)
        with self._lock:
            self._status = status
        self.on_event("train_done", {"run": name, "status": status, "metrics": metrics, "returncode": code})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------------------------------
# the check

SERIOUS = ("leakage", "label_conflict")
WARNINGS = ("label_error", "exact_duplicate", "near_duplicate", "outlier", "unreadable", "imbalance")


class Checker(_Job):
    """``graft doctor`` on the project's labels in a background thread; its findings as the project's image ids."""

    def __init__(
        self, store: Any, project: Path, on_event: EventSink = _no_events, *, arch: str = "mobilenet_v2", **job: Any
    ) -> None:
        super().__init__(store, project, on_event, **job)
        self.arch = arch
        self._status = "none"
        self._error: str | None = None
        self._findings: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self.load_previous()

    def start(self) -> None:
        """Start a check; :class:`JobBusy` while one runs."""
        with self._lock:
            if self._status == "running":
                raise JobBusy("a check is already running: its findings come with the check_done event")
            self._status, self._error = "running", None
            self._thread = threading.Thread(target=self._run, name="graft-app-check", daemon=True)
            self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            findings = self.check()
            with self._lock:
                self._status, self._findings = "done", findings
        except Exception as e:  # shown on the page with the reason
            log.exception("the check failed")
            with self._lock:
                self._status, self._error = "error", f"{type(e).__name__}: {e}"
        self.on_event("check_done", {"status": self._status, "error": self._error})

    def check(self) -> list[dict[str, Any]]:
        """Run ``graft doctor`` on the labels now (a subprocess: the feature cache of the training job, and the
        app's memory kept apart); every finding with the ids of its images."""
        from graft.commands.app.labels import export_labels

        out = self.project / "work" / "doctor"
        out.mkdir(parents=True, exist_ok=True)
        exported = export_labels(self.store, out / "labels.csv")
        if len(exported.classes) < 2:
            raise AppError("the check needs labelled images of at least two classes: label some first")
        cmd = [sys.executable, "-m", "graft", "doctor", *exported.train_args()[1:], "--out", str(out)]
        cmd += ["--arch", self.arch, "--device", self.device, "--no-html"]
        env = os.environ | {"GRAFT_NO_PROGRESS": "1"}
        if self.cache_dir is not None:
            env["GRAFT_CACHE_DIR"] = str(self.cache_dir)
        done = subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", env=env, cwd=self.project, stdin=subprocess.DEVNULL
        )
        saved = _read_json(out / "doctor.json")
        if done.returncode not in (0, 3) or "findings" not in saved:  # 3: serious findings, a successful check
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise AppError(f"graft doctor failed: {last}")
        return _saved_findings(self.store, saved)

    def load_previous(self) -> None:
        """The findings of the project's last check (its doctor.json), as if just run: a restarted app shows them."""
        saved = _read_json(self.project / "work" / "doctor" / "doctor.json")
        try:
            findings = _saved_findings(self.store, saved)
        except (KeyError, TypeError):  # none yet, or not a doctor.json: nothing to show
            return
        with self._lock:
            if self._status == "none":
                self._status, self._findings = "done", findings

    def result(self) -> dict[str, Any]:
        """``{status, error?, findings}``: the newest check's findings with the images' current labels, those whose
        images are all reviewed or excluded left out."""
        with self._lock:
            status, error, findings = self._status, self._error, list(self._findings)
        shown = []
        for f in findings:
            rows = [self._row(i) for i in f["ids"]]
            rows = [r for r in rows if r is not None]
            if (f["files"] and not rows) or (rows and all(r.reviewed or r.excluded for r in rows)):
                continue
            images = [{"id": r.id, "name": Path(r.path).name, "label": r.label} for r in rows]
            shown.append({k: v for k, v in f.items() if k not in ("ids", "files")} | {"images": images})
        return {"status": status, "findings": shown} | ({"error": error} if error else {})

    def _row(self, image_id: int | None) -> Any:
        if image_id is None:
            return None
        try:
            return self.store.image(image_id)
        except AppError:
            return None


def _saved_findings(store: Any, saved: dict[str, Any]) -> list[dict[str, Any]]:
    """The findings of a doctor.json (files relative to its ``data`` root) with the project's image ids."""
    root = Path(saved["data"])
    _, rows = store.images(excluded=True, limit=1 << 30)
    by_path = {Path(r.path): r.id for r in [*store.labelled(), *rows]}
    return [
        _finding(f["kind"], [by_path.get((root / rel).resolve()) for rel in f["files"]], f, f.get("evidence", {}))
        for f in saved["findings"]
    ]


def _finding(kind: str, ids: list[int | None], saved: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    from graft.insight.doctor.findings import KINDS

    message = KINDS.get(kind, kind)
    if kind == "label_error":
        message = f"labelled {ev.get('given')}, looks like {ev.get('suggested')}: {message}"
    elif kind == "label_conflict":
        message = f"{message}: {', '.join(map(str, ev.get('classes', [])))}"
    severity = "serious" if kind in SERIOUS else "warning" if kind in WARNINGS else "info"
    return {
        "kind": kind,
        "severity": severity,
        "message": message,
        "suggested": ev.get("suggested") if kind == "label_error" else None,
        "score": round(float(saved["score"]), 4),
        "files": len(saved["files"]),
        "ids": [i for i in ids if i is not None],
    }
