"""The fault matrix: what each fault does to a caller, measured. One row per fault.

    .venv/bin/python benchmarks/bench_faults.py [--calls 300]

Each scenario makes ``--calls`` calls through :class:`tracer_wrap.TracedTask` with an LLM that
answers at once (so what is timed is tracer_wrap's own path) while the fault holds, and reports the
p50 and the maximum latency of a call minus the p50 of the same calls on a healthy store, the
caller's outcome (every call returned the LLM's answer?), and the traces lost once the fault
clears: LLM answers minus traces stored minus counted drops and poison rows. Process scenarios
(exit, fork, spawn) report how long the exit or the child's first call took instead. The tiny
hashing embedder is used, except where the embedder is the fault.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from _redis_server import REDIS_SERVER, RedisServer  # noqa: E402
from _synthetic import LABELS, make_traces  # noqa: E402

import tracer_wrap  # noqa: E402
from tracer_wrap import Embedder, TracedTask, names  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402

NAMES = sorted(LABELS)
OPTIONS = {"labels": NAMES, "min_traces": 50, "refit_every": None, "audit_rate": 0.0,
           "breaker": False, "refresh_seconds": 0.05}
EMBEDDER = hashing_embedder()
ROWS: list[tuple[str, str, str, str, str]] = []


def timed(task: TracedTask, texts: list[str], answer: Callable[[str], str]) -> tuple[list[float],
                                                                                      bool]:
    """Seconds per call, and whether every call that reached the LLM returned its answer."""
    seconds, ok = [], True
    for text in texts:
        asked: list[str] = []
        start = time.perf_counter()
        result = task.call(text, lambda t=text, a=asked: a.append(t) or answer(t))
        seconds.append(time.perf_counter() - start)
        ok = ok and (result == answer(text) if asked else result in NAMES)
    return seconds, ok


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def row(fault: str, ok: bool, seconds: list[float], base: float, lost: str,
        outcome: str = "") -> None:
    added = (f"p50 {ms(statistics.median(seconds) - base)}, max {ms(max(seconds) - base)}"
             if seconds else "")
    outcome = outcome or ("LLM answer, every call" if ok else "WRONG ANSWERS")
    ROWS.append((fault, outcome, added, lost, ""))
    print(f"| {fault} | {outcome} | {added} | {lost} |", flush=True)


def stored(task: TracedTask) -> int:
    return sum(t.count for t in task.store.traces(task.task))


def lost(task: TracedTask, before: tuple[int, int] = (0, 0)) -> str:
    """Traces lost since ``before`` (LLM answers, traces stored then)."""
    task.flush()
    n = (task.stats.llm - before[0] - (stored(task) - before[1]) - task.stats.dropped
         - len(task.poisoned))
    extra = []
    if task.stats.dropped:
        extra.append(f"{task.stats.dropped} dropped, counted")
    if task.poisoned:
        extra.append(f"{len(task.poisoned)} poisoned, counted")
    return f"{n}" + (f" ({'; '.join(extra)})" if extra else "")


def texts(tag: str, n: int) -> list[str]:
    return [f"refund please {tag} #{i}" for i in range(n)]


def refund(_: str) -> str:
    return "refund"


def baseline(tmp: Path, n: int) -> float:
    task = TracedTask("t", store=tmp / "base", embedder=EMBEDDER, **OPTIONS)
    timed(task, texts("warm", 50), refund)
    seconds, _ = timed(task, texts("base", n), refund)
    task.flush()
    return statistics.median(seconds)


def redis_faults(tmp: Path, n: int, base: float) -> None:
    for fault in ("killed", "hung"):
        (tmp / fault).mkdir()
        server = RedisServer(tmp / fault, fsync_always=True)
        server.start()
        try:
            task = TracedTask("t", store=server.url, embedder=EMBEDDER, **OPTIONS)
            timed(task, texts("warm", 50), refund)
            task.flush()
            server.kill() if fault == "killed" else server.pause()
            seconds, ok = timed(task, texts(fault, n), refund)
            server.start() if fault == "killed" else server.resume()
            row(f"Redis {fault} ({'SIGKILL, restarted' if fault == 'killed' else 'SIGSTOP'})",
                ok, seconds, base, lost(task))
        finally:
            server.stop()


def poison(tmp: Path, n: int, base: float) -> None:
    task = TracedTask("t", store=tmp / "poison", embedder=EMBEDDER, **OPTIONS)
    batch = texts("poison", n)
    batch[n // 2] = "refund \ud800 lone surrogate"
    seconds, ok = timed(task, batch, refund)
    row("poison row (lone surrogate)", ok, seconds, base, lost(task))


PROCESS = """
import multiprocessing, os, sys, time
from tracer_wrap import TracedTask
from tracer_wrap.model.hashing import hashing_embedder
SPEC, N, HOW = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def calls(who):
    task = TracedTask("t", store=SPEC, embedder=hashing_embedder(), refit_every=None)
    for i in range(N):
        task.call(f"{who} refund #{i}", lambda: "refund")
    print("done", time.time(), flush=True)
