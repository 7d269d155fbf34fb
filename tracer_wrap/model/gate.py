"""The parity gate's statistics: Learn-then-Test thresholds with a finite-sample guarantee.

The claims, for one target agreement ``t`` and error level ``delta``, over the draw of the
calibration set:

* ``average`` (:func:`certify`): with probability at least ``1 - delta``, the surrogate's
  agreement with the teacher on the inputs it answers locally (acceptor score at least the
  certified threshold) is at least ``t``.
* ``per_label`` (:func:`certify_per_label`): with probability at least ``1 - delta``, for *every*
  label ``k`` the surrogate answers locally, its agreement with the teacher on the inputs it
  answers ``k`` locally is at least ``t``. The answer is the surrogate's label, so this bounds
  how often each local answer is wrong; it implies the average claim, since the local answers are
  a mixture of the per-label ones.

Assumptions: calibration traces and future traffic are independent draws from the same
distribution (once a version answers locally, by the audit slice below); the calibration traces
were not used to train the surrogate or its acceptor score, nor to choose anything the test
depends on (which surrogate answers and its regularisation, the acceptor, the threshold grids,
where each sequence starts, which labels are tested). Every such choice is made from out-of-fold
predictions on the *training* part (:func:`tracer_wrap.model.fit.fit_router`). Each target's
claim holds on its own (one test per target), not simultaneously for all targets of a frontier.

Proof sketch. Fix a selection rule ``R`` (a set of inputs answered locally) chosen without the
calibration data, and let ``A(R)`` be the teacher's agreement with the surrogate on ``R``. The
calibration traces are i.i.d., so given that ``n`` of them fall in ``R``, those ``n`` are i.i.d.
draws from the traffic restricted to ``R`` and the number ``K`` that agree is Binomial(n, A(R)).
Under the null ``A(R) < t`` that is stochastically smaller than Binomial(n, t), so the exact tail
``p = P(Binomial(n, t) >= K)`` satisfies ``P(p <= u) <= u``: a valid p-value, for every ``n``.

* Fixed-sequence testing (Learn then Test, Angelopoulos et al. 2021): rules ``R_1, R_2, ...`` in
  an order fixed in advance are tested one by one; the sequence stops at the first
  ``p > delta`` and the last rule rejected is certified. A false certification needs the first
  true null of the order to be rejected, which happens with probability at most ``delta``;
  monotonicity is not needed. The rules are ``{score >= threshold}`` for a grid of thresholds,
  strict to lenient. The acceptor score may itself be per-label (``sigmoid(a[label] + b *
  logit(p))``, fitted out-of-fold): one global threshold on it is a set of per-label thresholds on
  the surrogate's probability, so per-label thresholds for the average claim are the same test
  with the *whole* selection rule as each hypothesis, and the accepted set's overall agreement is
  what is certified. The same holds when the score also takes the trust margin
  (:mod:`tracer_wrap.model.trust`): its prototypes come from the training part alone.
* Per-label claim: the family is the set ``F`` of labels that out-of-fold data predicts can pass
  at level ``delta / (number of labels)``. For each ``k`` in ``F``, the rules
  ``{label = k, score >= threshold}`` are tested by their own fixed sequence at level
  ``delta / |F|`` on the calibration traces the surrogate labels ``k``.
  Each sequence falsely certifies with probability at most ``delta / |F|``; by the union bound
  (Bonferroni, no independence needed) some label is falsely certified with probability at most
  ``delta``. Labels outside ``F`` are never answered locally. The price is power: a label needs
  ``log(delta / |F|) / log(t)`` calibration traces of its own even if all agree (144 at t = 0.95,
  77 labels, delta = 0.05), so this claim needs long task histories.

Calibrating on traffic a version already answers (the audit slice). While a version ``v``
answers some calls, the inputs that reach the LLM are no longer a random sample of traffic: every
input ``v`` defers does (the hard ones), an input it would answer only as an audit sample. So
only traces that are a uniform draw of traffic calibrate: those logged while no version answered
(each by a coin of a fixed chance), and each served period's *audit slice*: for every call it
routes, the engine draws a coin at the audit rate ``a_v`` whatever ``v`` decides, and a call in
the slice reaches the LLM (an audit sample where ``v`` would answer, a deferred call otherwise)
and always calibrates (:func:`tracer_wrap.refit.calibration_chances`). Why the test above stays
exact: given the past, each call's input is a fresh draw of traffic, and whether its trace
calibrates is decided by coins independent of that input (the audit rate depends on the served
version and the history, never on the call), so the calibration inputs are independent draws of
traffic whatever the rates of the periods they came from, and given ``n`` of them in ``R`` the
number that agree is Binomial(n, A(R)). The deferred traces outside the slice, most of a served
period's, train the next surrogate and never calibrate: they are a draw of the hard inputs alone.
An importance-weighted test that let every deferred trace calibrate at its recorded chance of
being observed (a product of bets, each trace staked at most the audit rate) was used before: its
evidence could not exceed the slice's, it never decided a refit of the stream replays, and its
share of ``delta`` and the training traces it took cost coverage (BENCHMARKS.md). What is
assumed beyond the above: the rule ``R`` and the grid were chosen without the calibration traces
(a random split); a repeated input is one trace, calibrating at its first occurrence only, so
the draws are of distinct inputs and the claim bounds agreement over distinct inputs, not calls
(per call it fails when frequent inputs are answered worse: BENCHMARKS.md, "Repeated inputs");
a call whose routing failed (no vector within its wait) draws no slice coin, so the slice is a
uniform draw of the *routed* calls, which differs from traffic only if missing the wait depends
on the input; a lost trace of the slice breaks the
draw (the buffer counts every drop). Two dependences are not covered by the argument. Which
versions served, and hence which training traces were observed, was itself shaped by earlier
calibration traces (their certified thresholds); the argument treats ``R`` as fixed given that
history. And a trace keeps its side of the split in every refit (its coin is fixed by its
sequence number, :func:`tracer_wrap.refit.calibration_coins`), so successive refits re-test the
same calibration traces plus the new ones, and a candidate is published when its own test
passes: the claim holds for each fit at ``delta``, not for the sequence of fits by a union bound.
The stream replays of BENCHMARKS.md measure the guarantee with both in place.

A test that accepts too few inputs can never reject (``0.95 ** 30 > 0.05``), so each sequence
starts at the threshold whose test is predicted, from out-of-fold data, to pass most surely.
Traces whose teacher label the surrogate never saw count as disagreements, which only makes the
test conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["POWER_FACTOR", "Certificate", "binomial_pvalue", "certify", "certify_per_label",
           "expected_coverage", "expected_coverage_per_label", "min_accepted", "min_calibration",
           "threshold_grid"]

@dataclass(frozen=True)
class Certificate:
    """The outcome of the gate for one target.

    ``threshold`` is ``None`` when the gate refuses (no threshold passed); ``reason`` then says why.
    ``coverage`` and ``agreement`` are measured on the calibration set at the certified threshold
    (estimates of the shares of traffic, the calibration set being a uniform draw of it);
    ``n_accepted`` counts the calibration traces accepted.
    For a per-label certificate, ``label_thresholds`` holds one threshold per label (``None``: that
    label is never answered locally), ``threshold`` is the smallest of them and ``p_value`` the
    largest p-value among the labels certified (each below its share of ``delta``).
    """

    target: float
    threshold: float | None
    coverage: float
    agreement: float | None
    n_accepted: int
    p_value: float | None
    reason: str = ""
    guarantee: str = "average"
    label_thresholds: tuple[float | None, ...] | None = None

    @property
    def certified(self) -> bool:
        return self.threshold is not None


def binomial_pvalue(successes: int, n: int, target: float) -> float:
    """P(Binomial(n, target) >= successes): small when the agreement is credibly above target."""
    if n <= 0:
        return 1.0
    # scipy.stats takes ~1 s to import; only fitting needs it.
    from scipy.stats import binom

    return float(binom.sf(successes - 1, n, target))


#: Calibration traces a test needs before it runs, in multiples of :func:`min_accepted`.
POWER_FACTOR = 3.0


def min_accepted(target: float, delta: float) -> int:
    """Fewest accepted inputs with which even perfect agreement could pass the test."""
    if target >= 1.0:
        return 10**9  # agreement of exactly 1 can never be certified from finite data
    return math.ceil(math.log(delta) / math.log(target))


def min_calibration(target: float, delta: float, power_factor: float = POWER_FACTOR) -> float:
    """Fewest calibration traces with which :func:`certify` runs its test at ``target`` and
    ``delta`` (it refuses below): ``power_factor`` times :func:`min_accepted`, since a test that
    accepts barely that many inputs passes only when every one agrees. Pure."""
    return power_factor * min_accepted(target, delta)


def threshold_grid(reference_scores: np.ndarray, size: int = 200) -> np.ndarray:
    """Candidate thresholds, strict to lenient, from scores the calibration data never touched.

    Quantiles of ``reference_scores`` (out-of-fold acceptor scores on the training part) so every
    grid step moves a similar share of traffic between the surrogate and the LLM.
    """
    scores = np.asarray(reference_scores, dtype=np.float64)
    if scores.size == 0:
        return np.zeros(0)
    qs = np.quantile(scores, np.linspace(1.0, 0.0, size + 1))
    return np.unique(qs)[::-1]


def certify(
    cal_scores: np.ndarray,
    cal_agree: np.ndarray,
    *,
    grid: np.ndarray,
    reference_scores: np.ndarray,
    reference_agree: np.ndarray | None = None,
    target: float,
    delta: float,
    power_factor: float = POWER_FACTOR,
) -> Certificate:
    """Run the fixed-sequence test for one ``target`` and return its certificate.

    The calibration traces (``cal_scores``, ``cal_agree``) must be a uniform draw of traffic
    (module docstring). Where the sequence starts is decided from the reference (out-of-fold)
    data alone: with ``reference_agree``, at the threshold whose test is predicted to pass most
    surely (smallest p-value expected from the reference agreement and the calibration size);
    without it, at the strictest threshold expected to accept
    ``power_factor * min_accepted(target, delta)`` calibration inputs. Calibration scores and
    agreement flags are used only for the p-values.
    """
    cal_scores = np.asarray(cal_scores, dtype=np.float64)
    cal_agree = np.asarray(cal_agree, dtype=bool)
    ref = np.asarray(reference_scores, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    n_cal = cal_scores.size
    need = min_calibration(target, delta, power_factor)
    refused = Certificate(target, None, 0.0, None, 0, None)
    if n_cal == 0 or ref.size == 0:
        return replace(refused, reason="no calibration traces")
    if n_cal < need:
        return replace(
            refused, reason=f"{n_cal} calibration traces; target {target} needs at least"
                            f" {math.ceil(need)}"
        )
    start = _start(grid, ref, reference_agree, n_cal, need, target)
    threshold, n_acc, _, p, last_p = _fixed_sequence(cal_scores, cal_agree, grid[start:], target,
                                                     delta)
    if threshold is None:
        why = (
            f"agreement on calibration traces is not credibly above {target} at any threshold"
            f" (first test p={last_p:.3g} > delta={delta})"
            if last_p is not None
            else "the grid has no threshold that accepts enough traces"
        )
        return replace(refused, reason=why)
    coverage, agreement = _measured(cal_scores >= threshold, cal_agree)
    return Certificate(target, threshold, coverage, agreement, n_acc, p)


def certify_per_label(
    cal_scores: np.ndarray,
    cal_agree: np.ndarray,
    cal_labels: np.ndarray,
    *,
    reference_scores: np.ndarray,
    reference_agree: np.ndarray,
    reference_labels: np.ndarray,
    n_labels: int,
    target: float,
    delta: float,
    grid_size: int = 50,
) -> Certificate:
    """Certify one threshold per label so that *every* label's local answers agree ``>= target``.

    ``cal_labels`` and ``reference_labels`` are the surrogate's label index of each trace. The
    family (labels predicted by the reference data to pass at level ``delta / n_labels``), each
    label's grid (quantiles of its reference scores) and each sequence's start come from the
    reference data alone; each label in the family is then tested by fixed sequence at level
    ``delta / |family|`` on its own calibration traces (see the module docstring).
    """
    cal_scores = np.asarray(cal_scores, dtype=np.float64)
    cal_agree = np.asarray(cal_agree, dtype=bool)
    cal_labels = np.asarray(cal_labels)
    ref_scores = np.asarray(reference_scores, dtype=np.float64)
    ref_agree = np.asarray(reference_agree, dtype=bool)
    ref_labels = np.asarray(reference_labels)
    n_cal = cal_scores.size
    refused = Certificate(target, None, 0.0, None, 0, None, guarantee="per_label",
                          label_thresholds=(None,) * n_labels)
    if n_cal == 0 or ref_scores.size == 0:
        return replace(refused, reason="no calibration traces")
    plans = _per_label_plans(ref_scores, ref_agree, ref_labels, n_labels, n_cal, target, delta,
                             grid_size)
    if not plans:
        need = min_accepted(target, delta / n_labels)
        return replace(refused, reason=(
            f"no label is predicted to pass: each needs at least {need} calibration traces of its"
            f" own with agreement credibly above {target} (delta={delta} shared by {n_labels}"
            " labels)"))
    level = delta / len(plans)
    thresholds: list[float | None] = [None] * n_labels
    accepted = np.zeros(cal_scores.size, dtype=bool)
    p_values = []
    for k, grid, mine, expected_n in plans:
        on_label = cal_labels == k
        need = min_accepted(target, level)
        start = _start(grid, ref_scores[mine], ref_agree[mine], max(round(expected_n), 1),
                       need, target)
        threshold, _, _, p, _ = _fixed_sequence(cal_scores[on_label], cal_agree[on_label],
                                                grid[start:], target, level)
        if threshold is not None:
            thresholds[k] = threshold
            accepted |= on_label & (cal_scores >= threshold)
            p_values.append(p)
    certified = [t for t in thresholds if t is not None]
    if not certified:
        return replace(refused, reason=(
            f"no label's agreement on calibration traces is credibly above {target}"
            f" ({len(plans)} labels tested, each at level {level:.3g})"))
    n_acc = int(accepted.sum())
    coverage, agreement = _measured(accepted, cal_agree)
    return Certificate(target, min(certified), coverage, agreement, n_acc,
                       max(p for p in p_values if p is not None), guarantee="per_label",
                       label_thresholds=tuple(thresholds))


def expected_coverage_per_label(reference_scores: np.ndarray, reference_agree: np.ndarray,
                                reference_labels: np.ndarray, *, n_labels: int, n_cal: float,
                                target: float, delta: float, grid_size: int = 50) -> float:
    """Share of traffic :func:`certify_per_label` is predicted to certify, from reference data."""
    ref_scores = np.asarray(reference_scores, dtype=np.float64)
    ref_agree = np.asarray(reference_agree, dtype=bool)
    ref_labels = np.asarray(reference_labels)
    plans = _per_label_plans(ref_scores, ref_agree, ref_labels, n_labels, n_cal, target, delta,
                             grid_size)
    level = delta / max(len(plans), 1)
    total = 0.0
    for _, grid, mine, expected_n in plans:
        total += mine.mean() * expected_coverage(ref_scores[mine], ref_agree[mine], grid=grid,
                                                 n_cal=expected_n, target=target, delta=level,
                                                 power_factor=1.0)
    return total


def _per_label_plans(ref_scores: np.ndarray, ref_agree: np.ndarray, ref_labels: np.ndarray,
                     n_labels: int, n_cal: float, target: float, delta: float, grid_size: int
                     ) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """The per-label family: labels predicted to pass at level ``delta / n_labels``, each with
    its grid, its reference rows and its expected number of calibration traces."""
    plans = []
    for k in range(n_labels):
        mine = ref_labels == k
        if not mine.any():
            continue
        expected_n = n_cal * mine.mean()
        grid = threshold_grid(ref_scores[mine], grid_size)
        predicted = expected_coverage(ref_scores[mine], ref_agree[mine], grid=grid,
                                      n_cal=expected_n, target=target, delta=delta / n_labels,
                                      power_factor=1.0)
        if predicted > 0:
            plans.append((k, grid, mine, expected_n))
    return plans


def expected_coverage(reference_scores: np.ndarray, reference_agree: np.ndarray, *,
                      grid: np.ndarray, n_cal: float, target: float, delta: float,
                      power_factor: float = POWER_FACTOR) -> float:
    """Share of traffic the fixed-sequence test is predicted to certify at ``target``.

    The prediction assumes calibration traces behave like the reference (out-of-fold) ones: the
    sequence starts where :func:`certify` would and continues while the p-value expected from the
    reference agreement at ``n_cal`` calibration traces stays at most ``delta``. It uses no
    calibration data, so choices made with it (the acceptor, the family) keep the guarantee.
    """
    ref = np.asarray(reference_scores, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    need = min_calibration(target, delta, power_factor)
    if ref.size == 0 or grid.size == 0 or n_cal < need:
        return 0.0
    predicted, share = _predicted_pvalues(grid, ref, np.asarray(reference_agree, dtype=bool),
                                          n_cal, need, target)
    start = int(np.argmin(predicted))
    passing = predicted[start:] <= delta
    if not passing[0]:
        return 0.0
    last = start + (int(np.argmin(passing)) - 1 if not passing.all() else len(passing) - 1)
    return float(share[last])


def _measured(accepted: np.ndarray, agree: np.ndarray) -> tuple[float, float | None]:
    """Coverage and agreement of a certificate: the share of the calibration traces accepted and
    the share of those that agree (None when nothing is accepted)."""
    n_acc = int(accepted.sum())
    coverage = n_acc / accepted.size if accepted.size else 0.0
    return coverage, (int((accepted & agree).sum()) / n_acc if n_acc else None)


def _fixed_sequence(scores: np.ndarray, agree: np.ndarray, grid: np.ndarray, target: float,
                    level: float
                    ) -> tuple[float | None, int, int, float | None, float | None]:
    """Test ``grid`` thresholds in order until one fails (exact binomial p-values); the last
    passing one with its numbers accepted and agreeing and its p-value, and the last p-value."""
    # Cumulative counts over scores sorted from high to low make every test O(log n).
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    cum_agree = np.concatenate([[0], np.cumsum(agree[order])])
    best: tuple[float | None, int, int, float | None] = (None, 0, 0, None)
    last_p: float | None = None
    for threshold in grid:
        n_acc = int(np.searchsorted(-sorted_scores, -threshold, side="right"))
        k = int(cum_agree[n_acc])
        p = binomial_pvalue(k, n_acc, target)
        last_p = p
        if p > level:
            break
        best = (float(threshold), n_acc, k, p)
    return (*best, last_p)


def _predicted_pvalues(grid: np.ndarray, ref_scores: np.ndarray, ref_agree: np.ndarray,
                       n_cal: float, need: float, target: float) -> tuple[np.ndarray, np.ndarray]:
    """P-value expected at each grid threshold if calibration behaves like the reference data
    (``inf`` where too few traces are expected), and the reference share accepted there."""
    from scipy.stats import binom

    accepted_share, agreement = _reference_curve(grid, ref_scores, ref_agree)
    expected_n = n_cal * accepted_share
    enough = expected_n >= min(need, n_cal)
    n = np.maximum(np.round(expected_n).astype(int), 1)
    predicted = binom.sf(np.round(agreement * n) - 1, n, target)
    predicted[~enough] = np.inf
    return predicted, accepted_share


def _reference_curve(grid: np.ndarray, ref_scores: np.ndarray, ref_agree: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Share of the reference data each grid threshold accepts, and its agreement there."""
    ref_sorted = np.sort(ref_scores)
    below = np.searchsorted(ref_sorted, grid, side="left")
    accepted_share = (ref_sorted.size - below) / ref_sorted.size
    order = np.argsort(-ref_scores, kind="stable")
    cum = np.cumsum(ref_agree[order])
    n_ref = np.maximum(np.round(accepted_share * ref_sorted.size).astype(int), 1)
    return accepted_share, cum[np.minimum(n_ref, ref_sorted.size) - 1] / n_ref


def _start(grid: np.ndarray, ref_scores: np.ndarray, ref_agree: np.ndarray | None, n_cal: int,
           need: float, target: float) -> int:
    """Index of the first grid threshold to test, from reference data only."""
    ref_sorted = np.sort(ref_scores)
    below = np.searchsorted(ref_sorted, grid, side="left")
    accepted_share = (ref_sorted.size - below) / ref_sorted.size
    enough = n_cal * accepted_share >= min(need, n_cal)
    if not np.any(enough):
        return len(grid)
    if ref_agree is None:
        return int(np.argmax(enough))
    predicted, _ = _predicted_pvalues(grid, ref_scores, np.asarray(ref_agree, dtype=bool), n_cal,
                                      need, target)
    return int(np.argmin(predicted))
