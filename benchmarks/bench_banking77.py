"""Banking77 figures for BENCHMARKS.md: coverage at a guarantee, its validity, learning curve, fit
time and memory, and the plots.

    python benchmarks/bench_banking77.py [--resplits 20] [--out benchmarks/results]

Embeds the shipped Banking77 copy once with MiniLM (cached in ``--cache``), then for the gold
labels and for the simulated LLM teacher (15% confusable mistakes, mostly on ambiguous queries):
fits on train and measures on test; refits on random resplits of train+test and counts how often
held-out agreement fell below the target; fits on 1k/2k/4k/8k traces (learning curve). Fit time and
peak memory at 10k and 100k traces are measured in fresh subprocesses. Prints every figure and
writes ``banking77.json`` plus PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tracer_wrap.lab.bench import embed_cached, evaluate
from tracer_wrap.lab.datasets import banking77_ambiguity, load_banking77
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours
from tracer_wrap.model.embedder import Embedder
from tracer_wrap.model.fit import fit_router

TARGETS = (0.85, 0.90, 0.95, 0.97, 0.98, 0.99)
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resplits", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per learning-curve point")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "embeddings")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    train, test = load_banking77("train"), load_banking77("test")
    texts = [t for t, _ in train + test]
    X = embed_cached(Embedder.default(), texts, args.cache)
    llm = SimulatedLLM(load_banking77_neighbours(), error_rate=0.15,
                       ambiguity=banking77_ambiguity())
    gold = np.array([y for _, y in train + test], dtype=object)
    teachers = {"gold": gold,
                "simulated_llm": np.array([llm.label_for(t, y) for t, y in train + test],
                                          dtype=object)}
    n_train = len(train)
    report: dict = {"machine": _machine(), "targets": TARGETS}
    for name, y in teachers.items():
        print(f"\n== teacher: {name} (agrees with gold on {np.mean(y == gold):.1%}) ==")
        started = time.perf_counter()
        router = fit_router(X[:n_train], y[:n_train], targets=TARGETS)
        fit_seconds = time.perf_counter() - started
        rows = evaluate(router, X[n_train:], y[n_train:], TARGETS)
        for row in rows:
            agreement = "-" if row["agreement"] is None else f"{row['agreement']:.4f}"
            print(f"target {row['target']:.2f}: coverage {row['coverage']:.1%}, agreement"
                  f" {agreement}, certified {row['certified']}")
        print(f"fit {fit_seconds:.2f} s, all {len(TARGETS)} targets")
        report[name] = {"fit_seconds": fit_seconds, "test": rows,
                        "resplits": resplits(X, y, n_train, args.resplits),
                        "learning_curve": learning_curve(X, y, n_train, args.seeds)}
    report["scale"] = [scale(n) for n in (10_000, 100_000)]
    (args.out / "banking77.json").write_text(json.dumps(report, indent=1, default=float))
    plots(report, args.out)


def resplits(X: np.ndarray, y: np.ndarray, n_train: int, n: int) -> list[dict]:
    """Refit on ``n`` random resplits (same sizes); per target, misses and mean coverage."""
    runs = []
    for r in range(n):
        order = np.random.default_rng(100 + r).permutation(len(y))
        tr, te = order[:n_train], order[n_train:]
        runs.append(evaluate(fit_router(X[tr], y[tr], targets=TARGETS, seed=r), X[te], y[te],
                             TARGETS))
    out = []
    for i, target in enumerate(TARGETS):
        cov = [run[i]["coverage"] for run in runs]
        below = sum(run[i]["agreement"] is not None and run[i]["agreement"] < target
                    for run in runs)
        credibly = sum((run[i]["p_below_target"] or 1.0) < 0.05 for run in runs)
        out.append({"target": target, "resplits": n, "below_target": below,
                    "credibly_below_target": credibly,
                    "coverage_mean": float(np.mean(cov)), "coverage_sd": float(np.std(cov))})
        print(f"resplits: target {target:.2f} below target in {below}/{n} (credibly, p < 0.05:"
              f" {credibly}/{n}), coverage {np.mean(cov):.1%} ± {np.std(cov):.1%}")
    return out


def learning_curve(X: np.ndarray, y: np.ndarray, n_train: int, seeds: int) -> list[dict]:
    """Coverage and agreement on test at 0.95 and 0.98 after 1k, 2k, 4k and 8k traces."""
    out = []
    for size in (1000, 2000, 4000, 8000):
        rows = []
        for seed in range(seeds):
            pick = np.random.default_rng(seed).choice(n_train, size=size, replace=False)
            router = fit_router(X[pick], y[pick], targets=(0.95, 0.98), seed=seed)
            rows.append(evaluate(router, X[n_train:], y[n_train:], (0.95, 0.98)))
        point = {"traces": size}
        for i, target in enumerate((0.95, 0.98)):
            point[f"coverage_{target}"] = float(np.mean([r[i]["coverage"] for r in rows]))
            agreements = [r[i]["agreement"] for r in rows if r[i]["agreement"] is not None]
            point[f"agreement_{target}"] = float(np.mean(agreements)) if agreements else None
        print(f"learning curve: {size} traces -> coverage {point['coverage_0.95']:.1%} at 0.95,"
              f" {point['coverage_0.98']:.1%} at 0.98")
        out.append(point)
    return out


_SCALE_CHILD = """
import resource, sys, time, numpy as np
from tracer_wrap.model.fit import fit_router
n = int(sys.argv[1])
rng = np.random.default_rng(0)
centres = rng.normal(size=(77, 384)).astype(np.float32)
y = rng.integers(0, 77, n)
X = centres[y] + 2.2 * rng.normal(size=(n, 384)).astype(np.float32)
X /= np.linalg.norm(X, axis=1, keepdims=True)
labels = np.array([f"intent_{i}" for i in y], dtype=object)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
router = fit_router(X, labels)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, before / 1024, peak / 1024, router.certificate_for(0.95).coverage)
"""


def scale(n: int) -> dict:
    """Fit time and peak resident memory of a fresh process fitting ``n`` synthetic traces."""
    out = subprocess.run([sys.executable, "-c", _SCALE_CHILD, str(n)], capture_output=True,
                         text=True, check=True).stdout.split()
    seconds, before_mb, peak_mb, coverage = map(float, out)
    print(f"scale: {n:,} traces (384-d, 77 labels, synthetic): fit {seconds:.1f} s, peak RSS"
          f" {peak_mb:.0f} MB (data and imports {before_mb:.0f} MB), coverage@0.95 {coverage:.1%}")
    return {"traces": n, "fit_seconds": seconds, "peak_rss_mb": peak_mb,
            "rss_before_fit_mb": before_mb}


def plots(report: dict, out: Path) -> None:
    """Coverage-vs-target frontier and learning curve, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("gold", "simulated_llm"):
        rows = report[name]["test"]
        ax.plot([r["target"] for r in rows], [r["coverage"] for r in rows], "o-",
                label=f"tracer_wrap, {name.replace('_', ' ')} teacher")
    reference = {0.90: 0.973, 0.95: 0.862, 0.98: 0.629}  # benchmarks/reference_tracer_llm.md
    ax.plot(list(reference), list(reference.values()), "s--", label="tracer-llm 0.3.3, gold")
    ax.set(xlabel="target agreement with the teacher", ylabel="coverage of held-out traffic",
           title="Banking77: coverage at a certified target (delta = 0.05)", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("gold", "simulated_llm"):
        curve = report[name]["learning_curve"]
        ax.plot([p["traces"] for p in curve], [p["coverage_0.95"] for p in curve], "o-",
                label=f"tracer_wrap, {name.replace('_', ' ')} teacher")
    ax.plot([2000, 4000, 8000], [0.68, 0.80, 0.89], "s--", label="tracer-llm 0.3.3, gold")
    ax.set(xscale="log", xlabel="traces", ylabel="coverage at target 0.95",
           title="Banking77 learning curve", ylim=(0, 1.02))
    ax.set_xticks([1000, 2000, 4000, 8000], ["1k", "2k", "4k", "8k"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)


def _machine() -> dict:
    import os
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg(),
            "max_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    main()
