"""``tracer-wrap bench``: fit on one trace file, measure on another, optionally beside tracer-llm.

Both libraries get the same embeddings and the same split; the reference runs in its own virtual
environment (:mod:`tracer_wrap.lab.reference`). Figures: fit time, per target the certified coverage
and agreement on the test file, routing latency of one embedded input (median, p99), batch
throughput, and text-to-decision latency with the embedder (first time and repeated). With
``--resplits N`` both libraries are refitted on N random resplits of the pooled files and the
share of resplits whose test agreement fell below the target is reported.
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..model.embedder import Embedder
from ..model.fit import fit_router
from ..model.router import Router
from ..store import read_jsonl

__all__ = ["bench", "bench_command", "evaluate"]


def evaluate(router: Router, X_test: np.ndarray, y_test: np.ndarray,
             targets: Sequence[float], texts: Sequence[str] | None = None
             ) -> list[dict[str, Any]]:
    """Per target: certified?, coverage of the test rows and agreement on the handled ones, as
    served: with ``texts`` the fused surrogate decides, without them the embedding-only one.
    Leaves the router serving the target it served."""
    from scipy.stats import binom

    rows = []
    served = router.target
    for target in targets:
        cert = router.certificate_for(target, text=texts is not None)
        router.target = target
        top, _, handled = router.decide(texts, X_test)
        predicted = np.asarray(router.labels, dtype=object)[top]
        n_handled = int(handled.sum())
        n_agree = int((predicted[handled] == y_test[handled]).sum())
        rows.append({
            "target": target,
            "certified": cert.certified,
            "threshold": cert.threshold,
            "coverage": n_handled / len(y_test),
            "agreement": (float((predicted[handled] == y_test[handled]).mean())
                          if n_handled else None),
            "calibration_coverage": cert.coverage,
            "n_test": int(len(y_test)),
            # How surely the test rows show agreement below target: P(Binomial(n, target) <= k).
            # A test set is a finite sample too, so agreement just under the target is expected
            # now and then even when the population agreement meets it.
            "p_below_target": float(binom.cdf(n_agree, n_handled, target)) if n_handled else None,
        })
    router.target = served
    return rows


def routing_latency(router: Router, X: np.ndarray, calls: int = 2000) -> dict[str, float]:
    """Median and p99 milliseconds of routing one embedded input, and batch rows per second."""
    times = []
    for i in range(calls):
        vector = X[i % len(X)]
        started = time.perf_counter()
        router.route(None, vector)
        times.append(time.perf_counter() - started)
    repeats, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.5 or repeats < 3:
        router.route_many(None, X)
        repeats += 1
    elapsed = time.perf_counter() - started
    return {"median_ms": 1000 * statistics.median(times),
            "p99_ms": 1000 * float(np.percentile(times, 99)),
            "batch_rows_per_s": repeats * len(X) / elapsed}


def text_latency(router: Router, embedder_factory: Callable[[], Embedder], texts: Sequence[str],
                 ) -> dict[str, float]:
    """Milliseconds from text to decision with a fresh embedder: first sight, then a repeat."""
    embedder = embedder_factory()
    embedder.embed_one("warm the model up")
    first: list[float] = []
    repeat: list[float] = []
    for sink in (first, repeat):
        for text in texts:
            started = time.perf_counter()
            router.route(text, embedder.embed_one(text))
            sink.append(time.perf_counter() - started)
    return {"median_ms": 1000 * statistics.median(first),
            "p99_ms": 1000 * float(np.percentile(first, 99)),
            "repeat_median_ms": 1000 * statistics.median(repeat)}


def embed_cached(embedder: Embedder, texts: list[str], cache: Path | None,
                 progress: Progress | None = None) -> np.ndarray:
    """Embed ``texts`` in batches, reusing ``cache/<hash>.npy`` of an earlier identical run."""
    key = hashlib.sha256("\n".join([embedder.name, *texts]).encode()).hexdigest()[:24]
    path = cache / f"{key}.npy" if cache else None
    if path is not None and path.exists():
        return np.asarray(np.load(path, allow_pickle=False))
    task = (progress.add_task(f"Embedding {len(texts):,} texts", total=len(texts))
            if progress else None)
    vectors = embedder.embed_chunked(
        texts, done=None if progress is None or task is None
        else lambda n: progress.advance(task, n))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors


def bench(
    train: Path,
    test: Path,
    *,
    targets: Sequence[float] = (0.90, 0.95, 0.98),
    embedder: str | None = None,
    compare: str | None = None,
    resplits: int = 0,
    seed: int = 0,
    cache: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its report (see the module docstring). Raises ConfigError
    without a target or with one outside (0, 1]."""
    from ..errors import ConfigError
    from ..model.embedder import make_embedder

    if not targets or not all(0.0 < t <= 1.0 for t in targets):
        raise ConfigError(f"targets: at least one, each in (0, 1], got {list(targets)!r}")
    console = console or Console(stderr=True)
    train_rows, test_rows = list(read_jsonl(train)), list(read_jsonl(test))
    texts = [t for t, _ in train_rows] + [t for t, _ in test_rows]
    y_all = np.array([y for _, y in train_rows] + [y for _, y in test_rows], dtype=object)
    emb = make_embedder(embedder)
    with Progress(console=console, transient=True) as progress:
        X_all = embed_cached(emb, texts, cache, progress)
    n_train = len(train_rows)
    X_train, y_train = X_all[:n_train], y_all[:n_train]
    X_test, y_test = X_all[n_train:], y_all[n_train:]
    all_targets = tuple(sorted(set(targets)))

    started = time.perf_counter()
    router = fit_router(X_train, y_train.tolist(), texts=texts[:n_train], targets=all_targets,
                        seed=seed)
    fit_seconds = time.perf_counter() - started
    ours: dict[str, Any] = {
        "library": "tracer_wrap",
        "fit_seconds": fit_seconds,
        "targets": evaluate(router, X_test, y_test, all_targets, texts[n_train:]),
        "latency_ms": routing_latency(router, X_test),
    }
    test_texts = [t for t, _ in test_rows[:300]]
    ours["text_latency_ms"] = text_latency(router, lambda: make_embedder(embedder), test_texts)
    report: dict[str, Any] = {
        "train": str(train), "test": str(test), "n_train": n_train, "n_test": len(test_rows),
        "embedder": emb.name, "seed": seed, "machine": _machine(), "tracer_wrap": ours,
    }
    if compare == "tracer-llm":
        from .reference import run_reference

        console.print("Fitting tracer-llm 0.3.3 in its own environment (minutes)...")
        workdir = Path(cache or ".") / "reference-runs"
        report["tracer-llm"] = run_reference(X_train, y_train, X_test, y_test,
                                             targets=all_targets, seed=seed, workdir=workdir)
        report["ratios"] = _ratios(ours, report["tracer-llm"])
    elif compare:
        raise typer.BadParameter(f"unknown --compare {compare!r}; supported: tracer-llm")
    if resplits:
        report["resplits"] = _resplits(X_all, y_all, texts, n_train, all_targets, resplits, seed,
                                       compare == "tracer-llm", cache, console)
    return report


