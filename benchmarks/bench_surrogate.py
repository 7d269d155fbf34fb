"""Today's surrogate and the fused one side by side on Banking77 (issue 16): coverage at a
certified target, validity over resplits, fit time, routing latency from text, file size.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_surrogate.py [--resplits 20]

Models, all fitted by :func:`tracer_wrap.model.fit.fit_router` on the same split and seed:

* ``today``: the embedding-only surrogate with the global acceptor and C = 100 (``texts=None,
  acceptor="global"``), i.e. the model before this change (same objective, split and gate; the
  solver is now the package's float32 L-BFGS instead of scikit-learn's);
* ``new``: the default when the text is known (``texts=...``): the fused surrogate (n-grams plus
  the embedding) where out-of-fold data predicts it certifies more than the embedding one,
  strengths and acceptor chosen out-of-fold; measured from text;
* ``new, by embedding``: the same router routing by embedding only (``route(None, vector)``,
  the sidecar's route-by-embedding), with its own certificates;
* ``per_label``: ``guarantee="per_label"`` (fixed split only).

For the gold labels and the simulated LLM teacher (as in ``bench_banking77.py``): fit on train,
measure on test; then refit on ``--resplits`` random resplits of train+test (same sizes) and count
the resplits whose held-out agreement fell below the target (and credibly so: one-sided binomial
p < 0.05). Fit wall and CPU seconds at 10k traces (the 10,003 training queries), routing latency
per input from text (median and p99; embedding excluded and, with MiniLM, included) and the size
of the router file. The per-label guarantee's validity is measured on a synthetic task with known
per-label agreement over ``--draws`` calibration draws. Writes ``surrogate.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binom

from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import banking77_ambiguity, load_banking77
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours
from tracer_wrap.model.embedder import Embedder
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.gate import certify_per_label
from tracer_wrap.model.router import Router

HERE = Path(__file__).resolve().parent
TARGETS = (0.85, 0.90, 0.95, 0.97, 0.98, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resplits", type=int, default=20)
    parser.add_argument("--draws", type=int, default=1000, help="synthetic per-label draws")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "embeddings")
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="fits of each model at 10k traces, for the fit time (min and median)")
    parser.add_argument("--only-timing", action="store_true",
                        help="measure only the fit time and add it to an existing surrogate.json")
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
    if args.only_timing:
        report = json.loads((args.out / "surrogate.json").read_text())
        report["timing"] = timing(X, teachers["gold"], texts, n_train, args.timing_repeats)
        (args.out / "surrogate.json").write_text(json.dumps(report, indent=1, default=float))
        return
    report = {"machine": _machine(), "targets": TARGETS}
    for name, y in teachers.items():
        print(f"\n== teacher: {name} (agrees with gold on {np.mean(y == gold):.1%}) ==", flush=True)
        tr, te = np.arange(n_train), np.arange(n_train, len(y))
        fixed: dict[str, Any] = {}
        routers = {}
        for model in ("today", "new", "per_label"):
            router, seconds = _fit(model, X, y, texts, tr, seed=0)
            routers[model] = router
            fixed[model] = {"fit": seconds, "info": _info(router),
                            "file_bytes": len(router.to_bytes()[0]),
                            "test": evaluate(router, texts, X, y, te, by_text=model != "today")}
            if model == "new":
                fixed["new, by embedding"] = {
                    "test": evaluate(router, texts, X, y, te, by_text=False)}
        for model, result in fixed.items():
            _print_rows(model, result["test"])
            if "fit" in result:
                print(f"  fit {result['fit']['wall']:.1f} s wall, {result['fit']['cpu']:.1f} s CPU;"
                      f" router file {result['file_bytes'] / 1e6:.2f} MB; {result['info']}")
        report[name] = {"fixed": fixed,
                        "latency": latency(routers["today"], routers["new"], texts, X, te),
                        "resplits": resplits(X, y, texts, n_train, args.resplits)}
        (args.out / "surrogate.json").write_text(json.dumps(report, indent=1, default=float))
    report["per_label_validity"] = per_label_validity(args.draws)
    report["timing"] = timing(X, teachers["gold"], texts, n_train, args.timing_repeats)
    report["machine_after"] = _machine()
    (args.out / "surrogate.json").write_text(json.dumps(report, indent=1, default=float))


def _fit(model: str, X: np.ndarray, y: np.ndarray, texts: list[str], rows: np.ndarray,
         seed: int) -> tuple[Router, dict[str, float]]:
    kwargs: dict[str, Any] = {"targets": TARGETS, "seed": seed}
    if model == "today":
        kwargs.update(C=100.0, acceptor="global")
    else:
        kwargs["texts"] = [texts[i] for i in rows]
        if model == "per_label":
            kwargs["guarantee"] = "per_label"
    wall, cpu = time.perf_counter(), time.process_time()
    router = fit_router(X[rows], y[rows], **kwargs)
    return router, {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                    "load_average": os.getloadavg()[0]}


def timing(X: np.ndarray, y: np.ndarray, texts: list[str], n_train: int, repeats: int
           ) -> dict[str, Any]:
    """Fit today's and the new model ``repeats`` times each on the 10,003 training queries
    (interleaved; gold labels): wall and CPU seconds, their minimum (the least disturbed run on a
    shared machine) and median, the load average at each fit; then the routing latency of the
    last two routers on the test queries."""
    rows = np.arange(n_train)
    out: dict[str, Any] = {"traces": n_train, "repeats": repeats}
    runs: dict[str, list[dict[str, float]]] = {"today": [], "new": []}
    routers: dict[str, Router] = {}
    for _ in range(repeats):
        for model, seconds in runs.items():
            routers[model], measured = _fit(model, X, y, texts, rows, seed=0)
            seconds.append(measured)
    for model, seconds in runs.items():
        walls = [s["wall"] for s in seconds]
        cpus = [s["cpu"] for s in seconds]
        out[model] = {"wall_min": min(walls), "wall_median": statistics.median(walls),
                      "cpu_min": min(cpus), "cpu_median": statistics.median(cpus),
                      "load_average": [s["load_average"] for s in seconds]}
        print(f"fit at {n_train:,} traces, {model}: wall min {min(walls):.1f} s (median"
              f" {statistics.median(walls):.1f}), CPU min {min(cpus):.1f} s", flush=True)
    out["latency"] = latency(routers["today"], routers["new"], texts, X,
                             np.arange(n_train, len(y)))
    out["machine"] = _machine()
    return out


def evaluate(router: Router, texts: list[str], X: np.ndarray, y: np.ndarray, rows: np.ndarray,
             *, by_text: bool) -> list[dict[str, Any]]:
    """Per target: coverage of the test rows, agreement on the handled ones, worst label."""
    batch = [texts[i] for i in rows] if by_text else None
    labels = np.asarray(router.labels, dtype=object)
    served = router.target
    out = []
    for target in TARGETS:
        router.target = target
        top, _, local = router.decide(batch, X[rows])
        agree = labels[top] == y[rows]
        n, k = int(local.sum()), int(agree[local].sum())
        worst = [float(agree[local & (top == j)].mean()) for j in np.unique(top[local])
                 if (local & (top == j)).sum() >= 20]
        cert = router.certificate_for(target, text=by_text)
        out.append({"target": target, "certified": cert.certified,
                    "coverage": n / len(rows), "agreement": k / n if n else None,
                    "calibration_coverage": cert.coverage,
                    "worst_label_agreement": min(worst) if worst else None,
                    "p_below_target": float(binom.cdf(k, n, target)) if n else None})
    router.target = served
    return out


def resplits(X: np.ndarray, y: np.ndarray, texts: list[str], n_train: int, n: int
             ) -> dict[str, Any]:
    """Refit today's and the fused model on ``n`` random resplits; misses and mean coverage."""
    runs: dict[str, list[list[dict[str, Any]]]] = {"today": [], "new": [],
                                                   "new, by embedding": []}
    fit_seconds: dict[str, list[float]] = {"today": [], "new": []}
    chosen: list[str] = []
    for r in range(n):
        order = np.random.default_rng(100 + r).permutation(len(y))
        tr, te = order[:n_train], order[n_train:]
        for model in ("today", "new"):
            router, seconds = _fit(model, X, y, texts, tr, seed=r)
            fit_seconds[model].append(seconds["wall"])
            runs[model].append(evaluate(router, texts, X, y, te, by_text=model == "new"))
            if model == "new":
                chosen.append(str(router.info.get("text_path")))
                runs["new, by embedding"].append(evaluate(router, texts, X, y, te,
                                                          by_text=False))
        print(f"resplit {r + 1}/{n}: coverage at 0.95 today {runs['today'][-1][2]['coverage']:.1%},"
              f" new {runs['new'][-1][2]['coverage']:.1%} ({chosen[-1]} from text)", flush=True)
    summary: dict[str, Any] = {"n": n, "text_path": chosen, "fit_seconds_median": {
        k: statistics.median(v) if v else None for k, v in fit_seconds.items()}}
    for model, rows in runs.items():
        summary[model] = []
        for i, target in enumerate(TARGETS):
            cov = [run[i]["coverage"] for run in rows]
            below = sum(run[i]["agreement"] is not None and run[i]["agreement"] < target
                        for run in rows)
            credibly = sum((run[i]["p_below_target"] or 1.0) < 0.05 for run in rows)
            summary[model].append({"target": target, "below_target": below,
                                   "credibly_below_target": credibly,
                                   "coverage_mean": float(np.mean(cov)) if cov else None,
                                   "coverage_sd": float(np.std(cov)) if cov else None})
            print(f"{model:20s} target {target:.2f}: below {below}/{n} (credibly {credibly}),"
                  f" coverage {np.mean(cov):.1%} ± {np.std(cov):.1%}")
    return summary


