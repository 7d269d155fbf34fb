"""Fitting a router from traces: cross-fitted linear surrogates, then the gate on held-out traces.

1. The traces are split at random into a training part and a calibration part: each trace
   calibrates with chance ``calibration_fraction`` (an independent coin; one chance for every
   trace, or one per trace), all the others train, so the training part always holds its share of
   every kind of trace. A refit passes each trace's coin fixed by its sequence number, so a trace
   keeps its side in every fit of its task, and the chance its kind calls for
   (:func:`tracer_wrap.refit.calibration_chances`): the history's share for a trace logged while
   no version answered locally, 1 for a call of a version's audit slice, 0 (trains only) for a
   trace that is not a uniform draw of traffic, such as a call a version deferred outside its
   slice (:mod:`tracer_wrap.model.gate`).
2. The training part is cut into ``folds``; for each fold, softmax regressions
   (:mod:`tracer_wrap.model.softmax`) are fitted on the other folds: on the embedding alone, for
   a short path of regularisation strengths (one thread job each), then, when the
   texts are given, on word and character n-grams fused with the embedding
   (:mod:`tracer_wrap.model.features`), warm-started from the fold's embedding model. Their
   out-of-fold predictions choose everything the gate must not choose from calibration data: the
   regularisation strength, whether the acceptor score is global or per label and whether it
   also scores the trust margin (:mod:`tracer_wrap.model.acceptor`,
   :mod:`tracer_wrap.model.trust`; out-of-fold margins against prototypes of the other folds),
   the threshold grids and where the tests start. The served
   surrogate averages the fold models' weights (still one linear model, so serving is as cheap as
   a single fit; refitting on the whole training part instead certified no more, measured on 10
   Banking77 resplits).
3. On the calibration part, which no model saw, the gate (:mod:`tracer_wrap.model.gate`)
   certifies thresholds for every target of the frontier at once, separately for the fused and the
   embedding-only surrogate, so the guarantee holds on both routing paths.

Why a path of strengths: the best one depends on the teacher. On Banking77 with gold labels weak
regularisation (C = 100, 30 for the fused model) certifies the most; against a simulated LLM
teacher that is wrong on 15% of queries, strong regularisation (C = 3, 1 fused) certified ~6
points more coverage at 0.95 (mean of 12 resplits), because a model that fits the teacher's
mistakes is confidently wrong. Choosing on out-of-fold data costs fitting time but no validity.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError, GateRefused
from . import gate
from .acceptor import Acceptor
from .features import NgramFeatures
from .router import Router, TextModel
from .softmax import fit_softmax, logits
from .threads import BLAS_THREADS
from .trust import Prototypes

__all__ = ["DEFAULT_TARGETS", "default_calibration_fraction", "fit_router"]

DEFAULT_TARGETS: tuple[float, ...] = (0.85, 0.90, 0.95, 0.97, 0.98, 0.99)
#: Inverse regularisation strengths tried for the embedding surrogate, chosen per fit on
#: out-of-fold data: 100 certifies the most on clean labels, 3 against a teacher often wrong.
EMBEDDING_C: tuple[float, ...] = (3.0, 100.0)
#: The fused surrogate's strength is this times the embedding one chosen (100 -> 30, 3 -> 0.9),
#: the best pairs measured on Banking77 with gold labels and with the simulated LLM teacher; one
#: fused fit per fold instead of a path keeps a 10k-trace fit near 10 s on two cores.
TEXT_C_RATIO = 0.3
#: The embedding is multiplied by this in the fused model, so that its 384 dense features are
#: regularised less than the tens of thousands of sparse n-grams (measured on Banking77: 2 beats
#: 1 by ~1 point of coverage at 0.98 and 3 adds nothing).
EMBEDDING_SCALE = 2.0
#: Largest gradient entry at which a surrogate's fit stops. The solver's default (1e-5) took
#: ~30% more evaluations on Banking77 for the same out-of-fold predictions and test coverage;
#: 1e-4 lost ~2 points of predicted coverage for the fused model (measured here).
FIT_TOL = 3e-5
#: Share of the calibration traces that must be fresh to the incumbent for the publish contest
#: to be held (see :func:`_contest_pays`).
CONTEST_SHARE = 0.5
Guarantee = Literal["average", "per_label"]
AcceptorChoice = Literal["auto", "global", "per_label"]


def fit_router(
    vectors: np.ndarray,
    labels: Sequence[str],
    *,
    targets: Sequence[float] = DEFAULT_TARGETS,
    serve_target: float = 0.95,
    delta: float = 0.05,
    calibration_fraction: float | np.ndarray | None = None,
    calibration_coins: np.ndarray | None = None,
    folds: int = 3,
    C: float | Sequence[float] = EMBEDDING_C,
    max_train: int | None = 50_000,
    seed: int = 0,
    n_jobs: int = 2,
    info: dict[str, Any] | None = None,
    texts: Sequence[str] | None = None,
    guarantee: Guarantee = "average",
    text_C: float | Sequence[float] | None = None,
    acceptor: AcceptorChoice = "auto",
    max_text_train: int | None = 20_000,
    incumbent: Router | None = None,
    incumbent_fresh: np.ndarray | None = None,
    trust: bool = True,
) -> Router:
    """Fit a router on embedded traces and certify thresholds for each target.

    ``vectors`` are L2-normalised embeddings, ``labels`` the teacher's labels and ``texts`` (when
    given) the raw inputs aligned with them: then the fused surrogate (n-grams plus embedding) is
    fitted too and serves every input whose text is known, while the embedding-only surrogate,
    certified separately, serves route-by-embedding. ``C`` is the embedding surrogate's inverse
    regularisation strength, or several to choose from on out-of-fold data; ``text_C`` the fused
    one's (default: ``TEXT_C_RATIO`` times the embedding one chosen).

    ``guarantee="average"`` certifies agreement on all local answers together, with a per-label
    acceptor when out-of-fold data predicts it certifies more (``acceptor="auto"``) or as forced
    by ``acceptor="global"`` / ``"per_label"``; ``"per_label"`` certifies it on
    the local answers of every label (see :mod:`tracer_wrap.model.gate`; it needs far more
    calibration traces per label). With ``trust`` (and the average guarantee) a per-label
    acceptor that also scores the trust margin (:mod:`tracer_wrap.model.trust`) is one more
    candidate, chosen like the others on out-of-fold data: on Banking77 it certified ~1.6 points
    more coverage at 0.98 with gold labels and the same at 0.95 against the simulated LLM teacher
    (mean of 8 resplits), for ~50 microseconds more per routed input and ~2-3 s more fit time at
    10k traces (k-means prototypes of each fold; 11-14 s without, measured on two busy cores).

    Each trace calibrates with chance ``calibration_fraction`` (one number in (0, 1) for every
    trace, or one per trace in [0, 1], 0 for a trace that only trains; the traces that may
    calibrate must be a uniform draw of traffic, see :mod:`tracer_wrap.model.gate` and
    :func:`tracer_wrap.refit.calibration_chances`): where its coin in ``calibration_coins`` (one
    per trace, in [0, 1), independent of the traces' contents) falls below its chance, or, without
    coins, by a coin drawn from ``seed``; every other trace trains. Given coins, the calibration
    side of a task's history stays unseen by every version fitted with the same coins as long as
    no trace's chance grows from one fit to the next (a smaller chance only moves traces from
    calibration to training). The share defaults to :func:`default_calibration_fraction`. At
    most ``max_train`` traces, drawn at random, train the surrogate (fit time grows with them,
    coverage hardly after ~50k), and at most ``max_text_train`` of those the fused one (its fit
    costs ~4x the embedding one per trace, and its n-gram vocabulary, hence its file, grows with
    them); the calibration part is not capped, since scoring it is cheap and more of it tightens
    the gate.

    ``n_jobs`` is how many cores the fit may keep busy: with 1 everything runs in one worker
    thread; with 2 or more each fold gets its own thread (at least ``n_jobs``), so 3 folds share
    2 cores evenly.

    **The publish rule** (``incumbent``, the version served now, and ``incumbent_fresh``, the
    traces it was not fitted on): the candidate is certified at ``delta / 2`` and the incumbent
    re-certified at ``delta / 2`` on the calibration traces among the fresh ones (the same draw;
    its reference data are training traces, fresh ones when there are enough); the one that
    certifies more coverage at ``serve_target`` is returned (the candidate on a tie), the
    incumbent as :meth:`Router.with_certificates` with its new certificates. By the union bound
    both certificates hold together with probability at least ``1 - delta``, so the one returned
    holds its claim at ``delta`` although it was chosen by what it certified; ``info["publish"]``
    records the comparison. An incumbent of another label set or dimension is ignored, and so is
    one fresh to fewer than half of the calibration traces or to fewer than the gate needs to
    test it at ``delta / 2`` (the candidate is then tested alone at ``delta`` and returned, as
    with no incumbent): which traces are fresh is known before any label is read, so the choice
    of test does not touch the guarantee.
    Pure computation: never touches a store. Raises ConfigError on malformed input and GateRefused
    when there is too little data to fit at all; a fit that certifies no target returns a router
    whose certificates say why (it defers every input).
    """
    started = time.perf_counter()
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels, dtype=object)
    fraction = _calibration_fraction(calibration_fraction, len(y))
    _check(X, y, targets, serve_target, delta)
    if texts is not None and len(texts) != len(y):
        raise ConfigError(f"{len(texts)} texts do not match {len(y)} labels")
    if guarantee not in ("average", "per_label"):
        raise ConfigError(f"guarantee must be 'average' or 'per_label', got {guarantee!r}")
    if acceptor not in ("auto", "global", "per_label"):
        raise ConfigError(f"acceptor must be 'auto', 'global' or 'per_label', got {acceptor!r}")
    emb_C = _strengths(C, "C")
    txt_C = () if text_C is None else _strengths(text_C, "text_C")
    rng = np.random.default_rng(seed)
    # An independent coin per trace (not a subset of fixed size): whether a trace calibrates must
    # not depend on its input (gate module docstring). Coins kept across refits (a refit's are
    # fixed by sequence numbers) measured +1.0 / +2.7 points of replayed coverage (gold /
    # simulated LLM) and 1 stalled replay of 20 where redrawn coins had 4 (BENCHMARKS.md,
    # "Stalled replays").
    calibrates = (rng.random(len(y)) if calibration_coins is None
                  else _calibration_coins(calibration_coins, len(y))) < fraction
    cal_idx = np.flatnonzero(calibrates)
    train_mask = ~calibrates
    if max_train is not None and train_mask.sum() > max_train:
        dropped = rng.choice(np.flatnonzero(train_mask), size=int(train_mask.sum()) - max_train,
                             replace=False)
        train_mask[dropped] = False
    y_train = y[train_mask]
    classes = np.array(sorted(set(y_train)), dtype=object)
    if len(classes) < 2:
        raise GateRefused(f"need at least two labels among training traces, got {len(classes)}")
    y_index = np.searchsorted(classes, y_train)
    train_idx = np.flatnonzero(train_mask)

    emb_train, emb_cal = X[train_idx], X[cal_idx]
    splits = _folds(y_index, folds, seed)
    rivals = (incumbent is not None and incumbent_fresh is not None
              and incumbent.dim == X.shape[1]
              and _contest_pays(np.asarray(incumbent_fresh, dtype=bool)[cal_idx], serve_target,
                                delta))
    level = delta / 2 if rivals else delta
    task = _Task(y_index, splits, classes, y[cal_idx], targets, serve_target, level, len(cal_idx),
                 guarantee, acceptor)
    use_trust = trust and guarantee == "average" and acceptor != "global"
    features = None

    # Folds run in parallel threads, each with single-threaded BLAS: multi-threaded BLAS on these
    # small matrices is up to 30x slower when another process holds a core (measured here). With
    # more than one core, every fold gets its own thread: 3 fused fits on 2 workers left one core
    # idle for the whole of the third fit, while 3 threads share 2 cores evenly (numpy and
    # scipy.sparse release the GIL in the products). While they run, this thread hashes the texts.
    threads = max(1, n_jobs) if n_jobs < 2 else max(n_jobs, len(splits))
    with BLAS_THREADS.held(1), ThreadPoolExecutor(threads) as pool:
        jobs = task.submit(pool, "embedding", [emb_train], emb_C, None)
        # The trust margin's prototypes: of the other folds for each fold's out-of-fold margins,
        # of the whole training part for calibration and serving (trust module docstring).
        prototype_jobs = ([pool.submit(Prototypes.fit, emb_train[rows], y_index[rows],
                                       len(classes), seed=seed)
                           for rows in [*(fit_rows for fit_rows, _ in splits),
                                        np.arange(len(train_idx))]]
                          if use_trust else [])
        text_rows = np.arange(len(train_idx))
        if texts is not None:
            if max_text_train is not None and len(train_idx) > max_text_train:
                text_rows = np.sort(rng.choice(len(train_idx), max_text_train, replace=False))
            features, ngrams_train = NgramFeatures.fit_transform(
                [texts[i] for i in train_idx[text_rows].tolist()])
        if prototype_jobs:
            prototypes = [job.result() for job in prototype_jobs]
            task = replace(task, trust=_Trust(emb_train, prototypes[:-1], prototypes[-1],
                                              emb_cal))
        emb = task.collect(jobs, "embedding", [emb_train], emb_C, [emb_cal])
        text = None
        if features is not None and texts is not None:
            strengths = txt_C or (TEXT_C_RATIO * emb.chosen.C,)
            text_task, starts = task, [fold[emb.chosen.C] for fold in emb.folds]
            blocks = [ngrams_train, emb_train]
            if len(text_rows) < len(train_idx):
                # Folds of the subset; every fold starts from the averaged embedding model.
                text_splits = _folds(y_index[text_rows], folds, seed)
                text_trust = None
                if task.trust is not None:
                    # Out-of-fold margins of the subset's own folds.
                    vectors = emb_train[text_rows]
                    text_trust = _Trust(vectors, [
                        Prototypes.fit(vectors[rows], y_index[text_rows][rows], len(classes),
                                       seed=seed) for rows, _ in text_splits],
                        task.trust.full, emb_cal)
                text_task = replace(task, y=y_index[text_rows], splits=text_splits,
                                    trust=text_trust)
                starts = [emb.model] * len(text_task.splits)
                blocks = [ngrams_train, emb_train[text_rows]]
            jobs = text_task.submit(pool, "text", blocks, strengths, starts)
            # No calibration trace (every chance 0, e.g. just after a breaker trip): an
            # empty block, since the vectorizer refuses an empty batch.
            ngrams_cal = (features.transform([texts[i] for i in cal_idx.tolist()])
                          if len(cal_idx) else ngrams_train[:0])
            text = text_task.collect(jobs, "text", blocks, strengths, [ngrams_cal, emb_cal])

    # The fused surrogate serves texts only where out-of-fold data predicts it certifies more than
    # the embedding one: against a teacher that is often wrong, the n-grams can fit its mistakes
    # (measured on Banking77 with the simulated LLM teacher); the embedding surrogate then serves
    # every path, texts included.
    use_text = text is not None and text.chosen.predicted > emb.chosen.predicted
    text_model = None
    if text is not None and features is not None and use_text:
        (ngram_w, emb_w), text_b = text.model
        text_model = TextModel(features, ngram_w, emb_w.T, text_b, text.certificates,
                               text.chosen.acceptor)
    heads = {"embedding": emb} if text is None else {"embedding": emb, "text": text}
    fit_info = {
        "delta": level,
        "n_traces": len(y),
        "n_train": int(train_mask.sum()),
        "n_text_train": len(text_rows) if text is not None else 0,
        "n_calibration": len(cal_idx),
        "calibration_fraction": (fraction if isinstance(fraction, float)
                                 else sorted(set(fraction.tolist()))),
        "folds": len(splits),
        "C": emb.chosen.C,
        "text_C": text.chosen.C if text is not None else None,
        "text_path": "fused" if use_text else "embedding",
        "embedding_scale": EMBEDDING_SCALE if features is not None else None,
        "n_ngram_features": features.n_features if features is not None else 0,
        "per_label_acceptor": {name: h.chosen.acceptor.per_label for name, h in heads.items()},
        "trust_acceptor": {name: h.chosen.acceptor.uses_trust for name, h in heads.items()},
        "predicted_coverage": {name: h.chosen.predicted[0] for name, h in heads.items()},
        "max_train": max_train,
        "seed": seed,
        "guarantee": guarantee,
        "claim": _CLAIMS[guarantee],
        "fit_seconds": time.perf_counter() - started,
        **(info or {}),
    }
    (emb_w,), emb_b = emb.model
    served = [emb.chosen] if text is None or text_model is None else [emb.chosen, text.chosen]
    candidate = Router(emb_w.T, emb_b, [str(c) for c in classes], emb.certificates,
                       target=serve_target, info=fit_info, acceptor=emb.chosen.acceptor,
                       text_model=text_model,
                       prototypes=(task.trust.full if task.trust is not None
                                   and any(c.acceptor.uses_trust for c in served) else None))
    if not rivals:
        return candidate
    assert incumbent is not None and incumbent_fresh is not None
    fresh = np.asarray(incumbent_fresh, dtype=bool)
    rows = cal_idx[fresh[cal_idx]]
    ref_rows = train_idx[fresh[train_idx]]
    if len(ref_rows) < 200:  # too few to place a grid: any training trace is independent too
        ref_rows = train_idx
    rival = _recertify(incumbent, X, y, texts, rows, ref_rows, targets, level, guarantee)
    covered = {name: r.certificate_for(serve_target).coverage
               if r.certificate_for(serve_target).certified else 0.0
               for name, r in (("candidate", candidate), ("incumbent", rival))}
    winner = "incumbent" if covered["incumbent"] > covered["candidate"] else "candidate"
    record = {"served": winner, "delta_each": level, "coverage": covered,
              "incumbent_calibration": len(rows), "incumbent_version":
              incumbent.info.get("version")}
    candidate.info["publish"] = record
    if winner == "candidate":
        return candidate
    return rival.with_certificates(rival.embedding_certificates,
                                   rival.certificates if rival.has_text_model else None,
                                   # Its own fit's record (what it was fitted on) stays.
                                   info={**(info or {}), **incumbent.info, "delta": level,
                                         "n_calibration": len(rows),
                                         "publish": record})


def _contest_pays(fresh: np.ndarray, target: float, delta: float) -> bool:
    """Whether to hold the publish contest at the serve ``target``: only when at least
    :data:`CONTEST_SHARE` of the calibration traces (``fresh``: one flag each) are fresh to the
    incumbent, and they are enough for the gate to test it at all at ``delta / 2``
    (:func:`~tracer_wrap.model.gate.min_calibration`). The contest halves the candidate's delta,
    which pays only when the incumbent can be re-certified on a comparable number
    (BENCHMARKS.md); with fewer fresh traces than the floor the incumbent is refused outright and
    the halved delta only costs the candidate. Decided from counts, never from labels, so either
    way one fixed test is run."""
    return (fresh.size > 0 and float(fresh.mean()) >= CONTEST_SHARE
            and int(fresh.sum()) >= gate.min_calibration(target, delta / 2))


_ASSUMING = (" per target, assuming the calibration traces are uniform draws of traffic (calls"
             " logged while no version answered, and a served version's audit slice)")
_CLAIMS = {
    "average": "P(agreement on accepted inputs >= target) >= 1 - delta over the calibration draw,"
               + _ASSUMING,
    "per_label": "P(for every label, agreement on the inputs answered locally with that label >="
                 " target) >= 1 - delta over the calibration draw," + _ASSUMING,
}


#: A fitted linear model: one weight block per feature block, and the bias.
_Model = tuple[list[np.ndarray], np.ndarray]


@dataclass
class _Chosen:
    """A surrogate and acceptor chosen on out-of-fold data, with what the gate needs from it."""

    C: float
    acceptor: Acceptor
    oof_scores: np.ndarray
    oof_agree: np.ndarray
    oof_labels: np.ndarray
    predicted: tuple[float, float]


@dataclass
class _Surrogate:
    """One surrogate as fitted: fold models by strength, the choice, the served model, its gate."""

    folds: list[dict[float, _Model]]
    chosen: _Chosen
    model: _Model
    certificates: dict[float, gate.Certificate]


@dataclass
class _Trust:
    """What the trust margins need: the training rows' embeddings, one set of prototypes per
    fold (from the other folds), the whole part's prototypes and the calibration embeddings."""

    vectors: np.ndarray
    folds: list[Prototypes]
    full: Prototypes
    cal_vectors: np.ndarray

    def out_of_fold(self, splits: list[tuple[np.ndarray, np.ndarray]], top: np.ndarray
                    ) -> np.ndarray:
        """Margins of the training rows answered ``top``, each against its fold's prototypes."""
        margins = np.empty(len(top))
        for prototypes, (_, held) in zip(self.folds, splits):
            margins[held] = prototypes.margins(self.vectors[held], top[held])
        return margins