def _resplits(X: np.ndarray, y: np.ndarray, texts: Sequence[str], n_train: int,
              targets: Sequence[float], n: int,
              seed: int, with_reference: bool, cache: Path | None, console: Console
              ) -> dict[str, Any]:
    """Refit on ``n`` random resplits of the pooled rows (same sizes); count target misses."""
    runs: dict[str, list[list[dict[str, Any]]]] = {"tracer_wrap": [], "tracer-llm": []}
    for r in range(n):
        order = np.random.default_rng(seed + 1000 + r).permutation(len(y))
        tr, te = order[:n_train], order[n_train:]
        router = fit_router(X[tr], y[tr].tolist(), texts=[texts[i] for i in tr], targets=targets,
                            seed=seed + r)
        runs["tracer_wrap"].append(evaluate(router, X[te], y[te], targets,
                                            [texts[i] for i in te]))
        if with_reference:
            from .reference import run_reference

            console.print(f"tracer-llm resplit {r + 1}/{n}...")
            out = run_reference(X[tr], y[tr], X[te], y[te], targets=targets, seed=seed + r,
                                workdir=Path(cache or ".") / "reference-runs", latency_calls=10)
            runs["tracer-llm"].append(out["targets"])
    summary: dict[str, Any] = {"n": n}
    for library, rows in runs.items():
        if not rows:
            continue
        summary[library] = [{
            "target": t,
            "below_target": sum(1 for run in rows for row in run if row["target"] == t
                                and row["agreement"] is not None and row["agreement"] < t),
            "credibly_below_target": sum(1 for run in rows for row in run if row["target"] == t
                                         and (row.get("p_below_target") or 1.0) < 0.05),
            "mean_coverage": float(np.mean([row["coverage"] for run in rows for row in run
                                            if row["target"] == t])),
        } for t in targets]
    return summary


