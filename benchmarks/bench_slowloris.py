"""Slow clients against ``graft serve``: connections that send half a request header and hold, while a client with
the key asks for predictions.

    python -m benchmarks.bench_slowloris [--run RUN] [--connections 300] [--header-timeout 10] [--record]

Without ``--run``, a frozen mobilenet_v2 run is trained first (2 epochs, into a temporary folder). The server is
``graft serve RUN --port 0`` with ``$GRAFT_API_KEY`` set, in its own process on 127.0.0.1, measured twice: with its
default per-client connection cap (64), and with the cap above the number of connections (so that every one of them
is held until the header time limit closes it). Each time, after one warm-up request, ``--connections`` sockets
from this process send ``POST /predict HTTP/1.1``, a Host header and half of another one, and hold; then the keyed
client posts a bee (a new connection each time) three times while they are held, and the time each held connection
was closed by the server is recorded (from its opening).
"""

from __future__ import annotations

import argparse
import os
import secrets
import selectors
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_serve import ROOT, start_server

HALF_HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def hold(url: str, connections: int, key: str, image: bytes, timeout: float) -> dict[str, float]:
    """Open ``connections`` half-header connections, time keyed POSTs while they are held, and when each closed."""
    import httpx

    host, port = url.removeprefix("http://").rsplit(":", 1)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{url}/predict", content=image, headers=headers, timeout=60).status_code == 200  # warm-up
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    for _ in range(connections):
        s = socket.create_connection((host, int(port)))
        opened[s] = time.perf_counter()
        s.sendall(HALF_HEADER)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed: dict[socket.socket, float] = {}
    posts: list[float] = []
    statuses: list[int] = []

    def watch(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while len(closed) < len(opened) and (left := end - time.perf_counter()) > 0:
            for sk, _ in sel.select(timeout=min(left, 0.05)):
                s = sk.fileobj
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closed[s] = time.perf_counter() - opened[s]
                    sel.unregister(s)

    watch(0.5)
    for _ in range(3):  # while the remaining ones are held
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/predict", content=image, headers=headers, timeout=30)
        posts.append(time.perf_counter() - t0)
        statuses.append(r.status_code)
        watch(0.5)
    held_during_posts = len(opened) - len(closed)
    watch(timeout + 5)
    for s in opened:
        s.close()
    times = sorted(closed.values())
    return {
        "statuses": statuses,
        "post_max_s": max(posts),
        "post_mean_s": sum(posts) / len(posts),
        "held_during_posts": held_during_posts,
        "closed": len(closed),
        "closed_within_1s": sum(t <= 1 for t in times),
        "closed_at_limit": sum(timeout - 0.5 <= t <= timeout + 1 for t in times),
        "first_limit_close_s": min((t for t in times if t >= timeout - 0.5), default=float("nan")),
        "last_closed_s": times[-1] if times else float("nan"),
    }


def measure(run: Path, tmp: Path, args: argparse.Namespace, image: bytes, cap: int | None) -> dict[str, float]:
    key = secrets.token_urlsafe(32)
    extra = ["--header-timeout", f"{args.header_timeout:g}"]
    if cap is not None:
        extra += ["--max-client-connections", str(cap)]
    proc, url = start_server(run, tmp / f"server-{cap}.log", extra=extra, env={"GRAFT_API_KEY": key})
    try:
        return hold(url, args.connections, key, image, args.header_timeout)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory (default: train a frozen mobilenet_v2 run first)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hymenoptera_data")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("GRAFT_OFFLINE", "1")
    import graft

    image = next(iter(sorted((args.data / "val" / "bees").glob("*.jpg")))).read_bytes()
    with tempfile.TemporaryDirectory(prefix="graft-bench-slowloris-") as tmp:
        run = args.run
        if run is None:
            print("training a frozen mobilenet_v2 run (2 epochs)...", flush=True)
            run = graft.train(args.data, arch="mobilenet_v2", mode="freeze", epochs=2, out=Path(tmp), name="run")
            run = run.run_dir
        results = {
            "default cap (64 per client)": measure(run, Path(tmp), args, image, None),
            f"cap {args.connections + 10} (all held)": measure(run, Path(tmp), args, image, args.connections + 10),
        }
    rows = [
        ("keyed POST /predict x3: statuses", lambda r: " ".join(map(str, r["statuses"]))),
        ("keyed POST /predict: slowest / mean", lambda r: f"{r['post_max_s']:.2f} / {r['post_mean_s']:.2f} s"),
        ("half-header connections still held during the POSTs", lambda r: f"{r['held_during_posts']}"),
        ("closed by the server (of those opened)", lambda r: f"{r['closed']} / {args.connections}"),
        ("closed within 1 s of opening (beyond the per-client cap)", lambda r: f"{r['closed_within_1s']}"),
        ("closed at the header time limit (+-1 s)", lambda r: f"{r['closed_at_limit']}"),
        ("first / last of those closed at the limit", fmt_close),
    ]
    names = list(results)
    table = "\n".join(
        [f"| measurement | {' | '.join(names)} |", "| --- |" + " ---: |" * len(names)]
        + [f"| {label} | {' | '.join(f(results[n]) for n in names)} |" for label, f in rows]
    )
    print(table)
    ok = all(
        r["statuses"] == [200] * 3 and r["post_max_s"] < 2 and r["closed"] == args.connections for r in results.values()
    )
    if args.record:
        from benchmarks.results import record

        note = (
            f"\n\n`python -m benchmarks.bench_slowloris --connections {args.connections} --header-timeout "
            f"{args.header_timeout:g}`: the server and this process on 127.0.0.1, one machine; the times of closing "
            "are from each connection's opening; mobilenet_v2 frozen run, CPU."
        )
        worst = max(r["post_max_s"] for r in results.values())
        last = max(r["last_closed_s"] for r in results.values())
        headline = (
            f"{args.connections} half-header connections held: keyed POST 200 in <= {worst:.2f} s, all closed "
            f"by {last:.1f} s (--header-timeout {args.header_timeout:g})"
        )
        record(
            "graft serve against slow clients (half-header connections)",
            table + note,
            {"graft serve against slow clients (bench_slowloris)": headline},
        )
    return 0 if ok else 1


def fmt_close(r: dict[str, float]) -> str:
    return f"{r['first_limit_close_s']:.1f} / {r['last_closed_s']:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
