"""The parity gate's guarantee, tested over many calibration draws of a task with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.model.acceptor import Acceptor
from tracer_wrap.model.gate import (
    binomial_pvalue,
    certify,
    certify_per_label,
    min_accepted,
    threshold_grid,
)


def agree_prob(scores: np.ndarray) -> np.ndarray:
    """Known truth: the chance the surrogate agrees with the teacher at acceptor score s."""
    return 0.6 + 0.4 * scores**0.5


def true_agreement(threshold: float) -> float:
    """Agreement on inputs with score >= threshold, scores ~ U(0, 1), by exact quadrature."""
    s = np.linspace(threshold, 1.0, 20_001)
    return float(np.trapezoid(agree_prob(s), s) / (1.0 - threshold)) if threshold < 1 else 1.0


def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.random(n)
    return scores, rng.random(n) < agree_prob(scores)


def test_binomial_pvalue_is_the_upper_tail():
    assert binomial_pvalue(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_pvalue(0, 10, 0.5) == pytest.approx(1.0)
    assert binomial_pvalue(0, 0, 0.9) == 1.0
    # 30 agreements out of 30 cannot certify 0.95 at delta 0.05: 0.95**30 = 0.21.
    assert binomial_pvalue(30, 30, 0.95) > 0.05
    assert min_accepted(0.95, 0.05) == 59


@pytest.mark.parametrize("target", [0.90, 0.95])
def test_violations_stay_below_delta_over_many_draws(target):
    rng = np.random.default_rng(1234)
    delta, draws, violations, certified = 0.05, 400, 0, 0
    for _ in range(draws):
        reference, ref_agree = draw(rng, 3000)  # out-of-fold data of the training part
        cal_scores, cal_agree = draw(rng, 1500)
        cert = certify(cal_scores, cal_agree, grid=threshold_grid(reference),
                       reference_scores=reference, reference_agree=ref_agree, target=target,
                       delta=delta)
        if cert.certified:
            certified += 1
            violations += true_agreement(cert.threshold) < target
    # The gate has power here ...
    assert certified > 0.8 * draws
    # ... and is wrong at most delta of the time, plus binomial slack of 3 standard errors.
    assert violations / draws <= delta + 3 * np.sqrt(delta * (1 - delta) / draws)


def test_certified_threshold_is_close_to_the_best_possible():
    rng = np.random.default_rng(7)
    reference, _ = draw(rng, 5000)
    cal_scores, cal_agree = draw(rng, 5000)
    cert = certify(cal_scores, cal_agree, grid=threshold_grid(reference),
                   reference_scores=reference, target=0.9, delta=0.05)
    # The loosest threshold whose true agreement is 0.9, found by bisection on the truth.
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if true_agreement(mid) >= 0.9 else (mid, hi)
    assert cert.certified
    assert true_agreement(cert.threshold) >= 0.9
    assert cert.coverage >= (1 - hi) - 0.08


def test_the_sequence_starts_where_the_test_has_power():
    # A few perfect inputs at the very top would stop a sequence started there (0.95**5 > delta);
    # starting where enough inputs are expected still certifies.
    rng = np.random.default_rng(3)
    reference, ref_agree = draw(rng, 2000)
    cal_scores, cal_agree = draw(rng, 2000)
    cal_agree[np.argsort(-cal_scores)[:5]] = False  # the strictest five disagree
    cert = certify(cal_scores, cal_agree, grid=threshold_grid(reference),
                   reference_scores=reference, reference_agree=ref_agree, target=0.9,
                   delta=0.05)
    assert cert.certified and cert.coverage > 0.3


def test_refuses_with_too_few_calibration_traces_and_says_why():
    rng = np.random.default_rng(0)
    reference, _ = draw(rng, 500)
    cal_scores, cal_agree = draw(rng, 100)
    cert = certify(cal_scores, cal_agree, grid=threshold_grid(reference),
                   reference_scores=reference, target=0.95, delta=0.05)
    assert not cert.certified
    assert "needs at least" in cert.reason


def test_refuses_when_agreement_is_below_target_everywhere():
    rng = np.random.default_rng(0)
    reference = rng.random(1000)
    cal_scores = rng.random(1000)
    cal_agree = rng.random(1000) < 0.8
    cert = certify(cal_scores, cal_agree, grid=threshold_grid(reference),
                   reference_scores=reference, target=0.95, delta=0.05)
    assert not cert.certified
    assert "not credibly above 0.95" in cert.reason


# -- per-label thresholds and the per-label guarantee, on a task with known truth ----------------
#
# Twelve labels answered equally often; the surrogate's probability s is U(0, 1) and the teacher
# agrees with a label-k answer of probability s with chance BASES[k] + (1 - BASES[k]) * sqrt(s),
# so labels differ in how far the teacher can be trusted and every agreement is known exactly.

BASES = np.linspace(0.5, 0.9, 12)


def draw_labelled(rng: np.random.Generator, n: int):
    labels = rng.integers(0, len(BASES), n)
    scores = rng.random(n)
    agree = rng.random(n) < BASES[labels] + (1 - BASES[labels]) * np.sqrt(scores)
    return scores, agree, labels


def label_tail(k: int, tau: float) -> tuple[float, float]:
    """Integral of the agreement over s in [tau, 1] for label k, and the mass of that interval."""
    tau = min(max(tau, 0.0), 1.0)
    return BASES[k] * (1 - tau) + (1 - BASES[k]) * (2 / 3) * (1 - tau**1.5), 1 - tau


def label_agreement(k: int, tau: float) -> float:
    hits, mass = label_tail(k, tau)
    return hits / mass if mass > 0 else 1.0


def rule_agreement(acceptor: Acceptor, threshold: float) -> float:
    """True agreement on {acceptor score >= threshold}: per-label cut-offs on s, mixed."""
    hits = mass = 0.0
    for k in range(len(BASES)):
        if acceptor.per_label:
            z = (np.log(threshold / (1 - threshold)) - acceptor.intercepts[k]) / acceptor.slope
            tau = float(1 / (1 + np.exp(-z)))
        else:
            tau = threshold
        h, m = label_tail(k, tau)
        hits, mass = hits + h, mass + m
    return hits / mass if mass > 0 else 1.0


def test_per_label_acceptor_keeps_the_average_guarantee_and_certifies_more():
    rng = np.random.default_rng(11)
    delta, target, draws = 0.1, 0.93, 100
    violations = broken = 0
    coverage = {True: [], False: []}
    for _ in range(draws):
        ref_s, ref_a, ref_l = draw_labelled(rng, 2000)
        cal_s, cal_a, cal_l = draw_labelled(rng, 2000)
        for per_label in (True, False):
            acceptor = Acceptor.fit(ref_l, ref_s, ref_a, len(BASES)) if per_label else Acceptor()
            ref, cal = acceptor.score(ref_l, ref_s), acceptor.score(cal_l, cal_s)
            cert = certify(cal, cal_a, grid=threshold_grid(ref), reference_scores=ref,
                           reference_agree=ref_a, target=target, delta=delta)
            coverage[per_label].append(cert.coverage)
            if per_label and cert.certified:
                violations += rule_agreement(acceptor, cert.threshold) < target
            if per_label:
                # A broken gate: the most lenient threshold whose calibration agreement reaches
                # the target, no test. The check below must be able to catch it.
                order = np.argsort(-cal)
                running = np.cumsum(cal_a[order]) / np.arange(1, len(cal) + 1)
                ok = np.flatnonzero(running >= target)
                naive = cal[order][ok.max()] if len(ok) else 1.0
                broken += rule_agreement(acceptor, naive) < target
    tolerance = delta + 3 * np.sqrt(delta * (1 - delta) / draws)
    assert violations / draws <= tolerance
    assert broken / draws > tolerance
    assert np.mean(coverage[True]) > np.mean(coverage[False]) + 0.02


def test_per_label_guarantee_holds_for_every_label_over_many_draws():
    rng = np.random.default_rng(5)
    delta, target, draws = 0.1, 0.9, 200
    violations = naive_violations = certified = 0
    for _ in range(draws):
        ref_s, ref_a, ref_l = draw_labelled(rng, 3000)
        cal_s, cal_a, cal_l = draw_labelled(rng, 3000)
        cert = certify_per_label(cal_s, cal_a, cal_l, reference_scores=ref_s,
                                 reference_agree=ref_a, reference_labels=ref_l,
                                 n_labels=len(BASES), target=target, delta=delta)
        assert cert.label_thresholds is not None
        if cert.certified:
            certified += 1
            violations += any(t is not None and label_agreement(k, t) < target
                              for k, t in enumerate(cert.label_thresholds))
        # Without multiplicity control (each label at level delta) some label fails far more
        # often than delta: the check below can tell the difference.
        naive_bad = False
        for k in range(len(BASES)):
            ref_k, cal_k = ref_l == k, cal_l == k
            one = certify(cal_s[cal_k], cal_a[cal_k], grid=threshold_grid(ref_s[ref_k], 50),
                          reference_scores=ref_s[ref_k], reference_agree=ref_a[ref_k],
                          target=target, delta=delta, power_factor=1.0)
            naive_bad |= one.certified and label_agreement(k, one.threshold) < target
        naive_violations += naive_bad
    tolerance = delta + 3 * np.sqrt(delta * (1 - delta) / draws)
    assert certified > 0.9 * draws
    assert violations / draws <= tolerance
    assert naive_violations / draws > tolerance


def test_per_label_refuses_labels_without_enough_traces_and_says_why():
    rng = np.random.default_rng(0)
    ref_s, ref_a, ref_l = draw_labelled(rng, 600)  # ~50 per label: 107 needed at 0.95
    cal_s, cal_a, cal_l = draw_labelled(rng, 600)
    cert = certify_per_label(cal_s, cal_a, cal_l, reference_scores=ref_s, reference_agree=ref_a,
                             reference_labels=ref_l, n_labels=len(BASES), target=0.95,
                             delta=0.05)
    assert not cert.certified and "needs at least" in cert.reason
    assert cert.label_thresholds == (None,) * len(BASES)


# -- calibrating on traffic a version already answers (the audit slice) --------------------------
#
# A plain period (no version answers: every call is traced, and calibrates by a coin), then a
# period where a version answers the inputs with s >= 0.5: one of those reaches the LLM only when
# the audit slice, drawn at rate AUDIT for every call whatever the version decides, takes it,
# while every input it defers is traced. Deferred traces are the hard ones.

AUDIT = 0.05


def served_history(rng: np.random.Generator, n_plain: int, n_served: int, q: float = 0.3
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scores and agreement of every call of that history, the calibration traces the library
    takes (plain traffic by coins of chance ``q``, and the whole slice) and, for contrast, those
    a design without the slice's deferred inputs would take (plain traffic and the audits)."""
    scores = rng.random(n_plain + n_served)
    agree = rng.random(scores.size) < agree_prob(scores)
    plain = np.arange(scores.size) < n_plain
    sliced = ~plain & (rng.random(scores.size) < AUDIT)
    calibrates = plain & (rng.random(scores.size) < q)
    return scores, agree, calibrates | sliced, calibrates | (sliced & (scores >= 0.5))


@pytest.mark.parametrize("target", [0.90, 0.93])
def test_the_audit_slice_calibrates_and_the_guarantee_holds_over_many_draws(target):
    rng = np.random.default_rng(34)
    delta, draws = 0.05, 300
    certified = violations = broken = 0
    for _ in range(draws):
        reference, ref_agree = draw(rng, 3000)
        scores, agree, library, audits_only = served_history(rng, 100, 8000)
        kwargs = dict(grid=threshold_grid(reference), reference_scores=reference,
                      reference_agree=ref_agree, target=target, delta=delta)
        cert = certify(scores[library], agree[library], **kwargs)
        if cert.certified:
            certified += 1
            violations += true_agreement(cert.threshold) < target
        # Plain traffic and audit samples alone over-represent the easy inputs a version
        # answers: the check below catches that design.
        wrong = certify(scores[audits_only], agree[audits_only], **kwargs)
        broken += wrong.certified and true_agreement(wrong.threshold) < target
    tolerance = delta + 3 * np.sqrt(delta * (1 - delta) / draws)
    # ~30 plain calibration traces could not certify alone: the slice makes the difference.
    assert certified > 0.3 * draws
    assert violations / draws <= tolerance
    assert broken / draws > tolerance
