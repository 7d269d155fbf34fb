"""Refit cost: what a refit embeds, and a refit at a million traces.

Two parts, each in fresh processes (so no embedding cache of an earlier step helps):

* ``second-fit``: the Banking77 train split (10,003 traces) in a store, ``tracer-wrap fit`` (the
  real CLI, all-MiniLM-L6-v2), then 500 new traces (from the test split) and ``tracer-wrap fit``
  again. The second fit embeds only the 500 new traces: the vectors of the others were stored by
  the first.
* ``million``: N synthetic traces (77 labels, Banking77-like texts made of label words and
  fillers) in a store, then one refit with the ``hashing`` embedder, timed with its peak RSS; a
  refit reads a uniform sample of at most ``MAX_REFIT_TRACES`` valid traces
  (:mod:`tracer_wrap.refit`), so time and memory stop growing with the history beyond it.

Run: ``python benchmarks/bench_refit.py [second-fit|million] [N]`` (default both, N=1,000,000).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LABELS = 77


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cli(*args: str) -> float:
    """Seconds one ``tracer-wrap`` command takes in a fresh process."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tracer_wrap.ops.cli", *args],
                         capture_output=True, text=True, timeout=3600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise RuntimeError(out.stdout + out.stderr)
    return time.perf_counter() - started


def second_fit(root: Path) -> dict:
    from tracer_wrap.lab.datasets import load_banking77
    from tracer_wrap.store import NewTrace, TraceStore

    store_dir = str(root / "banking77")
    store = TraceStore(store_dir)
    store.append_many("banking77", [NewTrace(text, label) for text, label in
                                    load_banking77("train")])
    first = cli("fit", "banking77", "--store", store_dir, "--force")
    new = load_banking77("test")[:500]
    store.append_many("banking77", [NewTrace(text, label) for text, label in new])
    second = cli("fit", "banking77", "--store", store_dir, "--force")
    return {"traces": store.count("banking77") - len(new), "new": len(new),
            "first_fit_s": round(first, 1), "second_fit_s": round(second, 1),
            "ratio": round(second / first, 3)}


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = [f"w{k}" for k in range(300)]
    own = [[f"k{label}x{j}" for j in range(6)] for label in range(LABELS)]
    rows = []
    for i in range(n):
        label = rng.randrange(LABELS)
        text = " ".join(rng.choice(own[label]) if rng.random() < 0.3 else rng.choice(words)
                        for _ in range(14))
        rows.append((f"{text} #{i}", f"label_{label}"))
    return rows


def fill(store_dir: str, n: int) -> dict:
    from tracer_wrap.store import NewTrace, TraceStore

    store = TraceStore(store_dir)
    started = time.perf_counter()
    for start in range(0, n, 20_000):
        rows = synthetic_rows(min(20_000, n - start), seed=start)
        store.append_many("synthetic", [NewTrace(t, y) for t, y in rows])
    return {"traces": store.count("synthetic"), "fill_s": round(time.perf_counter() - started)}


def refit(store_dir: str) -> dict:
    """One refit in this process: seconds and peak RSS, then a second after 500 new traces."""
    from tracer_wrap import TracedTask
    from tracer_wrap.refit import MAX_REFIT_TRACES

    task = TracedTask("synthetic", store=store_dir, embedder="hashing", refit_every=None,
                      target=0.9)
    rss_before = peak_mb()
    started = time.perf_counter()
    router = task.refit()
    first = time.perf_counter() - started
    peak = peak_mb()
    from tracer_wrap.store import NewTrace

    task.store.append_many("synthetic", [NewTrace(t, y) for t, y in
                                         synthetic_rows(500, seed=10**9)])
    started = time.perf_counter()
    task.refit()
    second = time.perf_counter() - started
    return {"refit_s": round(first, 1), "second_refit_s": round(second, 1),
            "peak_rss_mb": round(peak), "rss_before_mb": round(rss_before),
            "sampled": MAX_REFIT_TRACES, "n_traces_fitted": router.info.get("n_traces"),
            "coverage_at_0.9": router.certificate_for(0.9).coverage}


def run(part: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", part, *args], capture_output=True,
                         text=True, timeout=7200)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    root = Path(tempfile.mkdtemp(prefix="tw-bench-refit-"))
    try:
        if which in ("both", "second-fit"):
            r = second_fit(root)
            print(f"tracer-wrap fit on {r['traces']:,} Banking77 traces (MiniLM):"
                  f" {r['first_fit_s']} s; again after {r['new']} new traces:"
                  f" {r['second_fit_s']} s (ratio {r['ratio']})", flush=True)
        if which in ("both", "million"):
            store_dir = str(root / "million")
            filled = run("fill", store_dir, str(n))
            r = run("refit", store_dir)
            print(f"refit at {filled['traces']:,} synthetic traces (filled in"
                  f" {filled['fill_s']} s; hashing embedder; sample of {r['sampled']:,}):"
                  f" {r['refit_s']} s, peak RSS {r['peak_rss_mb']} MB"
                  f" (process {r['rss_before_mb']} MB before);"
                  f" after 500 new traces: {r['second_refit_s']} s;"
                  f" coverage at 0.9 {r['coverage_at_0.9']:.3f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        name, rest = sys.argv[2], sys.argv[3:]
        parts = {"fill": lambda d, k: fill(d, int(k)), "refit": refit}
        print(json.dumps(parts[name](*rest)))
    else:
        main()
