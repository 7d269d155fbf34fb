"""Fit and evaluate the reference library, tracer-llm 0.3.3, on precomputed embeddings.

Standalone on purpose: this file runs inside tracer-llm's own virtual environment (it pins
numpy < 2.1), so it imports only the standard library, numpy and ``tracer``, never tracer_wrap.
It is driven by :func:`tracer_wrap.lab.reference.run_reference`::

    python _reference_runner.py --data DATA.npz --config CONFIG.json [--out OUT.json]

``DATA.npz`` holds ``X_train, y_train, X_test, y_test`` (float32 embeddings, string labels).
``CONFIG.json`` holds ``targets`` (list of floats), ``seed``, ``workdir`` and optionally
``latency_calls`` (default 500), ``throughput_repeats`` (3), ``verbose`` (false),
``max_fit_labels`` and ``skip_candidates`` (tracer-llm's FitConfig fields).

tracer-llm's public API only deploys one router per ``tracer.fit`` call (the one at
``target_teacher_agreement``; the other ``frontier_targets`` are computed, then only summarised in
``frontier.json``), and each frontier target rebuilds its own candidates. So one fit per target,
with ``frontier_targets=(t,)``, costs the same as one fit over all targets and is the only public
way to get a router for every target. Its OOD gate is on whenever ``ood.json`` sits in the
artifact directory (``fit`` always writes it); the router without it is measured by loading the
same artifacts with that file moved aside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

DATA_KEYS = ("X_train", "y_train", "X_test", "y_test")
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "latency_calls": 500,
    "throughput_repeats": 3,
    "verbose": False,
    "max_fit_labels": None,
    "skip_candidates": [],
}


def load_data(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and check the npz contract: float32 2-D ``X_*``, 1-D string ``y_*`` of matching
    length."""
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in DATA_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}; expected {list(DATA_KEYS)}")
        data = {k: npz[k] for k in DATA_KEYS}
    for part in ("train", "test"):
        X, y = data[f"X_{part}"], data[f"y_{part}"]
        if X.ndim != 2:
            raise ValueError(f"X_{part} must be 2-D, got shape {X.shape}")
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y_{part} must be 1-D with {len(X)} rows, got shape {y.shape}")
        data[f"X_{part}"] = np.ascontiguousarray(X, dtype=np.float32)
        data[f"y_{part}"] = y.astype(str)
    if data["X_train"].shape[1] != data["X_test"].shape[1]:
        raise ValueError("X_train and X_test have different embedding dimensions")
    if len(data["y_train"]) == 0:
        raise ValueError("the training part is empty")
    return data


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the JSON config, fill defaults and check ``targets`` and ``workdir``."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    cfg = {**DEFAULTS, **raw}
    targets = cfg.get("targets")
    if not isinstance(targets, list) or not targets:
        raise ValueError("config 'targets' must be a non-empty list of floats")
    cfg["targets"] = [float(t) for t in targets]
    if any(not 0.0 < t <= 1.0 for t in cfg["targets"]):
        raise ValueError(f"targets must lie in (0, 1], got {cfg['targets']}")
    if not cfg.get("workdir"):
        raise ValueError("config 'workdir' is required")
    cfg["seed"] = int(cfg["seed"])
    cfg["latency_calls"] = int(cfg["latency_calls"])
    cfg["throughput_repeats"] = max(1, int(cfg["throughput_repeats"]))
    return cfg


def write_traces(path: Path, labels: np.ndarray) -> None:
    """Write the JSONL trace file ``tracer.fit`` insists on; inputs are placeholders since the
    embeddings are passed precomputed (the text only feeds tracer-llm's qualitative report)."""
    with path.open("w", encoding="utf-8") as f:
        for i, label in enumerate(labels):
            f.write(json.dumps({"input": f"trace {i}", "teacher": str(label)}) + "\n")


def coverage_agreement(
    handled: np.ndarray, labels: list[str | None], y: np.ndarray
) -> tuple[float, float | None, int]:
    """Share of rows handled, agreement with ``y`` on them (None if none handled), count handled."""
    handled = np.asarray(handled, dtype=bool)
    n_handled = int(handled.sum())
    if len(y) == 0:
        return 0.0, None, 0
    if n_handled == 0:
        return 0.0, None, 0
    agree = sum(1 for i in np.flatnonzero(handled) if labels[i] == y[i])
    return n_handled / len(y), agree / n_handled, n_handled


def time_single(router: Any, X: np.ndarray, n_calls: int) -> dict[str, float]:
    """Median and p99 wall time (ms) of ``router.predict`` on one embedded input."""
    if len(X) == 0 or n_calls <= 0:
        return {"median": float("nan"), "p99": float("nan"), "n_calls": 0}
    for i in range(min(20, n_calls)):  # warm-up: first calls pay lazy imports
        router.predict(X[i % len(X)])
    times = np.empty(n_calls)
    for i in range(n_calls):
        x = X[i % len(X)]
        t0 = time.perf_counter()
        router.predict(x)
        times[i] = time.perf_counter() - t0
    return {
        "median": float(np.median(times) * 1e3),
        "p99": float(np.percentile(times, 99) * 1e3),
        "n_calls": n_calls,
    }


