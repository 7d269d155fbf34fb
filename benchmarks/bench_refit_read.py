"""How long a refit takes to read its traces and their vectors from the store, with and without
other Python threads busy in the same process (as in a served process: calls, the embedding
worker, the background writer).

    .venv/bin/python benchmarks/bench_refit_read.py [--n 20000] [--busy 0 2] [--repeats 3]

Fills a diskcache store and a Redis store (its own redis-server on 127.0.0.1) with ``--n`` traces
and a 384-float vector each, then times what :meth:`tracer_wrap.refit.Refitter.run` reads: every
valid trace (``iter_traces(valid_only=True)``) and the vectors of those traces (``get_vectors``).
With ``--busy N``, N threads run pure-Python loops meanwhile: every release of the GIL by the
reader (each SQLite call, each socket read) then waits for a busy thread to hand it back.
Reported: the median over ``--repeats`` reads of traces read per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _redis_server import REDIS_SERVER, RedisServer

from tracer_wrap.store import NewTrace, Store, encode_vectors, open_store

TASK = "bench"
DIM = 384


def fill(store: Store, n: int) -> None:
    rng = np.random.default_rng(0)
    for start in range(0, n, 1000):
        vectors = rng.standard_normal((min(n, start + 1000) - start, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.append_many(TASK, [NewTrace(f"input {start + i} of the benchmark",
                                          f"label{(start + i) % 77}", vector=raw)
                                 for i, raw in enumerate(encode_vectors("bench", vectors))])


def read_seconds(store: Store, busy: int) -> float:
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    threads = [threading.Thread(target=spin, daemon=True) for _ in range(busy)]
    for t in threads:
        t.start()
    try:
        started = time.perf_counter()
        traces = list(store.iter_traces(TASK, valid_only=True))
        store.get_vectors(TASK, [t.seq for t in traces])
        return time.perf_counter() - started
    finally:
        stop.set()
        for t in threads:
            t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="traces in each store")
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2],
                        help="busy Python threads during the read (one row each)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"diskcache": open_store(Path(tmp) / "disk")}
        server = None
        if REDIS_SERVER is not None:
            server = RedisServer(Path(tmp))
            server.start()
            stores["Redis"] = open_store(server.url)
        try:
            print("| store | busy threads | traces read/s (median of "
                  f"{args.repeats}) | seconds for {args.n:,} |")
            print("| --- | --- | --- | --- |")
            for name, store in stores.items():
                fill(store, args.n)
                for busy in args.busy:
                    seconds = statistics.median(read_seconds(store, busy)
                                                for _ in range(args.repeats))
                    print(f"| {name} | {busy} | {args.n / seconds:,.0f} | {seconds:.2f} |",
                          flush=True)
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