def _ratios(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    by_target = {row["target"]: row for row in ref.get("targets", [])}
    coverage = {str(row["target"]): (row["coverage"] / by_target[row["target"]]["coverage"]
                                     if by_target.get(row["target"], {}).get("coverage") else None)
                for row in ours["targets"]}
    ref_latency = ref.get("latency_ms", {}).get("median")
    return {
        "fit_speedup": ref["fit_seconds"] / ours["fit_seconds"] if ours["fit_seconds"] else None,
        "routing_speedup": (ref_latency / ours["latency_ms"]["median_ms"]) if ref_latency else None,
        "coverage_ratio": coverage,
    }


def _machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report as tables."""
    table = Table(title=f"{report['n_train']:,} train / {report['n_test']:,} test traces,"
                        f" embedder {report['embedder']}")
    for column in ("library", "target", "certified", "coverage", "agreement", "fit s"):
        table.add_column(column, justify="right")
    for library in ("tracer_wrap", "tracer-llm"):
        side = report.get(library)
        if not side:
            continue
        for row in side["targets"]:
            agreement = "-" if row["agreement"] is None else f"{row['agreement']:.4f}"
            table.add_row(library, f"{row['target']:.2f}", "yes" if row["certified"] else "no",
                          f"{row['coverage']:.1%}", agreement, f"{side['fit_seconds']:.1f}")
    console.print(table)
    ours = report["tracer_wrap"]
    lat, text = ours["latency_ms"], ours["text_latency_ms"]
    console.print(f"route one embedded input: median {lat['median_ms']:.4f} ms, p99"
                  f" {lat['p99_ms']:.4f} ms; batch {lat['batch_rows_per_s']:,.0f} rows/s")
    console.print(f"text to decision: median {text['median_ms']:.2f} ms (p99"
                  f" {text['p99_ms']:.2f}), repeated text {text['repeat_median_ms']:.4f} ms")
    if "resplits" in report:
        for library in ("tracer_wrap", "tracer-llm"):
            for row in report["resplits"].get(library, []):
                console.print(f"{library} target {row['target']:.2f}: below target in"
                              f" {row['below_target']} of {report['resplits']['n']} resplits"
                              f" (credibly below in {row['credibly_below_target']}),"
                              f" mean coverage {row['mean_coverage']:.1%}")


def bench_command(
    train: Path = typer.Option(..., exists=True, dir_okay=False, help="training traces (JSONL)"),
    test: Path = typer.Option(..., exists=True, dir_okay=False, help="test traces (JSONL)"),
    targets: str = typer.Option("0.90,0.95,0.98", help="comma-separated target agreements"),
    json_out: Path | None = typer.Option(None, "--json", help="write the report here"),
    embedder: str | None = typer.Option(None, help="embedder name (default MiniLM; 'hashing')"),
    compare: str | None = typer.Option(None, help="also run 'tracer-llm' 0.3.3 side by side"),
    resplits: int = typer.Option(0, min=0, help="refit on N random resplits, count misses"),
    seed: int = typer.Option(0),
    cache: Path | None = typer.Option(None, help="directory caching embeddings between runs"),
) -> None:
    """Fit on TRAIN, measure on TEST; optionally side by side with tracer-llm."""
    try:
        parsed = [float(t) for t in targets.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"--targets must be numbers, got {targets!r}") from None
    if not parsed:
        raise typer.BadParameter(f"--targets needs at least one target, got {targets!r}")
    if not all(0.0 < t <= 1.0 for t in parsed):
        raise typer.BadParameter(f"--targets must be in (0, 1], got {targets!r}")
    console = Console()
    report = bench(train, test, targets=parsed, embedder=embedder, compare=compare,
                   resplits=resplits, seed=seed, cache=cache)
    print_report(report, console)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