@dataclass
class _Task:
    """What every surrogate of one fit shares: labels, folds, calibration labels, gate settings."""

    y: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    classes: np.ndarray
    y_cal: np.ndarray
    targets: Sequence[float]
    serve_target: float
    delta: float
    n_cal: int
    guarantee: Guarantee
    acceptor: AcceptorChoice
    trust: _Trust | None = None

    def submit(self, pool: ThreadPoolExecutor, name: str, blocks: list[Any],
               strengths: Sequence[float], starts: list[_Model] | None
               ) -> list[list[Future[dict[float, _Model]]]]:
        """Start fitting every fold's models of one surrogate (see :func:`_fit_path`).

        The embedding surrogate's strengths are separate jobs, each from a cold start, the
        weakest regularisation (the slowest to converge) first: with 3 folds on 2 workers, one
        job per fold left a worker idle for a third of the time, and a warm start from the
        stronger model saved fewer evaluations than that model cost (measured on Banking77).
        """
        if name == "embedding":
            jobs: list[list[Future[dict[float, _Model]]]] = [[] for _ in self.splits]
            for c in sorted(strengths, reverse=True):
                for i, (rows, _) in enumerate(self.splits):
                    jobs[i].append(pool.submit(_fit_path, name, blocks, self.y, rows,
                                               len(self.classes), (c,), None))
            return jobs
        return [[pool.submit(_fit_path, name, blocks, self.y, rows, len(self.classes),
                             strengths, None if starts is None else starts[i])]
                for i, (rows, _) in enumerate(self.splits)]

    def collect(self, jobs: list[list[Future[dict[float, _Model]]]], name: str,
                blocks: list[Any], strengths: Sequence[float], cal_blocks: list[Any]
                ) -> _Surrogate:
        """Wait for the fold models, choose strength and acceptor out-of-fold, certify."""
        folds = [{c: m for job in fold for c, m in job.result().items()} for fold in jobs]
        candidates = []
        for c in strengths:
            candidates.extend(_candidates(
                [fold[c] for fold in folds], c, self.splits, blocks, self.y, len(self.classes),
                self.targets, self.serve_target, self.delta, self.n_cal, self.guarantee,
                self.acceptor, self.trust))
        chosen = max(candidates, key=lambda cand: cand.predicted)
        weights, bias = _average([fold[chosen.C] for fold in folds])
        if name == "text":
            # Stored as float16 (half the file): certify exactly what is stored and served.
            weights[0] = weights[0].astype(np.float16).astype(np.float32)
        certificates = _certify(chosen, logits(cal_blocks, weights, bias), self.classes,
                                self.y_cal, self.targets, self.delta, self.guarantee, self.trust)
        return _Surrogate(folds, chosen, (weights, bias), certificates)


