"""Load test of ``graft serve``: concurrent clients in this process against the server in another, beside the
throughput of ``graft predict`` in process.

    python -m benchmarks.bench_serve [--run RUN] [--clients 8] [--seconds 30] [--data DIR] [--record]

Without ``--run``, a frozen mobilenet_v2 run is trained first (5 epochs, into a temporary folder). The server is
``graft serve RUN --port 0`` with its default limits, in its own process. Each client is a thread of this process
with its own keep-alive connection, posting the val images in turn as raw bodies, as fast as answers come, for
``--seconds`` after one warm-up request each. An error is an exception, a non-200 answer, or a label that differs
from ``graft predict``'s for that image. Then, with the server stopped, ``graft predict``'s own throughput is
measured in process (model loaded, ``predict_to_csv`` over the val folder, best of 3). The clients and the server
share the machine's cores, as they would on a single host.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_server(
    run: Path, log: Path, *, extra: list[str] | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``graft serve RUN --port 0 [extra...]`` in its own process (``env`` added to this one's); its base URL."""
    env = dict(os.environ, GRAFT_OFFLINE="1", GRAFT_NO_PROGRESS="1", **(env or {}))
    command = [sys.executable, "-m", "graft", "serve", str(run), "--port", "0", *(extra or [])]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise RuntimeError(f"graft serve exited:\n{text}")
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", text)
        if m and "Application startup complete" in text:
            return proc, m.group(1)
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"graft serve did not start:\n{log.read_text(errors='replace')}")


def load_test(url: str, images: list[tuple[str, bytes]], clients: int, seconds: float) -> dict[str, object]:
    import httpx

    latencies: list[float] = []
    labels: dict[str, set[str]] = {}
    failures: list[str] = []
    lock = threading.Lock()
    window: list[float] = []  # start, stop: set by the barrier's action, before any client is released
    start_line = threading.Barrier(
        clients + 1, action=lambda: window.extend([now := time.perf_counter(), now + seconds])
    )

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            try:
                c.post("/predict", content=images[i % len(images)][1])  # warm-up, not counted
            finally:
                start_line.wait()
            n = i
            while time.perf_counter() < window[1]:
                name, data = images[n % len(images)]
                n += clients
                t0 = time.perf_counter()
                try:
                    r = c.post("/predict", content=data)
                    dt = time.perf_counter() - t0
                    ok = r.status_code == 200
                    label = r.json()["label"] if ok else None
                    detail = None if ok else f"{r.status_code} {r.text[:200]}"
                except Exception as e:  # counted as an error, the client goes on
                    dt, label, detail = time.perf_counter() - t0, None, f"{type(e).__name__}: {e}"
                with lock:
                    if detail is None:
                        latencies.append(dt)
                        labels.setdefault(name, set()).add(label)
                    else:
                        failures.append(detail)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - window[0]
    return {"latencies": latencies, "labels": labels, "failures": failures, "elapsed": elapsed}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory (default: train a frozen mobilenet_v2 run first)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("GRAFT_OFFLINE", "1")

    import httpx

    import graft
    from graft.inference.csvout import predict_to_csv
    from graft.inference.paths import expand_paths

    with tempfile.TemporaryDirectory(prefix="graft-bench-serve-") as tmp:
        run = args.run
        if run is None:
            print("training a frozen mobilenet_v2 run (5 epochs)...", flush=True)
            run = graft.train(
                args.data, arch="mobilenet_v2", mode="freeze", epochs=5, out=Path(tmp), name="run"
            ).run_dir
        val = args.data / "val"
        paths = expand_paths([val])
        images = [(str(p), p.read_bytes()) for p in paths]

        proc, url = start_server(run, Path(tmp) / "server.log")
        try:
            print(f"{args.clients} clients for {args.seconds:g} s against {url} ...", flush=True)
            result = load_test(url, images, args.clients, args.seconds)
            health = httpx.get(f"{url}/health").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

        # graft predict in process (server stopped): its throughput, and the labels the server must agree with
        clf = graft.load(run)
        rates = []
        for i in range(3):
            summary = predict_to_csv(clf, [val], Path(tmp) / f"preds{i}.csv", top_k=2)
            rates.append(summary.images_per_second)
        with (Path(tmp) / "preds0.csv").open(newline="") as f:
            expected = {row["path"]: row["label"] for row in csv.DictReader(f)}

    latencies, failures = result["latencies"], result["failures"]
    wrong = [name for name, seen in result["labels"].items() if seen != {expected[name]}]
    errors = len(failures) + len(wrong)
    n = len(latencies)
    ms = [x * 1000 for x in latencies]
    per_run = health["requests"] / max(1, health["model_runs"])
    rows = [
        ("clients x duration", f"{args.clients} x {result['elapsed']:.1f} s"),
        ("requests answered 200", f"{n}"),
        ("errors (exceptions, non-200, wrong labels)", f"{errors}"),
        ("latency p50 / p90 / p99 / max", " / ".join(f"{percentile(ms, q):.0f}" for q in (50, 90, 99, 100)) + " ms"),
        ("latency mean", f"{statistics.fmean(ms):.0f} ms"),
        ("served throughput", f"{n / result['elapsed']:.1f} images/s"),
        ("requests per forward pass (batching)", f"{per_run:.2f}"),
        ("in-process `graft predict` (best of 3, val folder)", f"{max(rates):.1f} images/s"),
    ]
    table = "\n".join(["| measurement | value |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in rows])
    print(table)
    for f in failures[:5]:
        print("failure:", f)
    for name in wrong[:5]:
        print("wrong label:", name, result["labels"][name], "expected", expected[name])
    if args.record:
        from benchmarks.results import record

        note = (
            f"\n\n`python -m benchmarks.bench_serve --clients {args.clients} --seconds {args.seconds:g}`: the server "
            "(`graft serve`, default limits, one process) and the client threads (one process, httpx, raw-body "
            "POSTs of the 153 val images in turn) share the machine's cores; mobilenet_v2 frozen run, CPU."
        )
        headline = (
            f"{args.clients} clients x {result['elapsed']:.0f} s: {errors} errors, p50 {percentile(ms, 50):.0f} ms / "
            f"p99 {percentile(ms, 99):.0f} ms, {n / result['elapsed']:.1f} images/s served vs "
            f"{max(rates):.1f} in process"
        )
        record(
            "graft serve under load (mobilenet_v2, hymenoptera val images)",
            table + note,
            {"graft serve under load (bench_serve)": headline},
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
