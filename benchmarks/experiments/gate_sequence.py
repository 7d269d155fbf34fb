"""Does the gate's fixed sequence stop short of what its calibration traces allow? (issue 13)

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/gate_sequence.py \\
        [--teacher gold|simulated-llm] [--target 0.95] [--seeds 0 1 2 3] [--workers 2]

Replays the Banking77 stream (``benchmarks/bench_simulate.py``'s ``replay``) with
:func:`tracer_wrap.model.gate.certify` wrapped so that every test at the served target records its
inputs (calibration scores and agreement, the grid, the out-of-fold reference). Each recorded test
is then run again offline by other sequences, all decided from the reference data alone:

``stride k``   the library's sequence (from the same start, strict to lenient) keeping every k-th
               grid threshold: fewer tests, so a short run of disagreements just below one
               threshold stops the walk less often, at a coarser final threshold.
``two halves`` two fixed sequences at ``delta / 2`` each (a union bound): the library's, and one
               starting ``--back`` grid steps before the last threshold the reference predicts to
               pass; the more lenient of the two certified thresholds is kept.
``post hoc``   the most lenient grid threshold whose own p-value is at most ``delta``, found by
               looking at every one: NOT a valid test (it selects on the calibration data), shown
               only as a ceiling of what any sequence could reach.

Prints the mean certified coverage (share of the calibration traces accepted) of each, over every
recorded test; the replays themselves follow the library, so the arms differ only in that test.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tracer_wrap.model import gate  # noqa: E402

STRIDES = (1, 2, 4, 8)


def _recorded_replay(teacher: str, target: float, seed: int, cache: str) -> tuple[dict[str, Any],
                                                                                   list[dict]]:
    """One library replay; the inputs of every ``certify`` call at ``target``."""
    import bench_simulate

    calls: list[dict] = []
    library = gate.certify

    def recording(cal_scores: Any, cal_agree: Any, **kw: Any) -> gate.Certificate:
        if abs(kw["target"] - target) < 1e-12:
            calls.append({"scores": np.asarray(cal_scores, dtype=np.float64),
                          "agree": np.asarray(cal_agree, dtype=bool), **kw})
        return library(cal_scores, cal_agree, **kw)

    gate.certify = recording  # type: ignore[assignment]
    try:
        r = bench_simulate.replay(teacher, target, seed, Path(cache))
    finally:
        gate.certify = library  # type: ignore[assignment]
    return {k: r[k] for k in ("local_share", "last_quarter", "seconds")}, calls


def _sequence(call: dict, grid: np.ndarray, level: float) -> float:
    threshold, n_acc, *_ = gate._fixed_sequence(call["scores"], call["agree"], grid,
                                                call["target"], level)
    return 0.0 if threshold is None else n_acc / call["scores"].size


def _start(call: dict, level: float) -> int:
    need = gate.min_calibration(call["target"], level)
    return gate._start(np.asarray(call["grid"]), np.asarray(call["reference_scores"]),
                       call.get("reference_agree"), call["scores"].size, need, call["target"])


def arms(call: dict, back: int) -> dict[str, float] | None:
    """Certified coverage of each arm on one recorded test; None when the test did not run."""
    target, delta = call["target"], call["delta"]
    n = call["scores"].size
    if n < gate.min_calibration(target, delta) or call.get("reference_agree") is None:
        return None
    grid = np.asarray(call["grid"])
    start = _start(call, delta)
    out = {f"stride {k}": _sequence(call, grid[start:][::k], delta) for k in STRIDES}
    # The second sequence starts before the last threshold the reference predicts to pass.
    predicted, _ = gate._predicted_pvalues(grid, np.asarray(call["reference_scores"]),
                                           np.asarray(call["reference_agree"], dtype=bool), n,
                                           gate.min_calibration(target, delta / 2), target)
    passing = np.flatnonzero(predicted <= delta / 2)
    half = _sequence(call, grid[_start(call, delta / 2):], delta / 2)
    if passing.size:
        late = max(int(passing.max()) - back, 0)
        half = max(half, _sequence(call, grid[late:], delta / 2))
    out["two halves"] = half
    scores, agree = call["scores"], call["agree"]
    best = 0.0
    for threshold in grid:
        accepted = scores >= threshold
        k, m = int((accepted & agree).sum()), int(accepted.sum())
        if m and gate.binomial_pvalue(k, m, target) <= delta:
            best = max(best, m / n)
    out["post hoc (not valid)"] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="simulated-llm", choices=("gold", "simulated-llm"))
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--back", type=int, default=10, help="grid steps (0.5%% of traffic each)")
    parser.add_argument("--cache", default=str(HERE.parent / "out" / "embeddings"))
    args = parser.parse_args()
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_recorded_replay, [args.teacher] * len(args.seeds),
                                [args.target] * len(args.seeds), args.seeds,
                                [args.cache] * len(args.seeds)))
    rows: list[dict[str, float]] = []
    for seed, (summary, calls) in zip(args.seeds, results):
        mine = [a for a in (arms(c, args.back) for c in calls) if a is not None]
        rows += mine
        print(f"seed {seed}: {summary}, {len(mine)} tests;",
              {k: round(float(np.mean([r[k] for r in mine])), 4) for k in mine[0]})
    print(f"all {len(rows)} tests ({args.teacher}, target {args.target}): mean certified coverage")
    for k in rows[0]:
        values = np.array([r[k] for r in rows])
        diff = values - np.array([r["stride 1"] for r in rows])
        print(f"  {k:22s} {values.mean():.4f}  vs stride 1: {diff.mean():+.4f}"
              f" (se {diff.std(ddof=1) / np.sqrt(len(diff)):.4f})")


if __name__ == "__main__":
    main()