def _fit_path(name: str, blocks: list[Any], y: np.ndarray, rows: np.ndarray, n_classes: int,
              strengths: Sequence[float], start: _Model | None) -> dict[float, _Model]:
    """One fold's models of one surrogate along its strengths, weakest regularisation last, each
    warm-started from the previous (the first from ``start``: for the fused one, the fold's
    embedding model), each to the gradient tolerance ``FIT_TOL``.

    The fused model sees the embedding times ``EMBEDDING_SCALE``; its stored embedding weights
    include that factor, so every model returned applies to the raw embedding.
    """
    models: dict[float, _Model] = {}
    if name == "embedding":
        init = start
        for c in sorted(strengths):
            init = fit_softmax([blocks[0][rows]], y[rows], n_classes, C=c, init=init,
                               tol=FIT_TOL)
            models[c] = init
        return models
    sparse, dense = blocks[0][rows], blocks[1][rows] * EMBEDDING_SCALE
    fused: _Model | None = None
    if start is not None:
        (w_emb,), b_emb = start
        fused = ([np.zeros((sparse.shape[1], n_classes), dtype=np.float32),
                  w_emb / EMBEDDING_SCALE], b_emb)
    for c in sorted(strengths):
        fused = fit_softmax([sparse, dense], y[rows], n_classes, C=c, init=fused, tol=FIT_TOL)
        (w_ngrams, w_dense), bias = fused
        models[c] = ([w_ngrams, w_dense * EMBEDDING_SCALE], bias)
    return models


