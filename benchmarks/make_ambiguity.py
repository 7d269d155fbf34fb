"""Adds an ``ambiguity`` column to the packaged Banking77 copy: 1 - P(gold intent) from a
5-fold cross-validated logistic regression on MiniLM embeddings.

The simulated LLM teacher concentrates its mistakes on ambiguous queries, as a real LLM does.
Run once: ``python benchmarks/make_ambiguity.py`` (embeds all 13,083 queries with MiniLM).
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from tracer_wrap.model.embedder import Embedder

PATH = Path(__file__).resolve().parents[1] / "tracer_wrap" / "data" / "banking77.csv.gz"


def main() -> None:
    with gzip.open(PATH, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    X = Embedder.default().embed([r["text"] for r in rows])
    y = np.array([r["category"] for r in rows])
    proba = cross_val_predict(LogisticRegression(C=10, max_iter=500), X, y, cv=5,
                              method="predict_proba")
    classes = np.unique(y)
    p_gold = proba[np.arange(len(y)), np.searchsorted(classes, y)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "text", "category", "ambiguity"])
    for row, p in zip(rows, p_gold):
        writer.writerow([row["split"], row["text"], row["category"], f"{1 - p:.4f}"])
    with gzip.open(PATH, "wt", encoding="utf-8", newline="") as f:
        f.write(buffer.getvalue())


if __name__ == "__main__":
    main()