def time_batch(router: Any, X: np.ndarray, repeats: int) -> float:
    """Rows per second of ``router.predict_batch`` on all of ``X`` (best of ``repeats``)."""
    if len(X) == 0:
        return float("nan")
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        router.predict_batch(X)
        best = min(best, time.perf_counter() - t0)
    return len(X) / best


def _load_router_pair(tracer: Any, artifact_dir: Path) -> tuple[Any, Any]:
    """(router with its OOD gate as deployed, the same router without it)."""
    with_ood = tracer.load_router(str(artifact_dir))
    ood = artifact_dir / "ood.json"
    if not ood.exists():
        return with_ood, with_ood
    aside = artifact_dir / "ood.json.off"
    ood.rename(aside)
    try:
        without = tracer.load_router(str(artifact_dir))
    finally:
        aside.rename(ood)
    return with_ood, without


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def run(data: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, Any]:
    """Fit tracer-llm once per target on the train part and measure it on the test part."""
    import sklearn
    import tracer
    from tracer import FitConfig

    load_start = list(os.getloadavg())
    workdir = Path(cfg["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    traces = workdir / "train_traces.jsonl"
    write_traces(traces, data["y_train"])
    X_train, X_test, y_test = data["X_train"], data["X_test"], data["y_test"]
    rng = np.random.default_rng(cfg["seed"])
    latency_rows = X_test[rng.permutation(len(X_test))] if len(X_test) else X_test

    extra: dict[str, Any] = {}
    if cfg.get("max_fit_labels"):
        extra["max_fit_labels"] = int(cfg["max_fit_labels"])
    if cfg.get("skip_candidates"):
        extra["skip_candidates"] = tuple(cfg["skip_candidates"])

    rows: list[dict[str, Any]] = []
    for target in cfg["targets"]:
        artifact_dir = workdir / f"target_{target:.4f}"
        if artifact_dir.exists():  # a stale ood.json from an earlier run would switch the gate on
            shutil.rmtree(artifact_dir)
        config = FitConfig(
            target_teacher_agreement=target,
            frontier_targets=(target,),
            seed=cfg["seed"],
            verbose=bool(cfg["verbose"]),
            **extra,
        )
        t0 = time.perf_counter()
        result = tracer.fit(str(traces), str(artifact_dir), embeddings=X_train, config=config)
        fit_s = time.perf_counter() - t0
        manifest = result.manifest
        row: dict[str, Any] = {
            "target": target,
            "certified": manifest.selected_method is not None,
            "coverage": 0.0,
            "agreement": None,
            "n_test": int(len(y_test)),
            "n_handled": 0,
            "fit_seconds": fit_s,
            "method": manifest.selected_method,
            "coverage_cal": manifest.coverage_cal,
            "agreement_cal": manifest.teacher_agreement_cal,
            "ood_gate": (artifact_dir / "ood.json").exists(),
            "artifact_dir": str(artifact_dir),
        }
        if row["certified"]:
            router, router_no_ood = _load_router_pair(tracer, artifact_dir)
            out = router.predict_batch(X_test)
            cov, agr, n_h = coverage_agreement(out["handled"], out["labels"], y_test)
            out = router_no_ood.predict_batch(X_test)
            cov_n, agr_n, _ = coverage_agreement(out["handled"], out["labels"], y_test)
            row.update(
                coverage=cov,
                agreement=agr,
                n_handled=n_h,
                coverage_no_ood=cov_n,
                agreement_no_ood=agr_n,
                latency_ms=time_single(router, latency_rows, cfg["latency_calls"]),
                latency_no_ood_ms=time_single(router_no_ood, latency_rows, cfg["latency_calls"]),
                throughput_rows_per_s=time_batch(router, X_test, cfg["throughput_repeats"]),
                throughput_no_ood_rows_per_s=time_batch(
                    router_no_ood, X_test, cfg["throughput_repeats"]
                ),
            )
        rows.append(row)

    # Headline routing figures: the router of the loosest certified target (the one that
    # answers most traffic); every target's own figures are in its row.
    headline = next((r for r in rows if r["certified"]), None)
    report: dict[str, Any] = {
        "library": "tracer-llm",
        "version": getattr(tracer, "__version__", "unknown"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "cpu_count": os.cpu_count(),
        # Neighbours on a shared 2-core machine skew timings; the load says how much.
        "loadavg_start": load_start,
        "loadavg_end": list(os.getloadavg()),
        "n_train": int(len(X_train)),
        "n_test": int(len(X_test)),
        "dim": int(X_train.shape[1]),
        "n_labels": int(len(np.unique(data["y_train"]))),
        "seed": cfg["seed"],
        "fit_seconds": sum(r["fit_seconds"] for r in rows),
        "fit_mode": "one tracer.fit per target (frontier_targets=(t,))",
        "targets": rows,
        "latency_target": headline["target"] if headline else None,
        "latency_ms": headline["latency_ms"] if headline else None,
        "latency_no_ood_ms": headline["latency_no_ood_ms"] if headline else None,
        "throughput_rows_per_s": headline["throughput_rows_per_s"] if headline else None,
        "throughput_no_ood_rows_per_s": (
            headline["throughput_no_ood_rows_per_s"] if headline else None
        ),
    }
    return cast(dict[str, Any], _nan_to_none(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="npz with X_train, y_train, X_test, y_test")
    parser.add_argument("--config", required=True, help="JSON with targets, seed, workdir")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = run(load_data(args.data), load_config(args.config))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