if __name__ == "__main__":
    if HOW == "exit":
        calls("exit")
    else:
        child = multiprocessing.get_context(HOW).Process(target=calls, args=(HOW,))
        child.start()
        child.join()
"""


def process_exits(tmp: Path, n: int) -> None:
    script = tmp / "app.py"
    script.write_text(PROCESS)
    for how in ("exit", "fork", "spawn"):
        spec = str(tmp / f"exit-{how}")
        proc = subprocess.run([sys.executable, str(script), spec, str(n), how],
                              capture_output=True, text=True, env={
                                  **os.environ, "PYTHONPATH": str(ROOT)})
        ended = time.time()
        done = float(proc.stdout.split()[-1])
        found = TracedTask("t", store=spec, embedder=EMBEDDER).store.count("t")
        what = "exit without flush" if how == "exit" else f"multiprocessing {how} child exit"
        outcome = f"exit code {proc.returncode}"
        ROWS.append((what, outcome, "", str(n - found), ""))
        print(f"| {what} | {outcome} | last call to the end of the process (interpreter"
              f" teardown included): {ms(ended - done)} | {n - found} |", flush=True)


HOLD = """
import sqlite3, sys
dbs = [sqlite3.connect(p, isolation_level=None) for p in sys.argv[1:]]
for db in dbs:
    db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
