"""How much of the flywheel's coverage gap is calibration (issue 13): the Banking77 stream of
``bench_simulate.py`` (train then test, each shuffled by ``--seed``) replayed three ways.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/flywheel_ceiling.py --arm oracle
        [--teacher gold|sim] [--target 0.95] [--seed 0]

* ``oracle``: the LLM's label of *every* call is known (local answers included), so each refit
  calibrates on a random share of the whole history, as a static fit does; the newest certified
  router serves. No real deployment sees these labels: it is the ceiling of the refit schedule and
  the model when calibration is never starved.
* ``cascade``: only what reached the LLM is known (deferred calls and audit samples). Each refit
  adds a *stage* to the served chain: a router fitted on every known trace and certified at the
  target only on the calibration traces the chain defers (those are a complete sample of the
  deferred traffic), at ``delta / 2**depth`` (the chain holds with probability 1 - delta by the
  union bound); a call goes to the first stage that accepts it.
* ``train-all`` / ``train-known``: where the oracle's lead comes from. Both calibrate on a random
  share of *every* call so far (labels of local answers included, as the oracle); ``train-all``
  also trains on every other call, ``train-known`` only on the calls that reached the LLM under
  the newest certified router (its deferred calls and 2% audits), as a deployment must. Both
  certify with ``fit_router``'s own gate (reference data: out-of-fold training data, as
  ``oracle``).
* ``replay``: the production code (``tracer_wrap.lab.simulate.simulate``), with a constant audit
  rate ``--audit-rate`` (default: the library's, 0.02 falling with the calibration size), the
  library's rate raised to ``--audit-early C`` / n_calibration while that is higher.

Routers are ``fit_router(..., texts=...)`` with the library's defaults; refits at 200, 400, 800,
then every 500 traces (the library's default policy). Prints one JSON line: whole-stream and
last-quarter local share, agreement of local answers and the coverage of 20 windows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tracer_wrap import Embedder
from tracer_wrap.errors import GateRefused
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import banking77_ambiguity, load_banking77
from tracer_wrap.lab.simulate import simulate
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours
from tracer_wrap.model.fit import default_calibration_fraction, fit_router
from tracer_wrap.model.router import Router

CACHE = Path(__file__).resolve().parents[1] / "out" / "embeddings"
DELTA = 0.05


def refit_points(n: int, first: int = 200, every: int = 500) -> set[int]:
    points, at = set(), first
    while at < n:
        points.add(at)
        at = at * 2 if at < every else at + every
    return points


class Stream:
    def __init__(self, teacher: str, seed: int) -> None:
        train, test = load_banking77("train"), load_banking77("test")
        rows = train + test
        vectors = embed_cached(Embedder.default(), [t for t, _ in rows], CACHE)
        rng = np.random.default_rng(seed)
        order = ([int(i) for i in rng.permutation(len(train))]
                 + [len(train) + int(i) for i in rng.permutation(len(test))])
        llm = SimulatedLLM(load_banking77_neighbours(), error_rate=0.15, seed=seed,
                           ambiguity=banking77_ambiguity())
        self.texts = [rows[i][0] for i in order]
        self.X = np.asarray(vectors)[order]
        self.y = [rows[i][1] if teacher == "gold" else llm.label_for(*rows[i]) for i in order]
        self.all_texts, self.all_vectors = [t for t, _ in rows], vectors

    def __len__(self) -> int:
        return len(self.texts)


def chain_decide(chain: list[Router], stream: Stream, idx: np.ndarray
                 ) -> tuple[np.ndarray, list[str | None]]:
    """Local flags and answers of ``chain`` (first stage that accepts) for rows ``idx``."""
    local = np.zeros(len(idx), dtype=bool)
    labels: list[str | None] = [None] * len(idx)
    rest = np.arange(len(idx))
    for router in chain:
        if not len(rest):
            break
        top, _, ok = router.decide([stream.texts[i] for i in idx[rest]], stream.X[idx[rest]])
        for j, label in zip(rest[ok], top[ok]):
            labels[j] = router.labels[label]
        local[rest[ok]] = True
        rest = rest[~ok]
    return local, labels


def fit(stream: Stream, idx: np.ndarray, eligible: np.ndarray, target: float, delta: float
        ) -> Router | None:
    """A router fitted on ``idx``, calibrating on the ``eligible`` ones at the library's share."""
    share = default_calibration_fraction(len(idx))
    try:
        router = fit_router(stream.X[idx], [stream.y[i] for i in idx],
                            texts=[stream.texts[i] for i in idx], targets=(target,),
                            serve_target=target, delta=delta,
                            calibration_fraction=np.where(eligible, share, 0.0))
    except GateRefused:
        return None
    return router if router.certificate_for(target).threshold is not None else None


