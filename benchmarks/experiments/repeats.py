"""Does the guarantee hold per *call* when traffic repeats inputs? Banking77 replays with Zipf
repeats.

The store keys traces by distinct input (a repeat bumps ``count`` and the label tally) and a
trace's calibration coin is fixed by its sequence number, i.e. by the input's first occurrence;
the stored ``exchangeable`` / ``served_version`` / ``audit_p`` are those of the first occurrence
too. So the gate's calibration set is a draw of *first occurrences*, each counted once, while the
README states the claim on traffic. This experiment replays streams whose calls repeat inputs and
measures the local answers per call and per distinct input.

Streams (``--calls`` calls, default 13,083 = the number of distinct Banking77 texts):

* ``zipf``: each call is an i.i.d. draw from the 13,083 distinct texts with Zipf weights
  ``rank ** -exponent`` (default 1.1), the ranks a random permutation of the texts per seed. The
  stream is stationary and i.i.d. per call: exactly the gate's assumption, stated on calls.
  Teachers: ``gold`` and ``simulated-llm`` (SimulatedLLM as bench_simulate.py builds it, seeded
  by the replay's seed; a repeated text always gets the same answer).
* ``adversarial``: the same, with the texts at ranks ``--adv-ranks`` (default 3-7: each 1.8-4.5%
  of calls, together 14%) replaced by texts that a surrogate fitted on the rest confidently
  labels otherwise than the teacher (gold): per seed, ``len(adv-ranks)`` drawn from the pool of
  the ``--adv-pool`` texts with the highest probability of a wrong label under a logistic
  regression on the MiniLM vectors of the other texts (among the 300 most ambiguous texts of
  ``banking77_ambiguity``). A realistic shape: a few canned queries that the LLM (knowing the
  business) reads differently from their wording.

Each stream is replayed through the real ``@traced_classifier`` with the options of
``tracer_wrap.lab.simulate`` (inline refits, seeded audit draws, precomputed MiniLM vectors from
``benchmarks/out/embeddings`` through ``embed_cached``): the loop is ``simulate._replay``'s, with
the outcome of every call kept, so per-input figures can be computed. Per replay: share of calls
answered locally, agreement of the local answers per call and per distinct input (each input
answered locally at least once weighs 1, by the share of its local answers that agree), the
one-sided binomial p of "per-call agreement below target" (P(Binomial(local, t) <= agreeing)),
audits (and how many were of an input already traced: those bump a count, they add no
calibration trace), breaker trips and calls deferred by a tripped breaker, and for the 10 most
frequent inputs their calls, local calls, local agreement and what the store holds of them
(count, whether the final history would calibrate on them).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiments/repeats.py \
        --seeds 0 1 2 3 4 5 --json benchmarks/results/repeats_<date>.json

One replay at a time, in this process (no worker pool). Results are rewritten after each replay.
Measured 2026-12-05 at commit 3ede6b0: benchmarks/results/repeats_2026-12-05.json (9 seeds x 3
arms at 13,083 calls, and 2 adversarial seeds at 30,000 calls); about 25-70 s of CPU a replay.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tracer_wrap import Embedder, names
from tracer_wrap.decorator import traced_classifier
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import banking77_ambiguity, load_banking77
from tracer_wrap.lab.simulate import scratch_store
from tracer_wrap.lab.simulated_llm import SimulatedLLM, load_banking77_neighbours
from tracer_wrap.refit import calibration_chances, calibration_coins
from tracer_wrap.store import open_store

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
CREDIBLY = 0.05
TOP = 10  # most frequent inputs reported one by one


# -- data -------------------------------------------------------------------------------------

def banking77() -> tuple[list[str], list[str], Embedder, np.ndarray]:
    """Distinct texts, their gold labels, the precomputed embedder and the vectors (from the
    cache bench_simulate.py fills: same texts, same order, so nothing is embedded again)."""
    train, test = load_banking77("train"), load_banking77("test")
    pairs = train + test
    vectors = embed_cached(Embedder.default(), [t for t, _ in pairs], BENCH / "out" / "embeddings")
    table: dict[str, np.ndarray] = {}
    gold: dict[str, str] = {}
    for (text, label), v in zip(pairs, vectors):
        if text not in table:  # a text listed twice keeps its first label
            table[text] = v
            gold[text] = label
    texts = list(table)
    return (texts, [gold[t] for t in texts],
            Embedder.precomputed(table, name="all-MiniLM-L6-v2"),
            np.stack([table[t] for t in texts]))


def adversarial_pool(texts: list[str], golds: list[str], X: np.ndarray, size: int
                     ) -> list[dict[str, Any]]:
    """The ``size`` texts a surrogate fitted without them most confidently labels otherwise
    than gold: among the 300 most ambiguous texts (banking77_ambiguity), the probability of the
    top wrong label under a logistic regression on the MiniLM vectors of every other text."""
    from sklearn.linear_model import LogisticRegression

    amb = banking77_ambiguity()
    cand = sorted(range(len(texts)), key=lambda i: -amb.get(texts[i], 0.0))[:300]
    cand_set = set(cand)
    rest = [i for i in range(len(texts)) if i not in cand_set]
    y = np.asarray(golds, dtype=object)
    model = LogisticRegression(C=10.0, max_iter=300).fit(X[rest], y[rest])
    classes = list(model.classes_)
    out = []
    for i, p in zip(cand, model.predict_proba(X[cand])):
        order = np.argsort(-p)
        wrong = next(j for j in order if classes[j] != golds[i])
        out.append({"text": texts[i], "teacher": golds[i],
                    "surrogate_says": str(classes[wrong]), "p_wrong_label": float(p[wrong]),
                    "p_teacher_label": float(p[classes.index(golds[i])])
                    if golds[i] in classes else 0.0,
                    "ambiguity": amb.get(texts[i], 0.0)})
    out.sort(key=lambda r: -r["p_wrong_label"])
    return out[:size]


def stream(variant: str, teacher: str, seed: int, texts: list[str], golds: list[str],
           calls: int, exponent: float, pool: list[dict[str, Any]], adv_ranks: list[int]
           ) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The calls ``(text, teacher label)`` of one replay, and the adversarial texts placed."""
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(texts)))
    placed: list[dict[str, Any]] = []
    if variant == "adversarial":
        index = {t: i for i, t in enumerate(texts)}
        picks = rng.choice(len(pool), size=len(adv_ranks), replace=False)
        for rank, k in zip(adv_ranks, picks):
            i = index[pool[k]["text"]]
            j = order.index(i)
            order[j], order[rank - 1] = order[rank - 1], order[j]
            placed.append({**pool[k], "rank": rank})
    weights = np.arange(1, len(texts) + 1, dtype=np.float64) ** -exponent
    weights /= weights.sum()
    draws = rng.choice(len(texts), size=calls, p=weights)
    llm = SimulatedLLM(load_banking77_neighbours(), error_rate=0.15, seed=seed,
                       ambiguity=banking77_ambiguity())
    rows = []
    for r in draws:
        i = order[r]
        label = golds[i] if teacher == "gold" else llm.label_for(texts[i], golds[i])
        rows.append((texts[i], label))
    for p in placed:
        p["share_of_calls"] = float(weights[p["rank"] - 1])
    return rows, placed