def _candidates(models: list[_Model], c: float,
                splits: list[tuple[np.ndarray, np.ndarray]], blocks: list[Any], y: np.ndarray,
                n_classes: int, targets: Sequence[float], serve_target: float, delta: float,
                n_cal: int, guarantee: Guarantee, choice: AcceptorChoice,
                trust: _Trust | None = None) -> list[_Chosen]:
    """The global and the per-label acceptor of one fitted strength (and, with ``trust``, the
    per-label one that also scores the trust margin), each with its prediction."""
    oof = np.empty((len(y), n_classes), dtype=np.float32)
    for (weights, bias), (_, held) in zip(models, splits):
        oof[held] = logits([b[held] for b in blocks], weights, bias)
    top = oof.argmax(axis=1)
    prob = _top_prob(oof, top)
    agree = top == y
    out = []
    if choice != "per_label" or guarantee == "per_label":
        out.append(_Chosen(c, Acceptor(), prob, agree, top,
                           _predict(prob, agree, top, n_classes, targets, serve_target, delta,
                                    n_cal, guarantee)))
    if guarantee == "average" and choice != "global":
        # Within a label the per-label score is monotone in the probability, so it only matters
        # for the average guarantee. Its reference scores are cross-fitted (5 folds) within the
        # out-of-fold data, so the acceptor's own fit does not flatter the prediction that
        # decides between it and the global one, nor where the test starts; with 2 folds the
        # half-data intercepts were noisy enough to make it look worse than it is.
        scores = np.empty(len(y))
        for fit_rows, held in _folds(y, 5, 0):
            part = Acceptor.fit(top[fit_rows], prob[fit_rows], agree[fit_rows], n_classes)
            scores[held] = part.score(top[held], prob[held])
        acceptor = Acceptor.fit(top, prob, agree, n_classes)
        if acceptor.per_label or not out:
            out.append(_Chosen(c, acceptor, scores, agree, top,
                               _predict(scores, agree, top, n_classes, targets, serve_target,
                                        delta, n_cal, guarantee)))
        if trust is not None:
            # Margins of every training row against prototypes of the other folds (the folds of
            # the surrogate), so they are as out-of-fold as the probabilities; the acceptor's
            # reference scores are cross-fitted as above.
            margins = trust.out_of_fold(splits, top)
            scores = np.empty(len(y))
            for fit_rows, held in _folds(y, 5, 0):
                part = Acceptor.fit(top[fit_rows], prob[fit_rows], agree[fit_rows], n_classes,
                                    trust=margins[fit_rows])
                scores[held] = part.score(top[held], prob[held], margins[held])
            acceptor = Acceptor.fit(top, prob, agree, n_classes, trust=margins)
            if acceptor.uses_trust:
                out.append(_Chosen(c, acceptor, scores, agree, top,
                                   _predict(scores, agree, top, n_classes, targets,
                                            serve_target, delta, n_cal, guarantee)))
    return out


