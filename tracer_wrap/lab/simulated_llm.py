"""A simulated LLM teacher for benchmarks and tests: mostly right, wrong between neighbouring
intents.

A real LLM labelling Banking77 is wrong on 10-25% of queries and its mistakes are confusions
between neighbouring intents (``get_physical_card`` vs ``change_pin``), not uniform noise.
:class:`SimulatedLLM` reproduces that: on an ``error_rate`` share of texts it answers one of the
gold label's most confusable intents (weighted towards the most confusable), otherwise the gold
label. Every decision is a deterministic function of ``(seed, text)`` through BLAKE2b, so a text
always gets the same answer across calls, processes and Python versions (unlike the built-in,
per-process randomised ``hash``).

By default the erroneous texts are a uniformly random (but fixed) share of the traffic. Passing
``ambiguity`` (a score per text, higher = more ambiguous, e.g. ``1 -`` a cross-validated
classifier's probability of the gold label) concentrates the errors on ambiguous texts while
keeping the expected error rate over those texts equal to ``error_rate``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import resources

__all__ = ["NEIGHBOUR_WEIGHTS", "SimulatedLLM", "load_banking77_neighbours"]

#: Probability of answering the 1st, 2nd, 3rd... most confusable neighbour when wrong (renormalised
#: over however many neighbours an intent has).
NEIGHBOUR_WEIGHTS: tuple[float, ...] = (0.6, 0.3, 0.1)


def load_banking77_neighbours() -> dict[str, list[str]]:
    """The packaged map intent -> its 3 most confusable Banking77 intents, most confusable first.

    Built by ``benchmarks/make_neighbours.py`` from a cross-validated soft confusion matrix of a
    logistic regression on MiniLM embeddings of the Banking77 train split.
    """
    path = resources.files("tracer_wrap.lab").joinpath("data").joinpath("banking77_neighbours.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): [str(v) for v in vs] for k, vs in data.items()}


def _uniforms(seed: int, text: str) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) that depend only on ``seed`` and ``text``."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=16).digest()
    scale = float(2**64)
    return int.from_bytes(digest[:8], "big") / scale, int.from_bytes(digest[8:], "big") / scale


class SimulatedLLM:
    """A deterministic teacher that errs on ``error_rate`` of texts, towards neighbouring intents.

    Args:
        neighbours: intent -> its most confusable intents, most confusable first (see
            :func:`load_banking77_neighbours`). Gold labels missing from it are always answered
            correctly.
        error_rate: share of texts answered wrongly, in [0, 1].
        seed: changes which texts are wrong and which neighbour they get.
        ambiguity: optional text -> ambiguity score (>= 0). When given, the probability that a
            text in it is wrong is ``min(1, s * score)``, with ``s`` chosen so that the mean over
            the mapping equals ``error_rate``; texts not in it err with probability ``error_rate``.
    """

    def __init__(
        self,
        neighbours: Mapping[str, Sequence[str]],
        error_rate: float = 0.15,
        seed: int = 0,
        *,
        ambiguity: Mapping[str, float] | None = None,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        self.neighbours: dict[str, tuple[str, ...]] = {
            str(k): tuple(str(v) for v in vs if str(v) != str(k)) for k, vs in neighbours.items()
        }
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        self._error_prob: dict[str, float] = {}
        if ambiguity:
            self._error_prob = _calibrate(ambiguity, self.error_rate)

    def error_probability(self, text: str) -> float:
        """The probability (over seeds) that ``text`` is answered wrongly."""
        return self._error_prob.get(text, self.error_rate)

    def label_for(self, text: str, gold: str) -> str:
        """The simulated LLM's label for ``text`` whose true intent is ``gold``."""
        options = self.neighbours.get(gold, ())
        if not options:
            return gold
        u_err, u_pick = _uniforms(self.seed, text)
        if u_err >= self.error_probability(text):
            return gold
        weights = [NEIGHBOUR_WEIGHTS[i] if i < len(NEIGHBOUR_WEIGHTS) else 0.0
                   for i in range(len(options))]
        if sum(weights) <= 0:
            weights = [1.0] * len(options)
        total = sum(weights)
        acc = 0.0
        for option, w in zip(options, weights):
            acc += w / total
            if u_pick < acc:
                return option
        return options[-1]

    def labels_for(self, texts: Sequence[str], golds: Sequence[str]) -> list[str]:
        """:meth:`label_for` over parallel sequences."""
        if len(texts) != len(golds):
            raise ValueError("texts and golds must have the same length")
        return [self.label_for(t, g) for t, g in zip(texts, golds)]


def _calibrate(ambiguity: Mapping[str, float], rate: float) -> dict[str, float]:
    """Per-text error probabilities ``min(1, s * a)`` whose mean is ``rate`` (bisection on
    ``s``)."""
    scores = {t: max(0.0, float(a)) for t, a in ambiguity.items()}
    values = list(scores.values())
    if rate <= 0.0 or not any(values):
        return {t: rate for t in scores}

    def mean_prob(s: float) -> float:
        return sum(min(1.0, s * a) for a in values) / len(values)

    lo, hi = 0.0, 1.0
    while mean_prob(hi) < rate and hi < 1e12:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if mean_prob(mid) < rate:
            lo = mid
        else:
            hi = mid
    return {t: min(1.0, hi * a) for t, a in scores.items()}