# -- one replay ---------------------------------------------------------------------------------

def replay(rows: list[tuple[str, str]], embedder: Embedder, *, target: float, seed: int,
           refit_every: int = 500, min_traces: int = 200, audit_rate: float = 0.02
           ) -> dict[str, Any]:
    """``tracer_wrap.lab.simulate._replay``'s loop and options, every call's outcome kept."""
    answer = [""]
    llm_calls = [0]

    def teacher(text: str) -> str:
        llm_calls[0] += 1
        return answer[0]

    per_input: dict[str, dict[str, int]] = defaultdict(lambda: Counter())  # type: ignore[arg-type]
    traced_inputs: set[str] = set()  # inputs that reached the LLM at least once (have a trace)
    audits_repeat = audits_new = 0
    local = agree = 0
    curve = []
    step = max(1, len(rows) // 10)
    with scratch_store("tracer_wrap-repeats-") as tmp:
        store = open_store(tmp)
        classify = traced_classifier(
            task="repeats", labels=None, target=target, store=store, embedder=embedder,
            min_traces=min_traces, refit_every=refit_every, audit_rate=audit_rate,
            refit_executor="inline", rng=random.Random(seed), keep_versions=10_000)(teacher)
        task = classify.task
        stats = task.stats
        w_local = w_agree = 0
        for n, (text, label) in enumerate(rows, 1):
            answer[0] = label
            before, audits_before = llm_calls[0], stats.audits
            out = classify(text)
            c = per_input[text]
            c["calls"] += 1
            if llm_calls[0] == before:
                ok = out == label
                local += 1
                agree += ok
                w_local += 1
                w_agree += ok
                c["local"] += 1
                c["agree"] += ok
            else:
                if stats.audits > audits_before:
                    c["audits"] += 1
                    if text in traced_inputs:
                        audits_repeat += 1
                    else:
                        audits_new += 1
                traced_inputs.add(text)
            if n % step == 0 or n == len(rows):
                curve.append({"n": n, "window_local": w_local,
                              "window_agreement": w_agree / w_local if w_local else None,
                              "version": task.version,
                              "tripped": store.counter("repeats", "breaker_trips")})
                w_local = w_agree = 0
        task.close(wait=True)
        result = {
            "calls": len(rows), "distinct_inputs": len(per_input),
            "llm_calls": llm_calls[0], "local": local, "local_share": local / len(rows),
            "agreement_per_call": agree / local if local else None,
            "refits": store.counter("repeats", "refits"),
            "breaker_trips": store.counter("repeats", "breaker_trips"),
            "deferred_by_breaker": stats.breaker, "audits": stats.audits,
            "audits_of_traced_input": audits_repeat, "audits_of_new_input": audits_new,
            "dropped": stats.dropped, "final_version": task.version, "curve": curve,
        }
        # What the store holds: distinct traces, their counts, and which would calibrate now.
        traces = list(store.iter_traces("repeats", valid_only=True))
        after_seq = int(store.get_setting("repeats", names.SETTING_CALIBRATE_AFTER, 0) or 0)
        chances = calibration_chances(traces, after_seq)
        coins = calibration_coins(np.array([t.seq for t in traces]))
        cal = coins < chances
        by_input = {t.input: (t, bool(k)) for t, k in zip(traces, cal)}
        result["traces"] = len(traces)
        result["calibration_traces_final"] = int(cal.sum())
        result["calls_behind_calibration_traces"] = int(sum(t.count for t, k in zip(traces, cal)
                                                            if k))
    # Per distinct input: each input answered locally at least once weighs 1.
    shares = [c["agree"] / c["local"] for c in per_input.values() if c["local"]]
    result["inputs_answered_locally"] = len(shares)
    result["agreement_per_input"] = float(np.mean(shares)) if shares else None
    top = sorted(per_input.items(), key=lambda kv: -kv[1]["calls"])[:TOP]
    result["top_inputs"] = []
    for text, c in top:
        trace, calibrates = by_input.get(text, (None, False))
        result["top_inputs"].append({
            "text": text, "calls": c["calls"], "local": c["local"],
            "local_agreement": c["agree"] / c["local"] if c["local"] else None,
            "audits": c["audits"],
            "trace_count": trace.count if trace else 0,
            "first_seen_while_version_answered": (trace.served_version is not None
                                                  if trace else None),
            "exchangeable": trace.exchangeable if trace else None,
            "calibrates_in_final_history": calibrates})
    from scipy.stats import binom

    result["p_below_target"] = (float(binom.cdf(agree, local, target)) if local else 1.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--calls", type=int, default=13_083)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--adv-ranks", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--adv-pool", type=int, default=20)
    parser.add_argument("--runs", nargs="+", default=["adversarial:gold", "zipf:gold",
                                                      "zipf:simulated-llm"],
                        help="variant:teacher pairs, replayed seed by seed in this order")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    texts, golds, embedder, X = banking77()
    pool = (adversarial_pool(texts, golds, X, args.adv_pool)
            if any(r.startswith("adversarial") for r in args.runs) else [])
    out: dict[str, Any] = {"target": args.target, "calls": args.calls,
                           "exponent": args.exponent, "adv_ranks": args.adv_ranks,
                           "credibly": CREDIBLY, "adversarial_pool": pool, "runs": []}
    print("variant      teacher        seed  distinct  local   share  agr/call  agr/input"
          "  p(below)  trips  audits(rep)  seconds", flush=True)
    for seed in args.seeds:
        for run in args.runs:
            variant, teacher = run.split(":")
            rows, placed = stream(variant, teacher, seed, texts, golds, args.calls,
                                  args.exponent, pool, args.adv_ranks)
            started = time.process_time()
            wall = time.perf_counter()
            r = replay(rows, embedder, target=args.target, seed=seed)
            r.update({"variant": variant, "teacher": teacher, "seed": seed,
                      "cpu_seconds": round(time.process_time() - started, 1),
                      "wall_seconds": round(time.perf_counter() - wall, 1),
                      "adversarial_placed": placed})
            out["runs"].append(r)
            out["summary"] = summary(out["runs"])
            args.json.write_text(json.dumps(out, indent=1))
            a_call, a_in = r["agreement_per_call"], r["agreement_per_input"]
            print(f"{variant:<12} {teacher:<13} {seed:>4}  {r['distinct_inputs']:>8}"
                  f"  {r['local']:>5}  {r['local_share']:>6.1%}"
                  f"  {'-' if a_call is None else f'{a_call:.4f}':>8}"
                  f"  {'-' if a_in is None else f'{a_in:.4f}':>9}"
                  f"  {r['p_below_target']:>8.2g}  {r['breaker_trips']:>5}"
                  f"  {r['audits']:>4}({r['audits_of_traced_input']:>3})"
                  f"  {r['cpu_seconds']:>7}", flush=True)
    for key, s in out["summary"].items():
        print(key, json.dumps(s))


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[f"{r['variant']}:{r['teacher']}"].append(r)
    out = {}
    for key, rs in groups.items():
        calls = [r["agreement_per_call"] for r in rs if r["agreement_per_call"] is not None]
        inputs = [r["agreement_per_input"] for r in rs if r["agreement_per_input"] is not None]
        below = sum(r["p_below_target"] < CREDIBLY for r in rs)
        out[key] = {"replays": len(rs), "credibly_below_per_call": below,
                    "share_credibly_below": below / len(rs),
                    "local_share_mean": float(np.mean([r["local_share"] for r in rs])),
                    "agreement_per_call_mean": float(np.mean(calls)) if calls else None,
                    "agreement_per_call_min": float(np.min(calls)) if calls else None,
                    "agreement_per_input_mean": float(np.mean(inputs)) if inputs else None,
                    "breaker_trips": int(sum(r["breaker_trips"] for r in rs)),
                    "cpu_seconds": float(sum(r["cpu_seconds"] for r in rs))}
    return out


if __name__ == "__main__":
    main()