def fit_split(stream: Stream, train: np.ndarray, cal: np.ndarray, target: float
              ) -> Router | None:
    """A router fitted on rows ``train`` alone and certified on rows ``cal`` alone, by
    ``fit_router`` itself (out-of-fold reference data, as the oracle): its calibration coin is
    forced to pick exactly ``cal`` (an experiment-only patch of the coin's generator)."""
    import tracer_wrap.model.fit as fit_module

    rows = np.concatenate([train, cal])
    forced = np.concatenate([np.ones(len(train)), np.zeros(len(cal))])
    real = np.random.default_rng

    class Coin:
        def __init__(self, inner: np.random.Generator) -> None:
            self.inner, self.used = inner, False

        def random(self, size: int | None = None, **kwargs: object) -> object:
            if not self.used and size == len(rows) and not kwargs:
                self.used = True
                return forced
            return self.inner.random(size, **kwargs)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    def first_call(seed: object = None) -> object:
        # fit_router's own generator is the first one it makes (its calibration coin is its
        # first draw); every later caller gets numpy's.
        fit_module.np.random.default_rng = real
        return Coin(real(seed))  # type: ignore[arg-type]

    fit_module.np.random.default_rng = first_call  # type: ignore[assignment]
    try:
        router = fit_router(stream.X[rows], [stream.y[i] for i in rows],
                            texts=[stream.texts[i] for i in rows], targets=(target,),
                            serve_target=target, delta=DELTA, calibration_fraction=0.3)
    except GateRefused:
        return None
    finally:
        fit_module.np.random.default_rng = real  # type: ignore[assignment]
    assert router.info["n_calibration"] == len(cal)
    return router if router.certificate_for(target).threshold is not None else None


