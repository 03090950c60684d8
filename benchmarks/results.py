"""Append measured tables to benchmarks/RESULTS.md with the date, machine and commit they came from."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {mem_gb:.0f} GiB RAM"


def commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def header() -> str:
    import torch

    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{date} · {machine()} · torch {torch.__version__} · commit {commit()}"


def record(title: str, body: str) -> None:
    """Append a section ``title`` holding ``body`` (markdown) under a line saying where it was measured."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nNewest sections last. Each says when, where and at which commit.\n")
    with RESULTS.open("a") as f:
        f.write(f"\n## {title}\n\n{header()}\n\n{body.rstrip()}\n")
