"""Held-out intents: how many queries of intents the router never saw are answered locally.

Banking77, gold labels: for each of ``--draws`` random draws, 10 intents are held out of the train
split, a router is fitted on the rest (fused model, target 0.95) and the whole test split is routed
with no OOD check, with the earlier checks (similarity to the nearest label centroid, 1% quantile;
the label prototypes alone) and with the current one (:mod:`tracer_wrap.model.ood`: prototypes
and, as the task declares all 77 labels, the name check; at the default ``ood_quantile`` 0.02 the
two share it, 0.01 each), at twice that quantile, and with the name check alone. Prints, per draw
and check, the share of held-out intents' queries answered locally, coverage of the other intents
and agreement on local answers, then the time to score one call.

    .venv/bin/python benchmarks/bench_ood.py [--draws 3] [--held-out 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tracer_wrap import Embedder
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.ood import OODScorer, fit_ood, name_text

HERE = Path(__file__).resolve().parent


def centroid_check(X: np.ndarray, y: np.ndarray, quantile: float = 0.01) -> OODScorer:
    """The earlier OOD check: nearest label centroid, cut at the out-of-fold quantile."""
    def centroids(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        c = np.stack([rows[labels == k].mean(axis=0) for k in np.unique(labels)])
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    half = np.random.default_rng(0).permutation(len(X)) % 2 == 0
    oof = np.empty(len(X))
    for fold in (half, ~half):
        oof[fold] = OODScorer(centroids(X[~fold], y[~fold]), 0.0).scores(X[fold])
    return OODScorer(centroids(X, y), float(np.quantile(oof, quantile)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "embeddings")
    args = parser.parse_args()
    train, test = load_banking77("train"), load_banking77("test")
    # The same cache key as bench_simulate.py: train then test, one embedding run for both.
    vectors = embed_cached(Embedder.default(), [t for t, _ in train + test], args.cache)
    X_train, X_test = vectors[:len(train)], vectors[len(train):]
    y_train = np.array([y for _, y in train])
    y_test = np.array([y for _, y in test])
    texts_train, texts_test = [t for t, _ in train], [t for t, _ in test]
    labels = sorted(set(y_train))
    names = dict(zip(labels, Embedder.default().embed([name_text(k) for k in labels])))
    print(f"{'draw':>4} {'OOD check':<22} {'held-out local':>14} {'other coverage':>14}"
          f" {'local agreement':>15}")
    timing: OODScorer | None = None
    for draw in range(args.draws):
        held = set(np.random.default_rng(draw).choice(labels, args.held_out, replace=False))
        keep = np.array([y not in held for y in y_train])
        novel = np.array([y in held for y in y_test])
        router = fit_router(X_train[keep], y_train[keep], serve_target=args.target,
                            targets=(args.target,),
                            texts=[t for t, k in zip(texts_train, keep) if k])
        decisions = router.route_many(texts_test, X_test)
        local = np.array([d.local for d in decisions])
        answers = np.array([d.label for d in decisions], dtype=object)
        X_keep, y_keep = X_train[keep], y_train[keep]
        checks = {"none": None, "centroid, q=0.01": centroid_check(X_keep, y_keep),
                  "prototypes, q=0.02": fit_ood(X_keep, y_keep),
                  "names alone, q=0.02": fit_ood(X_keep, y_keep, names=names, quantile=0.04),
                  "both, q=0.01 each": fit_ood(X_keep, y_keep, names=names),
                  "both, q=0.02 each": fit_ood(X_keep, y_keep, names=names, quantile=0.04)}
        for name, check in checks.items():
            kept = local.copy()
            if check is not None and name.startswith("names alone"):
                assert check.names is not None
                kept &= check.names.margins(X_test, answers.tolist()) <= check.names.cut
            elif check is not None:
                kept &= np.array([v is None for v in check.vetoes(X_test, answers.tolist())])
            agree = (answers == y_test)[kept].mean()
            print(f"{draw:>4} {name:<22} {kept[novel].mean():>14.3f} {kept[~novel].mean():>14.3f}"
                  f" {agree:>15.4f}")
        timing = checks["both, q=0.01 each"]
    assert timing is not None
    one = X_test[0]
    started = time.perf_counter()
    for _ in range(2000):
        timing.is_outlier(one, str(answers[0]))
    print(f"scoring one call: {1e6 * (time.perf_counter() - started) / 2000:.0f} us"
          f" ({len(timing.prototypes)} prototypes)")


if __name__ == "__main__":
    main()
