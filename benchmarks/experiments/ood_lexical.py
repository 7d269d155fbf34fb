"""Lexical OOD signals against held-out intents (issue 13): do words the router never saw help?

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 \\
        .venv/bin/python benchmarks/experiments/ood_lexical.py [--draws 3]

The draws of ``benchmarks/bench_ood.py`` (Banking77, 10 intents held out of the train split, the
fused router at 0.95 routes the whole test split; embeddings from its cache). Every score below is
fitted on the kept training traces and the 77 declared label names only (higher = more novel):

``unk``        share of the query's word tokens (lowercased, ``(?u)\\b\\w\\w+\\b``, crude suffix
               stem) that no training text contains; ``unk_idf`` the same share weighted by IDF.
``unk2_idf``   as ``unk_idf``, a token counting as unknown when fewer than 2 training texts hold it.
``lab_idf``    IDF-weighted share of tokens never seen in a training text of the *answered* label.
``lab_nb``     mean over tokens of log(P(token | all texts) / P(token | answered label's texts)),
               document frequencies smoothed by 0.5: the query's words are atypical of its answer.
``lab_bi``     share of the query's adjacent word pairs never seen in the answered label's texts.
``name``       IDF mass of the query's tokens that belong to the name of a declared label with no
               trace and are neither in the answered label's name nor in its training texts;
               ``name_x`` only counts name tokens that are in no seen label's name.
``char4``      share of the query's char 4-grams (words padded by spaces) no training text has;
               ``lab_char4`` the same against the answered label's texts only.
``sum``        ``lab_idf + name + char4`` (each divided by its out-of-fold 99th percentile).
``max(a,b)``   the largest out-of-fold percentile of the parts (an OR sharing one budget).

Cuts: the ``1 - q`` quantile of out-of-fold scores of the training traces, each scored with its own
label, for a budget ``q`` of 0.5%, 1%, 2% of them. ``2fold``: statistics from one half score the
other (as :mod:`tracer_wrap.model.ood`); ``loo``: leave-one-out (the counts minus the trace's own
contribution, exact for these count statistics). Prints per draw the AUROC of each score (held-out
queries against the other intents' queries answered locally with no check; and among those the
current check still lets through), then held-out local / other coverage for: no check, the current
check (``fit_ood`` with names at quantile 0.02), the current check at quantile ``0.02 + q`` (the
fair comparison: the same extra budget), the lexical check alone and on top of the current check;
the ``name`` check on top of the current check at those larger quantiles; per held-out intent, how
much of it each check answers locally and how many of its queries have no word the answered label
never saw; and the time to score one query (pure Python, every score at once).

Run on the 3 draws in about a minute (the embeddings cached); figures in the report of issue 13.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.metrics import roc_auc_score

from tracer_wrap import Embedder
from tracer_wrap.lab.bench import embed_cached
from tracer_wrap.lab.datasets import load_banking77
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.ood import fit_ood, name_text

CACHE = Path(__file__).resolve().parents[1] / "out" / "embeddings"
TOKEN = re.compile(r"(?u)\b\w\w+\b")
SUFFIXES = ("ing", "ed", "ly", "es", "s")
BUDGETS = (0.005, 0.01, 0.02)
SCORES = ("unk", "unk_idf", "unk2_idf", "lab_idf", "lab_nb", "lab_bi", "name", "name_x", "char4",
          "lab_char4")
SUM_PARTS = ("lab_idf", "name", "char4")
#: Combinations by the largest out-of-fold percentile of their parts (an OR at a shared budget).
COMBOS = {"max(name,lab_nb)": ("name", "lab_nb"), "max(name,lab_idf)": ("name", "lab_idf"),
          "max(name,lab_nb,lab_char4)": ("name", "lab_nb", "lab_char4")}


def stem(word: str) -> str:
    """Strip one common English suffix, keeping at least three letters."""
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


class Features(NamedTuple):
    """What the scores read of a text: stemmed words, adjacent word pairs, char 4-grams."""
    words: frozenset[str]
    pairs: frozenset[str]
    grams: frozenset[str]


def features(text: str, n: int = 4) -> Features:
    raw = TOKEN.findall(text.lower())
    seq = [stem(w) for w in raw]
    grams: set[str] = set()
    for w in raw:
        padded = f" {w} "
        grams.update(padded[i:i + n] for i in range(max(1, len(padded) - n + 1)))
    return Features(frozenset(seq), frozenset(f"{a} {b}" for a, b in zip(seq, seq[1:])),
                    frozenset(grams))


def name_words(label: str) -> frozenset[str]:
    return features(name_text(label)).words


class Lexicon:
    """Document frequencies of words, word pairs and char 4-grams in training texts, overall and
    per label, and the words of the declared labels' names."""

    def __init__(self, feats: Sequence[Features], labels: Sequence[str],
                 declared: Sequence[str]) -> None:
        self.n = len(feats)
        self.label_n = Counter(labels)
        self.df: Counter[str] = Counter()
        self.gdf: Counter[str] = Counter()
        self.label_df: dict[str, Counter[str]] = defaultdict(Counter)
        self.label_pdf: dict[str, Counter[str]] = defaultdict(Counter)
        self.label_gdf: dict[str, Counter[str]] = defaultdict(Counter)
        for f, y in zip(feats, labels):
            self.df.update(f.words)
            self.gdf.update(f.grams)
            self.label_df[y].update(f.words)
            self.label_pdf[y].update(f.pairs)
            self.label_gdf[y].update(f.grams)
        seen = set(labels)
        self.names = {k: name_words(k) for k in declared}
        self.unseen_words = frozenset().union(*(self.names[k] for k in declared if k not in seen))
        self.seen_name_words = frozenset().union(*(self.names[k] for k in seen))

    def score(self, f: Features, label: str, own: bool = False) -> dict[str, float]:
        """All scores of one query answered ``label``; ``own`` when the query is itself one of the
        training texts of ``label`` (its contribution is then taken out of every count)."""
        d = int(own)
        n, n_label = self.n - d, self.label_n.get(label, 0) - d
        ldf = self.label_df.get(label, Counter())
        out = dict.fromkeys(SCORES, 0.0)
        total = unknown = unknown2 = in_label = nb = name = name_x = 0.0
        own_name = self.names.get(label, frozenset())
        for w in f.words:
            df, with_label = self.df.get(w, 0) - d, ldf.get(w, 0) - d
            weight = math.log((n + 1) / (df + 1)) + 1.0
            total += weight
            out["unk"] += df <= 0
            unknown += weight * (df <= 0)
            unknown2 += weight * (df <= 1)
            in_label += weight * (with_label <= 0)
            # How much rarer the word is among the answered label's texts than among all.
            nb += math.log((df + 0.5) / (n + 1)) - math.log((with_label + 0.5) / (n_label + 1))
            if w in self.unseen_words and w not in own_name and with_label <= 0:
                name += weight
                name_x += weight * (w not in self.seen_name_words)
        if f.words:
            out["unk"] /= len(f.words)
            out["unk_idf"], out["unk2_idf"] = unknown / total, unknown2 / total
            out["lab_idf"], out["lab_nb"] = in_label / total, nb / len(f.words)
        out["name"], out["name_x"] = name, name_x
        if f.pairs:
            lpdf = self.label_pdf.get(label, Counter())
            out["lab_bi"] = sum(lpdf.get(p, 0) - d <= 0 for p in f.pairs) / len(f.pairs)
        if f.grams:
            lgdf = self.label_gdf.get(label, Counter())
            out["char4"] = sum(self.gdf.get(g, 0) - d <= 0 for g in f.grams) / len(f.grams)
            out["lab_char4"] = sum(lgdf.get(g, 0) - d <= 0 for g in f.grams) / len(f.grams)
        return out

    def scores(self, feats: Sequence[Features], labels: Sequence[str],
               own: bool = False) -> dict[str, np.ndarray]:
        rows = [self.score(f, y, own) for f, y in zip(feats, labels)]
        return {s: np.array([r[s] for r in rows]) for s in SCORES}


