"""Latency of calls while a background refit runs, next to the same calls without one.

    .venv/bin/python benchmarks/bench_refit_latency.py [--traces 1500] [--calls 300]
                                                       [--embedder minilm|hashing]
                                                       [--threads N]

A task serves a router fitted on ``--traces`` traces; ``--calls`` calls with inputs never seen
(each is embedded) are timed one after another with an LLM that answers after ``--llm-latency``
seconds (default 0: at once), first with no refit running, then while a refit runs on the thread
executor (the refit embeds the traces not yet embedded as bulk work through the same embedding
worker, and fits in its own thread). Reported: p50, p99 and max per call, in milliseconds, and the
share answered locally (a call waits for its embedding at most ``embed_budget`` of the LLM's
latency, at least 50 ms: with an LLM that answers at once and a busy CPU, most calls skip it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from _synthetic import LABELS, make_traces  # noqa: E402

from tracer_wrap import Embedder, TracedTask, background  # noqa: E402
from tracer_wrap.model.hashing import hashing_embedder  # noqa: E402


def timed(task: TracedTask, texts: list[str], while_refit: bool, latency: float
          ) -> tuple[list[float], int]:
    def llm() -> str:
        time.sleep(latency)  # the LLM's own time, not tracer_wrap's
        return "refund"

    seconds = []
    local = task.stats.local
    for text in texts:
        if while_refit and not task.refitter.runner.running:
            break
        start = time.perf_counter()
        task.call(text, llm)
        seconds.append(time.perf_counter() - start)
    return seconds, task.stats.local - local


def line(name: str, timing: tuple[list[float], int]) -> str:
    seconds, local = timing
    ms = np.array(seconds) * 1000
    return (f"| {name} | {len(ms)} | {local / len(ms):.0%} | {np.percentile(ms, 50):.1f} |"
            f" {np.percentile(ms, 99):.1f} | {ms.max():.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=1500)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (MiniLM)")
    parser.add_argument("--llm-latency", type=float, default=0.0)
    args = parser.parse_args()
    embedder = (hashing_embedder() if args.embedder == "hashing" else Embedder.default()
                if args.threads is None else Embedder.default(threads=args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        task = TracedTask("t", store=Path(tmp) / "s", embedder=embedder, labels=sorted(LABELS),
                          min_traces=50, refit_every=None, audit_rate=0.0, breaker=False)
        for text, label in make_traces(args.traces):
            task.call(text, lambda label=label: label)
        task.refit()
        without = timed(task, [f"{t} (a)" for t, _ in make_traces(args.calls, seed=1)], False,
                        args.llm_latency)
        future = task.refit_in_background()
        assert future is not None
        during = timed(task, [f"{t} (b)" for t, _ in make_traces(args.calls * 10, seed=2)],
                       True, args.llm_latency)
        future.result()
        task.flush()
        background.unregister(task)  # before the directory goes
        print(f"embedder {embedder.name}, router on {args.traces} traces; each call embeds a new"
              " input")
        print(f"LLM latency {args.llm_latency * 1000:.0f} ms")
        print("| calls | n | answered locally | p50 (ms) | p99 (ms) | max (ms) |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(line("no refit running", without))
        print(line("while a background refit runs (thread executor)", during))


if __name__ == "__main__":
    main()
