"""Build ``tracer_wrap/data/banking77_neighbours.json``: each intent's 3 most confusable intents.

Confusability of intent ``i`` towards ``j`` is the mean out-of-fold probability that a 5-fold
cross-validated logistic regression on MiniLM sentence embeddings of the Banking77 *train* split
gives to ``j`` for queries whose gold label is ``i`` (a soft confusion matrix: dense, so every
intent gets a ranking, and hard confusions dominate it). Ties and intents the classifier never
confuses fall back to cosine similarity between class centroids.

Run once: ``python benchmarks/make_neighbours.py`` (needs ``/work/cache/b77_train.npz`` with keys
``X`` (L2-normalised embeddings) and ``y`` (gold labels)).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tracer_wrap" / "data" / "banking77_neighbours.json"
K = 3


def soft_confusion(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    """Row-normalised mean out-of-fold class probabilities per gold class."""
    oof = np.zeros((len(y), n_classes))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        clf = LogisticRegression(C=10.0, max_iter=300).fit(X[tr], y[tr])
        oof[te] = clf.predict_proba(X[te])
    conf = np.zeros((n_classes, n_classes))
    np.add.at(conf, y, oof)
    return conf / conf.sum(axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache", default="/work/cache/b77_train.npz")
    ap.add_argument("--categories", default="/work/shared/data/banking77/categories.json")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    names: list[str] = json.loads(Path(args.categories).read_text())
    data = np.load(args.cache, allow_pickle=False)
    index = {n: i for i, n in enumerate(names)}
    X = data["X"].astype(np.float64)
    y = np.array([index[str(v)] for v in data["y"]])
    n = len(names)

    conf = soft_confusion(X, y, n)
    cent = np.stack([X[y == c].mean(axis=0) for c in range(n)])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    cos = cent @ cent.T
    out: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        # Lexicographic key: soft confusion first, centroid cosine breaks ties / fills zeros.
        score = conf[i] + 1e-6 * cos[i]
        score[i] = -np.inf
        top = np.argsort(-score)[:K]
        out[name] = [names[j] for j in top]
        print(f"{name:45s} -> " + ", ".join(f"{names[j]} ({conf[i, j]:.3f})" for j in top))
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