def out_of_fold(feats: list[Features], labels: list[str], declared: Sequence[str],
                mode: str) -> dict[str, np.ndarray]:
    """Scores of the training traces (own labels) by statistics that never saw them: two halves
    scoring each other (``2fold``, as ood.py), or leave-one-out (``loo``)."""
    if mode == "loo":
        return Lexicon(feats, labels, declared).scores(feats, labels, own=True)
    half = np.random.default_rng(0).permutation(len(feats)) % 2 == 0
    out = {s: np.empty(len(feats)) for s in SCORES}
    for fold in (half, ~half):
        fit_rows, score_rows = np.flatnonzero(~fold), np.flatnonzero(fold)
        lex = Lexicon([feats[i] for i in fit_rows], [labels[i] for i in fit_rows], declared)
        part = lex.scores([feats[i] for i in score_rows], [labels[i] for i in score_rows])
        for s in SCORES:
            out[s][score_rows] = part[s]
    return out


def percentile(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Share of ``reference`` (out-of-fold scores) strictly below each value."""
    return np.searchsorted(np.sort(reference), values, side="left") / len(reference)


def add_derived(oof: dict[str, np.ndarray], targets: list[dict[str, np.ndarray]],
                scales: dict[str, float]) -> None:
    """Add ``sum`` and the combinations to ``oof`` and each of ``targets`` (scored by ``oof``)."""
    for scores in (oof, *targets):
        scores["sum"] = sum(scores[s] / scales[s] for s in SUM_PARTS)
    reference = {s: oof[s].copy() for s in SCORES}
    for combo, parts in COMBOS.items():
        for scores in (oof, *targets):
            scores[combo] = np.max([percentile(reference[s], scores[s]) for s in parts], axis=0)


def current_check(X: np.ndarray, y: np.ndarray, names: dict[str, np.ndarray], X_test: np.ndarray,
                  answers: list[str], quantile: float) -> np.ndarray:
    """Which test queries the current OOD check (prototypes + name check) lets through."""
    check = fit_ood(X, y, names=names, quantile=quantile)
    return np.array([v is None for v in check.vetoes(X_test, answers)])


def cell(kept: np.ndarray, novel: np.ndarray) -> str:
    return f"{kept[novel].mean():.3f} / {kept[~novel].mean():.3f}"


def table(title: str, columns: list[str], rows: dict[str, list[str]]) -> None:
    print(f"\n{title}\n\n| {' | '.join(columns)} |\n|{' --- |' * len(columns)}")
    for key, cells in rows.items():
        print(f"| {key} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=10)
    args = parser.parse_args()
    embedder = Embedder.default()
    train, test = load_banking77("train"), load_banking77("test")
    vectors = embed_cached(embedder, [t for t, _ in train + test], CACHE)
    X_train, X_test = vectors[:len(train)], vectors[len(train):]
    y_train, y_test = np.array([y for _, y in train]), np.array([y for _, y in test])
    texts_train, texts_test = [t for t, _ in train], [t for t, _ in test]
    declared = sorted(set(y_train))
    names = dict(zip(declared, embedder.embed([name_text(k) for k in declared])))
    feats_train, feats_test = [features(t) for t in texts_train], [features(t) for t in texts_test]
    all_scores = (*SCORES, "sum", *COMBOS)
    aurocs: dict[str, list[str]] = defaultdict(list)
    on_top: dict[str, list[str]] = defaultdict(list)
    alone: dict[str, list[str]] = defaultdict(list)
    stacked: dict[str, list[str]] = defaultdict(list)
    intents: dict[str, list[str]] = {}
    lex: Lexicon | None = None
    answers: list[str] = []
    for draw in range(args.draws):
        held = set(np.random.default_rng(draw).choice(declared, args.held_out, replace=False))
        keep = np.array([y not in held for y in y_train])
        novel = np.array([y in held for y in y_test])
        rows = np.flatnonzero(keep)
        router = fit_router(X_train[keep], y_train[keep], serve_target=0.95, targets=(0.95,),
                            texts=[texts_train[i] for i in rows])
        decisions = router.route_many(texts_test, X_test)
        local = np.array([d.local for d in decisions])
        answers = [str(d.label) for d in decisions]

        currents = {q: current_check(X_train[keep], y_train[keep], names, X_test, answers, q)
                    for q in (0.02, *(0.02 + b for b in BUDGETS))}
        passes = currents[0.02]
        feats, labels = [feats_train[i] for i in rows], [str(y_train[i]) for i in rows]
        lex = Lexicon(feats, labels, declared)
        oof = {mode: out_of_fold(feats, labels, declared, mode) for mode in ("2fold", "loo")}
        scales = {s: max(float(np.quantile(oof["loo"][s], 0.99)), 1e-9) for s in SUM_PARTS}
        test_scores = {mode: lex.scores(feats_test, answers) for mode in oof}
        for mode in oof:
            add_derived(oof[mode], [test_scores[mode]], scales)
        kept_now = local & passes
        on_top["no check"].append(cell(local, novel))
        on_top["current (fit_ood, q=0.02)"].append(cell(kept_now, novel))
        for q in BUDGETS:
            on_top[f"current at q={0.02 + q:.3f} (same extra budget {q:.1%})"].append(
                cell(local & currents[0.02 + q], novel))
        for s in all_scores:
            score = test_scores["loo"][s]
            caught = score[kept_now & novel] > float(np.quantile(oof["loo"][s], 0.98))
            aurocs[s].append(f"{roc_auc_score(novel[local], score[local]):.3f} / "
                             f"{roc_auc_score(novel[kept_now], score[kept_now]):.3f} / "
                             f"{caught.mean():.3f}")
            for mode in oof:
                for q in BUDGETS:
                    ok = test_scores[mode][s] <= float(np.quantile(oof[mode][s], 1 - q))
                    on_top[f"{s}, {mode}, {q:.1%}"].append(cell(local & passes & ok, novel))
                    alone[f"{s}, {mode}, {q:.1%}"].append(cell(local & ok, novel))
        # Does the lexical name signal add to a larger budget of the current check?
        name_ok = {q: test_scores["loo"]["name"] <= float(np.quantile(oof["loo"]["name"], 1 - q))
                   for q in BUDGETS}
        for qc in BUDGETS:
            for q in BUDGETS[:2]:
                stacked[f"current at q={0.02 + qc:.3f} + name, loo, {q:.1%}"].append(
                    cell(local & currents[0.02 + qc] & name_ok[q], novel))
        for k in sorted(held):
            mine = y_test == k
            top = Counter(a for a, m in zip(answers, mine & kept_now) if m).most_common(1)
            intents[f"{draw} | {k}"] = [
                f"{local[mine].mean():.2f}", f"{kept_now[mine].mean():.2f}",
                f"{(kept_now & name_ok[0.01])[mine].mean():.2f}",
                f"{(kept_now & mine & (test_scores['loo']['lab_idf'] == 0)).sum()}"
                f" / {(kept_now & mine).sum()}", top[0][0] if top else "-"]
        print(f"draw {draw} done", flush=True)
    columns = [f"draw {d}" for d in range(args.draws)]
    table("AUROC: held-out queries against other intents' queries answered locally with no check"
          " / those past the current check; share of held-out queries past the current check that"
          " the 2% (loo) cut catches", ["score", *columns], aurocs)
    table("Held-out local / other coverage, the lexical check ON TOP of the current check",
          ["check, OOF, budget", *columns], on_top)
    table("Held-out local / other coverage, the lexical check ALONE",
          ["check, OOF, budget", *columns], alone)
    table("Held-out local / other coverage, the name signal on top of the current check at a"
          " larger quantile", ["checks", *columns], stacked)
    table("Per held-out intent: share answered locally with no check / past the current check /"
          " past it and name (loo, 1%); of those past the current check, how many have every word"
          " seen with the answered label (lab_idf = 0); the label most answered",
          ["draw | intent", "none", "current", "+ name", "all words seen", "answered as"],
          intents)
    assert lex is not None
    text, answer = texts_test[0], answers[0]
    started = time.perf_counter()
    for _ in range(2000):
        lex.score(features(text), answer)
    print(f"\nscoring one query (features + every score): "
          f"{1e6 * (time.perf_counter() - started) / 2000:.0f} us")


if __name__ == "__main__":
    main()
