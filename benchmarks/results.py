"""Append measured tables to benchmarks/RESULTS.md with the date, machine and commit they came from."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


#: The CPU features that decide graft's kernels (int8 backend, bf16 training), listed with every measurement.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> str:
    from graft.core.cpu import cpu_flags, cpu_model

    cpu = cpu_model()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = cpu_flags()
    simd = " ".join(f for f in SIMD_FLAGS if f in flags) or "no AVX2"
    return f"{cpu} ({simd}), {len(os.sched_getaffinity(0))} cores, {mem_gb:.0f} GiB RAM"


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


LATEST_START = "<!-- latest figures: rewritten by benchmarks/results.py -->"
LATEST_END = "<!-- end of latest figures -->"
HISTORY = "## History (newest last)"
PREAMBLE = (
    "# Benchmark results\n\n"
    "The latest figure of each benchmark first; every measurement, with its full table, in the history below.\n\n"
)


def _split(text: str) -> tuple[dict[str, str], str]:
    """(the latest rows by benchmark name, the history) of RESULTS.md's text."""
    rows: dict[str, str] = {}
    if LATEST_START in text and LATEST_END in text:
        block = text[text.index(LATEST_START) : text.index(LATEST_END)]
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 5 and cells[0] not in ("benchmark", "---"):
                rows[cells[0]] = line
    history = text.split(HISTORY, 1)[1] if HISTORY in text else ""
    return rows, history.strip("\n")


def _render(rows: dict[str, str], history: str) -> str:
    table = [
        "| benchmark | latest figure | when | machine | commit |",
        "| --- | --- | --- | --- | --- |",
        *rows.values(),
    ]
    return f"{PREAMBLE}{LATEST_START}\n" + "\n".join(table) + f"\n{LATEST_END}\n\n{HISTORY}\n\n{history}\n"


def record(title: str, body: str, headlines: dict[str, str] | None = None) -> None:
    """Append a section ``title`` holding ``body`` (markdown) to the history, under a line saying when, where and at
    which commit it was measured; ``headlines`` (benchmark name -> its figure, one line of markdown without ``|``)
    become the latest figures at the top of the file."""
    import torch

    text = RESULTS.read_text() if RESULTS.exists() else ""
    rows, history = _split(text)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu, version = machine(), f"torch {torch.__version__}"
    history = f"{history}\n\n### {title}\n\n{when} · {cpu} · {version} · commit {commit()}\n\n{body.rstrip()}".strip()
    for name, figure in (headlines or {}).items():
        rows[name] = f"| {name} | {figure} | {when} | {cpu.split(',')[0]} | {commit()} |"
    RESULTS.write_text(_render(rows, history))
