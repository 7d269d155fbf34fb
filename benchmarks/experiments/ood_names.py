"""How the name check of the OOD check was chosen (issue 13): label names against held-out intents.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/ood_names.py

The draws of ``benchmarks/bench_ood.py`` (Banking77, 10 intents held out of the train split, the
fused router at 0.95 routes the test split, no other OOD check). For each draw, each way of
embedding a label's name (the plain name, or a sentence around it) and each view of an input
(its embedding mixed with its ridge projection onto its label's name embedding, at penalty
``alpha`` and projection share ``mix``; share 0 is the raw embedding), the score is the input's
similarity to the nearest held-out label's name minus that to the answered label's name. Prints
the score's AUROC (held-out against the other intents' locally answered queries) and, at the 1%
and 2% out-of-fold cuts of the training traces, held-out local / other coverage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from tracer_wrap import Embedder
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.ood import name_text

CACHE = Path(__file__).resolve().parents[1] / "out" / "embeddings"
TEMPLATES = ("{}", "a question about {}", "a bank customer asks about {}")
VIEWS = ((1.0, 0.0), (1.0, 0.5), (10.0, 0.5), (100.0, 0.5), (1.0, 1.0), (10.0, 1.0))


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def projection(X: np.ndarray, Y: np.ndarray, alpha: float) -> np.ndarray:
    return np.linalg.solve(X.T @ X + alpha * np.eye(X.shape[1]), X.T @ Y)


def margins(X: np.ndarray, answers: np.ndarray, names: np.ndarray, W: np.ndarray, mix: float,
            unseen: list[int]) -> np.ndarray:
    view = unit(mix * unit(X @ W) + (1 - mix) * X) if mix > 0 else X
    sims = view @ names.T
    return sims[:, unseen].max(axis=1) - sims[np.arange(len(X)), answers]


def main() -> None:
    embedder = Embedder.default()
    train, test = load_banking77("train"), load_banking77("test")
    vectors = embed_cached(embedder, [t for t, _ in train + test], CACHE)
    X_train, X_test = vectors[:len(train)], vectors[len(train):]
    y_train, y_test = np.array([y for _, y in train]), np.array([y for _, y in test])
    labels = sorted(set(y_train))
    index = {k: i for i, k in enumerate(labels)}
    named = {tpl: unit(np.asarray(embedder.embed([tpl.format(name_text(k)) for k in labels])))
             for tpl in TEMPLATES}
    for draw in range(3):
        held = set(np.random.default_rng(draw).choice(labels, 10, replace=False))
        keep = np.array([y not in held for y in y_train])
        novel = np.array([y in held for y in y_test])
        router = fit_router(X_train[keep], y_train[keep], serve_target=0.95, targets=(0.95,),
                            texts=[t for (t, _), k in zip(train, keep) if k])
        decisions = router.route_many([t for t, _ in test], X_test)
        local = np.array([d.local for d in decisions])
        answers = np.array([index[d.label] for d in decisions])
        unseen = [index[k] for k in sorted(held)]
        X, y = X_train[keep], np.array([index[k] for k in y_train[keep]])
        half = np.random.default_rng(0).permutation(len(X)) % 2 == 0
        print(f"draw {draw}: no check {local[novel].mean():.3f} / {local[~novel].mean():.3f}")
        for tpl, names in named.items():
            for alpha, mix in VIEWS:
                oof = np.empty(len(X))
                for fold in (half, ~half):
                    W = projection(X[~fold], names[y[~fold]], alpha)
                    oof[fold] = margins(X[fold], y[fold], names, W, mix, unseen)
                W = projection(X, names[y], alpha)
                score = margins(X_test, answers, names, W, mix, unseen)
                cells = []
                for q in (0.01, 0.02):
                    kept = local & (score <= np.quantile(oof, 1 - q))
                    cells.append(f"{q:.0%}: {kept[novel].mean():.3f} / {kept[~novel].mean():.3f}")
                auroc = roc_auc_score(novel[local], score[local])
                print(f"  {tpl!r:34} alpha {alpha:<5} mix {mix:<4} AUROC {auroc:.3f}  "
                      + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
