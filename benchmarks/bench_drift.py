"""New intents arriving: how fast the engine reacts, at the default 2% audit rate.

Banking77 train split (MiniLM embeddings, cached in ``--cache``): 50 intents drawn at random
make up the first 3,000 rows; then 3,000 rows mix those intents with the 27 never seen, half and
half, replayed by `tracer-wrap simulate` (refit every 500 traces, inline). Run three ways: as
shipped (an LLM label the served version never saw starts a refit at once and counts as a
disagreement for the drift breaker when the version deferred the input); the same with the task
declaring all 77 intents (the OOD check's name check then defers inputs nearer a never-seen
intent's name than to the answer's); and with the unseen-label signal switched off (only the
every-500 policy and audit samples feed the breaker). Prints, per window of 300 rows, the
coverage, the agreement of local answers and the version served.

    .venv/bin/python benchmarks/bench_drift.py [--audit-rate 0.02] [--seed S] [--shipped-only]

``--seed`` draws other intents and another order (and audit draws); ``--shipped-only`` runs the
first way alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from tracer_wrap import Embedder
from tracer_wrap.engine import TracedTask
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.lab.simulate import simulate
from tracer_wrap.model.ood import name_text

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--audit-rate", type=float, default=0.02)
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shipped-only", action="store_true")
    args = parser.parse_args()
    train, test = load_banking77("train"), load_banking77("test")
    vectors = embed_cached(Embedder.default(), [t for t, _ in train + test], args.cache)
    texts = np.array([t for t, _ in train])
    y = np.array([label for _, label in train])
    rng = np.random.default_rng(args.seed)
    labels = sorted(set(y))
    rng.shuffle(labels)
    old = set(labels[:50])
    perm = rng.permutation(len(y))
    seen = [i for i in perm if y[i] in old]
    new = [i for i in perm if y[i] not in old]
    rows = seen[:3000] + list(rng.permutation(seen[3000:4500] + new[:1500]))
    table = dict(zip(texts.tolist(), vectors[:len(train)]))
    names = [name_text(k) for k in sorted(set(y))]
    table.update(zip(names, Embedder.default().embed(names)))
    emb = Embedder.precomputed(table)
    note = TracedTask._note_unseen_label
    arms = (("unseen label refits at once", True, None),
            ("the same, the 77 labels declared", True, sorted(set(y))),
            ("signal off", False, None))[:1 if args.shipped_only else 3]
    with tempfile.TemporaryDirectory() as tmp:
        stream = Path(tmp) / "shift.jsonl"
        stream.write_text("".join(json.dumps({"input": texts[i], "teacher": y[i]}) + "\n"
                                  for i in rows))
        for name, signal, declared in arms:
            TracedTask._note_unseen_label = note if signal else (  # type: ignore[method-assign]
                lambda self, plan, label: "known")
            r = simulate(stream, target=0.95, refit_every=500, embedder=emb,
                         audit_rate=args.audit_rate, curve_points=20, labels=declared,
                         seed=args.seed,
                         store=Path(tmp) / name.replace(" ", "-").replace(",", ""))
            after = [p for p in r["curve"] if p["n"] > 3000]
            local = sum(p["window_coverage"] for p in after)
            agree = sum(p["window_coverage"] * (p["window_agreement"] or 0) for p in after)
            print(f"{name}: {r['refits']} refits, {r['breaker_trips']} breaker trips,"
                  f" {r['audit_calls']} audits; after the shift: coverage {local / len(after):.3f},"
                  f" agreement of local answers {agree / local if local else float('nan'):.3f}")
            print("  window coverage:  " + " ".join(f"{p['window_coverage']:.2f}"
                                                    for p in r["curve"]))
            print("  window agreement: " + " ".join(f"{p['window_agreement'] or 0:.2f}"
                                                    for p in r["curve"]))
            print("  version served:   " + " ".join(str(p["version"]) for p in r["curve"]))
    TracedTask._note_unseen_label = note  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
