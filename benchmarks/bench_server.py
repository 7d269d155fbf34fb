"""Load test of the HTTP sidecar from a second process, on loopback only, bounded in count and time.

    .venv/bin/python benchmarks/bench_server.py [--requests 2000] [--seconds 15] [--concurrency 4]

Builds a temporary store with Banking77 training texts as traces (synthetic texts when the data
is absent), fits a router with the hashing embedder (no model download), starts
``tracer-wrap serve`` in a subprocess on 127.0.0.1 and drives it from this process with keep-alive
httpx clients in threads. Prints requests per second and latency percentiles per scenario.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracer_wrap.engine import TracedTask  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402
from tracer_wrap.store import TraceStore  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


def load_rows() -> list[tuple[str, str]]:
    if DATA.is_file():
        with open(DATA, encoding="utf-8") as f:
            return [(r["text"], r["category"]) for r in csv.DictReader(f)]
    sys.path.insert(0, str(ROOT / "tests"))
    from _synthetic import make_traces

    return make_traces(4000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(base: str, path: str, bodies: list[dict], *, requests: int, seconds: float,
          concurrency: int) -> tuple[int, float, list[float], int]:
    """Send up to ``requests`` POSTs (or for ``seconds``); return count, elapsed, latencies,
    errors."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=10) as client:
            mine, bad = [], 0
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                r = client.post(path, json=bodies[i % len(bodies)])
                mine.append(time.perf_counter() - t0)
                bad += r.status_code >= 400
            with lock:
                latencies.extend(mine)
                errors += bad

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), time.perf_counter() - started, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    rows = load_rows()
    tmp = tempfile.mkdtemp(prefix="tw-bench-")
    store = TraceStore(tmp)
    for text, label in rows:
        store.append("b77", text, label)
    emb = hashing_embedder()
    TracedTask("b77", store=store, embedder=emb, min_traces=100, refit_every=None).refit()
    texts = [t for t, _ in rows]
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), 500, replace=False)]
    vectors = emb.embed(sample)

    port = free_port()
    env = {**os.environ, "TRACER_WRAP_EMBEDDER": "hashing"}
    server = subprocess.Popen([sys.executable, "-m", "tracer_wrap.ops.cli", "serve", "--store", tmp,
                               "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        scenarios = [
            ("route text", "/v1/tasks/b77/route", [{"text": t} for t in sample]),
            ("route embedding (512-d)", "/v1/tasks/b77/route", [{"embedding": v.tolist()}
                                                                 for v in vectors[:100]]),
            ("route batch of 32 texts", "/v1/tasks/b77/route/batch",
             [{"texts": sample[i:i + 32]} for i in range(0, 480, 32)]),
            ("log trace", "/v1/tasks/b77/traces",
             [{"input": f"bench {i} {t}", "teacher": "card_arrival"}
              for i, t in enumerate(sample)]),
        ]
        print(f"sidecar on loopback, client in a second process, {args.concurrency} keep-alive "
              f"connections, {len(rows)} traces, hashing embedder, {os.cpu_count()} CPUs")
        print(f"{'scenario':26} {'requests':>8} {'req/s':>8} {'p50 ms':>8}"
              f" {'p99 ms':>8} {'errors':>6}")
        for name, path, bodies in scenarios:
            drive(base, path, bodies[:20], requests=40, seconds=5, concurrency=2)  # warm-up
            n, elapsed, lat, errors = drive(base, path, bodies, requests=args.requests,
                                            seconds=args.seconds, concurrency=args.concurrency)
            q = statistics.quantiles(lat, n=100)
            print(f"{name:26} {n:8d} {n / elapsed:8.0f} {1000 * q[49]:8.2f} {1000 * q[98]:8.2f}"
                  f" {errors:6d}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