def _predict(scores: np.ndarray, agree: np.ndarray, top: np.ndarray, n_classes: int,
             targets: Sequence[float], serve_target: float, delta: float, n_cal: int,
             guarantee: Guarantee) -> tuple[float, float]:
    """Coverage predicted at the served target, then on average over the targets (tie-break)."""
    grid = gate.threshold_grid(scores)

    def at(target: float) -> float:
        if guarantee == "per_label":
            return gate.expected_coverage_per_label(scores, agree, top, n_labels=n_classes,
                                                    n_cal=n_cal, target=target, delta=delta)
        return gate.expected_coverage(scores, agree, grid=grid, n_cal=n_cal, target=target,
                                      delta=delta)

    return at(serve_target), float(np.mean([at(t) for t in targets]))


def _recertify(router: Router, X: np.ndarray, y: np.ndarray, texts: Sequence[str] | None,
               rows: np.ndarray, ref_rows: np.ndarray, targets: Sequence[float], delta: float,
               guarantee: Guarantee) -> Router:
    """``router`` with both paths' certificates recomputed on the calibration ``rows``, its grids
    and starts placed by its scores on ``ref_rows``."""
    classes = np.array(router.labels, dtype=object)
    paths = [False, True] if router.has_text_model and texts is not None else [False]
    certs: dict[bool, dict[float, gate.Certificate]] = {}
    for by_text in paths:
        def scored(idx: np.ndarray, by_text: bool = by_text) -> tuple[np.ndarray, ...]:
            if not len(idx):
                return np.zeros(0, dtype=int), np.zeros(0), np.zeros(0, dtype=bool)
            chosen_texts = [texts[i] for i in idx.tolist()] if by_text and texts else None
            top, score = router.scores(X[idx], chosen_texts)
            return top, score, classes[top] == y[idx]

        ref_top, ref_score, ref_agree = scored(ref_rows)
        top, score, agree = scored(rows)
        reference = _Chosen(0.0, Acceptor(), ref_score, ref_agree, ref_top, (0.0, 0.0))
        certs[by_text] = _gate(reference, score, agree, top, len(classes), targets, delta,
                               guarantee)
    return router.with_certificates(certs[False], certs.get(True))