def run_split_arms(stream: Stream, arm: str, target: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    n = len(stream)
    points = refit_points(n)
    coins = np.random.default_rng(2000 + seed)
    audit = np.random.default_rng(1000 + seed)
    calibrates = coins.random(n) < 0.3
    known = np.zeros(n, dtype=bool)  # reached the LLM under the served router
    router: Router | None = None
    local = np.zeros(n, dtype=bool)
    agree = np.zeros(n, dtype=bool)
    for row in range(n):
        if row in points:
            seen = np.arange(row)
            train = seen[~calibrates[:row] & (known[:row] if arm == "train-known" else True)]
            fitted = fit_split(stream, train, seen[calibrates[:row]], target)
            router = fitted if fitted is not None else router
        answered, labels = (chain_decide([router], stream, np.array([row])) if router
                            else (np.zeros(1, dtype=bool), [None]))
        if answered[0] and audit.random() >= 0.02:
            local[row], agree[row] = True, labels[0] == stream.y[row]
        else:
            known[row] = True
    return local, agree


def run_model_arms(stream: Stream, arm: str, target: float, audit_rate: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    n = len(stream)
    points = refit_points(n)
    audit = np.random.default_rng(1000 + seed)
    chain: list[Router] = []
    chain_id = 0
    prefixes: dict[int, set[int]] = {0: set()}  # chain id -> ids of the chains it extends
    known: list[tuple[int, int]] = []  # (row, id of the chain serving when it reached the LLM)
    local = np.zeros(n, dtype=bool)
    agree = np.zeros(n, dtype=bool)
    for row in range(n):
        if row in points and known:
            idx = np.array([k[0] for k in known])
            if arm == "oracle":
                router = fit(stream, idx, np.ones(len(idx), dtype=bool), target, DELTA)
                chain = [router] if router is not None else chain
            else:
                period = np.array([k[1] == chain_id or k[1] in prefixes[chain_id]
                                   for k in known])
                deferred = ~chain_decide(chain, stream, idx)[0]
                router = fit(stream, idx, period & deferred, target,
                             DELTA / 2 ** (len(chain) + 1))
                if router is not None:
                    prefixes[chain_id + 1] = prefixes[chain_id] | {chain_id}
                    chain, chain_id = [*chain, router], chain_id + 1
        answered, labels = (chain_decide(chain, stream, np.array([row])) if chain
                            else (np.zeros(1, dtype=bool), [None]))
        if arm == "oracle":
            known.append((row, chain_id))
            local[row], agree[row] = answered[0], answered[0] and labels[0] == stream.y[row]
        elif answered[0] and audit.random() >= audit_rate:
            local[row], agree[row] = True, labels[0] == stream.y[row]
        else:  # deferred, or an audit sample
            known.append((row, chain_id))
    return local, agree


def run_replay(stream: Stream, target: float, audit_rate: float | None, seed: int,
               audit_early: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    embedder = Embedder.precomputed(dict(zip(stream.all_texts, stream.all_vectors)),
                                    name="all-MiniLM-L6-v2")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.jsonl"
        path.write_text("".join(json.dumps({"input": t, "teacher": y}) + "\n"
                                for t, y in zip(stream.texts, stream.y)), encoding="utf-8")
        rate: object = 0.02 if audit_rate is None else (lambda _n: audit_rate)
        if audit_early is not None:
            # The library's rate, raised to audit_early / n_calibration (at most 0.25) while
            # the served version's calibration set is small.
            from tracer_wrap.serving import AUDIT_FLOOR_SHARE, AUDIT_REFERENCE

            def rate(n: int) -> float:
                base = 0.02 * max(AUDIT_FLOOR_SHARE, (AUDIT_REFERENCE / max(n, AUDIT_REFERENCE))
                                  ** 0.5)
                return max(base, min(0.25, audit_early / max(n, 1)))
        result = simulate(path, target=target, embedder=embedder, seed=seed,
                          audit_rate=rate, curve_points=len(stream))  # type: ignore[arg-type]
    curve = result["curve"]
    local = np.array([p["window_coverage"] > 0 for p in curve])
    agree = np.array([p["window_agreement"] == 1.0 for p in curve])
    return local, agree


def figures(local: np.ndarray, agree: np.ndarray) -> dict[str, object]:
    """Whole-stream and last-quarter local share (percent), agreement of the local answers and
    the local share of 20 windows."""
    n, window = len(local), len(local) // 20
    return {
        "whole": round(100 * local.mean(), 1),
        "last_quarter": round(100 * local[-(n // 4):].mean(), 1),
        "agreement": round(float(agree[local].mean()), 4) if local.any() else None,
        "windows": [round(100 * local[i:i + window].mean()) for i in range(0, 20 * window, window)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", default="oracle",
                        choices=("oracle", "cascade", "replay", "train-all", "train-known"))
    parser.add_argument("--teacher", choices=("gold", "sim"), default="gold")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit-early", type=float, default=None,
                        help="replay: audit at audit_early / n_calibration (<= 0.25) when higher")
    parser.add_argument("--audit-rate", type=float, default=None,
                        help="constant audit rate (default: 0.02, falling as in the library)")
    args = parser.parse_args()
    stream = Stream(args.teacher, args.seed)
    started = time.perf_counter()
    if args.arm == "replay":
        local, agree = run_replay(stream, args.target, args.audit_rate, args.seed,
                                  args.audit_early)
    elif args.arm.startswith("train-"):
        local, agree = run_split_arms(stream, args.arm, args.target, args.seed)
    else:
        local, agree = run_model_arms(stream, args.arm, args.target,
                                      0.02 if args.audit_rate is None else args.audit_rate,
                                      args.seed)
    print(json.dumps({
        "arm": args.arm, "teacher": args.teacher, "target": args.target, "seed": args.seed,
        "audit_rate": args.audit_rate, "audit_early": args.audit_early,
        **figures(local, agree),
        "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
