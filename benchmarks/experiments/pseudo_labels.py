"""Does training on the served version's own local answers raise live coverage (issue 13)?

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/pseudo_labels.py
        [--teacher gold|sim] [--target 0.95] [--seed 0] [--pseudo]

Replays the Banking77 stream of ``flywheel_ceiling.py`` through the production
``@traced_classifier`` (as ``simulate`` does, refits inline). With ``--pseudo``, every local
answer is also written to the store as a training-only trace (the surrogate's label, not
exchangeable, no routing record: :func:`tracer_wrap.refit.calibration_chances` gives it chance 0,
so it never calibrates and the gate's test is untouched). The question: a refit after a version
serves trains only on what reached the LLM (the deferred, hard inputs and a few audits), while a
static fit trains on every input; do the easy inputs, labelled by the certified surrogate, help?
Prints one JSON line like ``flywheel_ceiling.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flywheel_ceiling import Stream, figures  # noqa: E402

from tracer_wrap import Embedder, traced_classifier  # noqa: E402
from tracer_wrap.lab.simulate import scratch_store  # noqa: E402
from tracer_wrap.store import NewTrace, open_store  # noqa: E402


def replay(stream: Stream, target: float, seed: int, pseudo: bool) -> tuple[np.ndarray, ...]:
    embedder = Embedder.precomputed(dict(zip(stream.all_texts, stream.all_vectors)),
                                    name="all-MiniLM-L6-v2")
    answer = [""]
    calls = [0]

    def teacher(text: str) -> str:
        calls[0] += 1
        return answer[0]

    n = len(stream)
    local = np.zeros(n, dtype=bool)
    agree = np.zeros(n, dtype=bool)
    with scratch_store("tracer_wrap-pseudo-") as tmp:
        store = open_store(tmp)
        classify = traced_classifier(
            task="pseudo", store=store, embedder=embedder, target=target, min_traces=200,
            refit_every=500, audit_rate=0.02, refit_executor="inline", rng=random.Random(seed),
            keep_versions=10_000)(teacher)
        for i, (text, label) in enumerate(zip(stream.texts, stream.y)):
            answer[0] = label
            before = calls[0]
            out = classify(text)
            if calls[0] == before:
                local[i], agree[i] = True, out == label
                if pseudo:
                    store.append_many("pseudo", [NewTrace(text, out, exchangeable=False)])
        classify.task.close(wait=True)
    return local, agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=("gold", "sim"), default="gold")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pseudo", action="store_true")
    args = parser.parse_args()
    stream = Stream(args.teacher, args.seed)
    started = time.perf_counter()
    local, agree = replay(stream, args.target, args.seed, args.pseudo)
    print(json.dumps({
        "pseudo": args.pseudo, "teacher": args.teacher, "target": args.target, "seed": args.seed,
        **figures(local, agree), "seconds": round(time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