def latency(today: Router, fused: Router, texts: list[str], X: np.ndarray, rows: np.ndarray,
            calls: int = 2000) -> dict[str, Any]:
    """Milliseconds per input from text to decision: embedding excluded (the vector is known)
    and included (a fresh MiniLM embedder, first sight of each text)."""
    out: dict[str, Any] = {}
    for name, router in (("today", today), ("new", fused)):
        times = []
        for i in range(calls):
            j = int(rows[i % len(rows)])
            started = time.perf_counter()
            router.route(texts[j], X[j])
            times.append(time.perf_counter() - started)
        out[name] = {"median_ms": 1000 * statistics.median(times),
                     "p99_ms": 1000 * float(np.percentile(times, 99))}
    embedder = Embedder.default()
    embedder.embed_one("warm the model up")
    for name, router in (("today", today), ("new", fused)):
        times = []
        for i in range(300):
            j = int(rows[(i * 7 + (name == "new")) % len(rows)])  # unseen texts for each
            started = time.perf_counter()
            router.route(texts[j], embedder.embed_one(texts[j]))
            times.append(time.perf_counter() - started)
        out[name].update(with_embedding_median_ms=1000 * statistics.median(times),
                         with_embedding_p99_ms=1000 * float(np.percentile(times, 99)))
    print("latency per input from text:", json.dumps(out, default=lambda v: round(v, 3)))
    return out