def _certify(chosen: _Chosen, cal_logits: np.ndarray, classes: np.ndarray, y_cal: np.ndarray,
             targets: Sequence[float], delta: float, guarantee: Guarantee,
             trust: _Trust | None = None) -> dict[float, gate.Certificate]:
    """The gate on calibration traces, for every target, with the chosen acceptor (and the
    calibration traces' trust margins against the whole training part's prototypes)."""
    top = cal_logits.argmax(axis=1) if len(y_cal) else np.zeros(0, dtype=int)
    margins = (trust.full.margins(trust.cal_vectors, top)
               if trust is not None and chosen.acceptor.uses_trust else None)
    scores = (chosen.acceptor.score(top, _top_prob(cal_logits, top), margins) if len(y_cal)
              else np.zeros(0))
    agree = classes[top] == y_cal if len(y_cal) else np.zeros(0, dtype=bool)
    return _gate(chosen, scores, agree, top, len(classes), targets, delta, guarantee)


def _gate(chosen: _Chosen, scores: np.ndarray, agree: np.ndarray, top: np.ndarray,
          n_labels: int, targets: Sequence[float], delta: float, guarantee: Guarantee
          ) -> dict[float, gate.Certificate]:
    """Certificates for every target from calibration scores, agreement flags and labels, with
    the reference (out-of-fold) data of ``chosen``."""
    if guarantee == "per_label":
        return {float(t): gate.certify_per_label(
            scores, agree, top, reference_scores=chosen.oof_scores,
            reference_agree=chosen.oof_agree, reference_labels=chosen.oof_labels,
            n_labels=n_labels, target=float(t), delta=delta) for t in targets}
    grid = gate.threshold_grid(chosen.oof_scores)
    return {float(t): gate.certify(scores, agree, grid=grid, reference_scores=chosen.oof_scores,
                                   reference_agree=chosen.oof_agree, target=float(t), delta=delta)
            for t in targets}


