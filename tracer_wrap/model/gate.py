"""The parity gate's statistics: Learn-then-Test thresholds with a finite-sample guarantee.

The claim, for one target agreement ``t`` and error level ``delta``:

    With probability at least ``1 - delta`` over the draw of the calibration set, the surrogate's
    agreement with the teacher on the inputs whose acceptor score is at least the certified
    threshold is at least ``t``.

Assumptions: calibration traces and future traffic are exchangeable (drawn from the same
distribution), and the calibration traces were not used to train the surrogate or the acceptor,
nor to choose the threshold grid or its order. The claim holds for each target on its own (one
fixed-sequence test per target), not simultaneously for all targets of a frontier.

Method (Angelopoulos et al. 2021, "Learn then Test"): for each threshold the null hypothesis is
"agreement on accepted inputs < t"; conditional on the number ``n`` of accepted calibration inputs,
the number that agree is Binomial(n, agreement), so the exact binomial tail gives a valid p-value.
Thresholds are tested in a fixed order from strict to lenient and the sequence stops at the first
p-value above ``delta`` (fixed-sequence testing controls the family-wise error at ``delta``). A test
that accepts too few inputs can never reject (``0.95 ** 30 > 0.05``), so the sequence starts at the
strictest threshold expected to accept enough inputs, judged from out-of-fold scores on the
*training* part, never from the calibration data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Certificate", "binomial_pvalue", "certify", "min_accepted", "threshold_grid"]


@dataclass(frozen=True)
class Certificate:
    """The outcome of the gate for one target.

    ``threshold`` is ``None`` when the gate refuses (no threshold passed); ``reason`` then says why.
    ``coverage`` and ``agreement`` are measured on the calibration set at the certified threshold.
    """

    target: float
    threshold: float | None
    coverage: float
    agreement: float | None
    n_accepted: int
    p_value: float | None
    reason: str = ""

    @property
    def certified(self) -> bool:
        return self.threshold is not None


def binomial_pvalue(successes: int, n: int, target: float) -> float:
    """P(Binomial(n, target) >= successes): small when the agreement is credibly above target."""
    if n <= 0:
        return 1.0
    from scipy.stats import binom  # scipy.stats takes ~1 s to import; only fitting needs it

    return float(binom.sf(successes - 1, n, target))


def min_accepted(target: float, delta: float) -> int:
    """Fewest accepted inputs with which even perfect agreement could pass the test."""
    if target >= 1.0:
        return 10**9  # agreement of exactly 1 can never be certified from finite data
    return math.ceil(math.log(delta) / math.log(target))


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
    power_factor: float = 3.0,
) -> Certificate:
    """Run the fixed-sequence test for one ``target`` and return its certificate.

    Where the sequence starts is decided from the reference (out-of-fold) data alone: with
    ``reference_agree``, at the threshold whose test is predicted to pass most surely (smallest
    p-value expected from the reference agreement and the calibration size); without it, at the
    strictest threshold expected to accept ``power_factor * min_accepted(target, delta)``
    calibration inputs. Calibration scores and agreement flags are used only for the p-values.
    """
    cal_scores = np.asarray(cal_scores, dtype=np.float64)
    cal_agree = np.asarray(cal_agree, dtype=bool)
    ref = np.sort(np.asarray(reference_scores, dtype=np.float64))
    grid = np.asarray(grid, dtype=np.float64)
    n_cal = cal_scores.size
    need = power_factor * min_accepted(target, delta)
    refused = Certificate(target, None, 0.0, None, 0, None)
    if n_cal == 0 or ref.size == 0:
        return replace(refused, reason="no calibration traces")
    if n_cal < need:
        return replace(
            refused, reason=f"{n_cal} calibration traces; target {target} needs at least {math.ceil(need)}"
        )
    start = _start(grid, ref, reference_scores, reference_agree, n_cal, need, target)

    # Cumulative counts over calibration scores sorted from high to low make every test O(log n).
    order = np.argsort(-cal_scores, kind="stable")
    sorted_scores = cal_scores[order]
    cum_agree = np.concatenate([[0], np.cumsum(cal_agree[order])])
    best: Certificate | None = None
    last_p: float | None = None
    for threshold in grid[start:]:
        n_acc = int(np.searchsorted(-sorted_scores, -threshold, side="right"))
        k = int(cum_agree[n_acc])
        p = binomial_pvalue(k, n_acc, target)
        last_p = p
        if p > delta:
            break
        best = Certificate(
            target, float(threshold), n_acc / n_cal, k / n_acc if n_acc else None, n_acc, p
        )
    if best is None:
        why = (
            f"agreement on calibration traces is not credibly above {target} at any threshold"
            f" (first test p={last_p:.3g} > delta={delta})"
            if last_p is not None
            else "the grid has no threshold that accepts enough traces"
        )
        return replace(refused, reason=why)
    return best



def _start(grid: np.ndarray, ref_sorted: np.ndarray, ref_scores: np.ndarray,
           ref_agree: np.ndarray | None, n_cal: int, need: float, target: float) -> int:
    """Index of the first grid threshold to test, from reference data only."""
    accepted_share = (ref_sorted.size - np.searchsorted(ref_sorted, grid, side="left")) / ref_sorted.size
    expected_n = n_cal * accepted_share
    enough = expected_n >= min(need, n_cal)
    if not np.any(enough):
        return len(grid)
    first_enough = int(np.argmax(enough))
    if ref_agree is None:
        return first_enough
    from scipy.stats import binom

    # Predicted p-value at each threshold if calibration behaves like the reference data.
    order = np.argsort(-np.asarray(ref_scores, dtype=np.float64), kind="stable")
    cum = np.cumsum(np.asarray(ref_agree, dtype=bool)[order])
    n_ref = np.maximum(np.round(accepted_share * ref_sorted.size).astype(int), 1)
    agreement = cum[np.minimum(n_ref, ref_sorted.size) - 1] / n_ref
    n = np.maximum(np.round(expected_n).astype(int), 1)
    predicted = binom.sf(np.round(agreement * n) - 1, n, target)
    predicted[~enough] = np.inf
    return int(np.argmin(predicted))