def per_label_validity(draws: int, target: float = 0.9, delta: float = 0.1) -> dict[str, Any]:
    """The per-label guarantee on a synthetic task whose per-label agreement is known exactly
    (the task of ``tests/model/test_gate.py``): 12 labels, score s ~ U(0, 1), the teacher agrees
    with a label-k answer with chance b_k + (1 - b_k) sqrt(s), b_k from 0.5 to 0.9."""
    bases = np.linspace(0.5, 0.9, 12)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        labels = rng.integers(0, len(bases), n)
        s = rng.random(n)
        return s, rng.random(n) < bases[labels] + (1 - bases[labels]) * np.sqrt(s), labels

    def agreement(k: int, tau: float) -> float:
        return float(bases[k] + (1 - bases[k]) * (2 / 3) * (1 - tau**1.5) / (1 - tau))

    rng = np.random.default_rng(2024)
    violations = certified = 0
    coverage = []
    for _ in range(draws):
        ref, cal = sample(rng, 3000), sample(rng, 3000)
        cert = certify_per_label(*cal, reference_scores=ref[0], reference_agree=ref[1],
                                 reference_labels=ref[2], n_labels=len(bases), target=target,
                                 delta=delta)
        coverage.append(cert.coverage)
        if cert.certified and cert.label_thresholds is not None:
            certified += 1
            violations += any(t is not None and agreement(k, t) < target
                              for k, t in enumerate(cert.label_thresholds))
    out = {"draws": draws, "target": target, "delta": delta, "certified": certified,
           "violations": violations, "violation_rate": violations / draws,
           "mean_coverage": float(np.mean(coverage))}
    print("per-label validity (synthetic):", out)
    return out


def _print_rows(model: str, rows: list[dict[str, Any]]) -> None:
    cells = []
    for row in rows:
        agreement = "-" if row["agreement"] is None else f"{row['agreement']:.3f}"
        cells.append(f"{row['target']:.2f}: {row['coverage']:.1%} @ {agreement}")
    print(f"{model:20s} " + " | ".join(cells))


def _info(router: Router) -> dict[str, Any]:
    keys = ("C", "text_C", "text_path", "per_label_acceptor", "predicted_coverage",
            "n_ngram_features", "n_train", "n_calibration")
    return {k: router.info.get(k) for k in keys}


def _machine() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg()}


if __name__ == "__main__":
    main()