"""


def sqlite_lock(tmp: Path, n: int, base: float) -> None:
    task = TracedTask("t", store=tmp / "lock", embedder=EMBEDDER, **OPTIONS)
    timed(task, texts("warm", 50), refund)
    task.flush()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp / "lock/traces/cache.db"),
                               str(tmp / "lock/meta/cache.db")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    holder.stdout.readline()
    seconds, ok = timed(task, texts("lock", n), refund)
    holder.stdin.write("\n")
    holder.stdin.close()
    holder.wait()
    row("SQLite lock held by another process", ok, seconds, base, lost(task))


def served(tmp: Path, name: str) -> tuple[TracedTask, dict[str, str]]:
    task = TracedTask("t", store=tmp / name, embedder=EMBEDDER, **OPTIONS)
    rows = dict(make_traces(800))
    for text, label in rows.items():
        task.call(text, lambda label=label: label)
    task.refit()
    return task, rows


def hung_embedder(tmp: Path, base_served: float, rows: dict[str, str]) -> None:
    """Two rows: an embedder whose first model call (its load) never returns, and one that
    hangs after two calls that loaded and timed it."""
    for loaded in (False, True):
        free, hang = threading.Event(), threading.Event()

        def hanging(batch: list[str], hang: threading.Event = hang,
                    free: threading.Event = free) -> np.ndarray:
            if hang.is_set():
                free.wait()
            return EMBEDDER.embed(batch)

        task = TracedTask("t", store=tmp / "served", embedder=Embedder.from_callable(
            hanging, name=EMBEDDER.name), **OPTIONS)
        while task.version is None:
            time.sleep(0.01)
        if loaded:
            task.embedding.embed_one("loads the model", 60.0)
            task.embedding.embed_one("is timed", 60.0)
        hang.set()
        before = (task.stats.llm, stored(task))
        batch = [f"{t} (new, {loaded})" for t in list(rows)[:10]]
        seconds, ok = timed(task, batch, lambda t: rows.get(t, "refund"))
        free.set()
        when = "after loading" if loaded else "in its first call (the load)"
        row(f"hung embedder, {when} (`embed_timeout` {task.options.embed_timeout:g} s)", ok,
            seconds, base_served, lost(task, before))


def fork_during_refit(tmp: Path, n: int, base: float) -> None:
    task = TracedTask("t", store=tmp / "forked", embedder=EMBEDDER, **OPTIONS)
    rows = dict(make_traces(3000))
    for text, label in rows.items():
        task.call(text, lambda label=label: label)
    task.flush()
    future = task.refit_in_background()
    while not task.refitter.runner.running:
        time.sleep(0.001)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        llm = task.stats.llm
        seconds, ok = timed(task, [f"child {t}" for t in list(rows)[:n]], refund)
        tracer_wrap.flush()
        os.write(write, f"{int(ok)} {statistics.median(seconds)} {max(seconds)}"
                        f" {task.stats.llm - llm}\n".encode())
        os._exit(0)
    assert future is not None and future.result() is not None
    _, status = os.waitpid(pid, 0)
    ok, p50, top, llm = os.read(read, 200).decode().split()
    child_traces = sum(1 for t in task.store.traces("t") if t.input.startswith("child "))
    outcome = (f"child exit code {os.waitstatus_to_exitcode(status)}; "
               + ("LLM answer, every call" if ok == "1" else "WRONG ANSWERS"))
    print(f"| fork during a background refit (the child's calls) | {outcome} |"
          f" p50 {ms(float(p50) - base)}, max {ms(float(top) - base)} |"
          f" {int(llm) - child_traces} |", flush=True)


def damage(tmp: Path, n: int, base: float) -> None:
    def shm(store: Path) -> None:
        for part in ("traces", "meta"):
            for suffix in ("-shm", "-wal"):
                path = store / part / ("cache.db" + suffix)
                path.write_bytes(b"\x00" * 40000)
                os.truncate(path, 100)

    def corrupt(store: Path) -> None:
        for part in ("traces", "meta"):
            path = store / part / "cache.db"
            with open(path, "r+b") as f:
                f.seek(100)
                f.write(os.urandom(path.stat().st_size - 100))

    def read_only(store: Path) -> None:
        subprocess.run(["chattr", "-R", "+i", str(store)], check=True)

    for name, hurt in (("-shm/-wal truncated", shm), ("store read-only (chattr +i)", read_only),
                       ("SQLite file corrupted", corrupt)):
        store = tmp / name.split()[0].strip("-/")
        task = TracedTask("t", store=store, embedder=EMBEDDER, **OPTIONS)
        timed(task, texts("warm", 50), refund)
        task.flush()
        hurt(store)
        seconds, ok = timed(task, texts("hurt", n), refund)
        tracer_wrap.flush(2.0)
        if hurt is read_only:
            subprocess.run(["chattr", "-R", "-i", str(store)], check=True)
            gone = lost(task)
        else:
            try:
                gone = lost(task)
            except Exception as exc:
                gone = f"store unreadable ({type(exc).__name__}): its traces"
        row(name, ok, seconds, base, gone)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    n = args.calls
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = baseline(tmp, n)
        fitted, rows = served(tmp, "served")
        seconds, _ = timed(fitted, [f"{t} (base)" for t in list(rows)[:n]],
                           lambda t: rows.get(t, "refund"))
        base_served = statistics.median(seconds)
        print(f"healthy p50: {ms(base)} (no router), {ms(base_served)} (served router);"
              f" {n} calls per fault")
        print("| fault | caller outcome | added latency per call | traces lost |")
        print("| --- | --- | --- | --- |")
        if REDIS_SERVER is not None:
            redis_faults(tmp, n, base)
        poison(tmp, n, base)
        process_exits(tmp, n)
        sqlite_lock(tmp, n, base)
        hung_embedder(tmp, base_served, rows)
        fork_during_refit(tmp, min(n, 100), base)
        damage(tmp, n, base)
        _ = names


if __name__ == "__main__":
    main()