def _average(models: list[_Model]) -> _Model:
    """The fold models' mean weights and bias: one linear model, as cheap to serve as one fit."""
    weights = [np.mean([m[0][j] for m in models], axis=0) for j in range(len(models[0][0]))]
    # A class absent from some fold has bias -1e4 there: averaged, it stays unlikely unless the
    # other folds saw it often, which is the right direction.
    bias = np.mean([m[1] for m in models], axis=0)
    return weights, bias


def _top_prob(logit_rows: np.ndarray, top: np.ndarray) -> np.ndarray:
    shifted = logit_rows - logit_rows[np.arange(len(top)), top][:, None]
    return np.asarray(1.0 / np.exp(shifted).sum(axis=1), dtype=np.float64)


def _strengths(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    values = (float(value),) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return values


def _folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold

    folds = max(2, min(folds, len(y)))
    return list(KFold(folds, shuffle=True, random_state=seed).split(y))


def default_calibration_fraction(n: int) -> float:
    """The calibration share of an ``n``-trace history: ``1200 / n`` clipped to [0.3, 0.4]. Small
    histories need a larger share for the test to have power (measured on Banking77: at 2k
    traces, 0.4 certifies 72% coverage at 0.95 where 0.3 certifies 64%). Pure."""
    return float(np.clip(1200 / max(n, 1), 0.3, 0.4))


def _calibration_fraction(fraction: float | np.ndarray | None, n: int) -> float | np.ndarray:
    """The chance of calibrating of each trace (see :func:`fit_router`): one number in (0, 1) or
    ``n`` in [0, 1]; ConfigError if malformed."""
    if fraction is None:
        return default_calibration_fraction(n)
    if np.ndim(fraction) == 0:
        if not 0.0 < float(fraction) < 1.0:
            raise ConfigError(f"calibration_fraction must be in (0, 1), got {fraction!r}")
        return float(fraction)
    out = np.asarray(fraction, dtype=np.float64)
    if out.shape != (n,) or not np.all((out >= 0.0) & (out <= 1.0)):
        raise ConfigError(f"calibration_fraction must be one number in (0, 1) or {n} in [0, 1]")
    return out


def _calibration_coins(coins: np.ndarray, n: int) -> np.ndarray:
    """The given coins as floats (see :func:`fit_router`); ConfigError if malformed."""
    c = np.asarray(coins, dtype=np.float64)
    if c.shape != (n,) or not np.all((c >= 0.0) & (c < 1.0)):
        raise ConfigError(f"calibration_coins must be {n} numbers in [0, 1)")
    return c


def _check(X: np.ndarray, y: np.ndarray, targets: Sequence[float], serve_target: float,
           delta: float) -> None:
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ConfigError(f"vectors of shape {X.shape} do not match {y.shape[0]} labels")
    if not np.all(np.isfinite(X)):
        raise ConfigError("vectors contain NaN or infinite values")
    for t in (*targets, serve_target):
        if not 0.0 < t <= 1.0:
            raise ConfigError(f"targets must be in (0, 1], got {t!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    if len(y) < 10:
        raise GateRefused(f"{len(y)} traces are too few to fit a router")
