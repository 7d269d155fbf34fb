"""Trace-append and current-version-read throughput per process: diskcache vs Redis, 1 and 4 processes.

Starts its own redis-server on 127.0.0.1 (a free port, a temporary directory) and stops it after.
Each process appends ``--n`` distinct traces, then reads the current version ``--n`` times; the
figures are operations per second per process (median over processes).

    python benchmarks/bench_stores.py [--n 3000]
"""  # noqa: E501 - the first line is the --help description, kept whole

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _redis_server import REDIS_SERVER, RedisServer

from tracer_wrap.store import open_store


def _worker(spec: str, worker: int, n: int, start, out) -> None:
    store = open_store(spec)
    store.current_version("bench")  # connect before the clock starts
    start.wait()
    t0 = time.perf_counter()
    for i in range(n):
        store.append("bench", f"worker {worker} input {i}", f"label{i % 7}")
    t1 = time.perf_counter()
    for _ in range(n):
        store.current_version("bench")
    t2 = time.perf_counter()
    out.put((n / (t1 - t0), n / (t2 - t1)))


def run(spec: str, procs: int, n: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(spec, w, n, start, out)) for w in range(procs)]
    for p in workers:
        p.start()
    time.sleep(2.0)  # let every process import and connect
    start.set()
    rates = [out.get(timeout=600) for _ in workers]
    for p in workers:
        p.join(60)
    return (statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="operations of each kind per process")
    args = parser.parse_args()
    if REDIS_SERVER is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            print("| store | processes | appends/s per process | version reads/s per process |")
            print("| --- | --- | --- | --- |")
            for procs in (1, 4):
                for name in ("diskcache", "redis"):
                    if name == "redis":
                        spec = server.url
                        open_store(spec)._client.flushdb()
                    else:
                        spec = str(Path(tmp) / f"disk{procs}")
                    append, read = run(spec, procs, args.n)
                    print(f"| {name} | {procs} | {append:,.0f} | {read:,.0f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
