"""The parity gate's guarantee, tested over many calibration draws of a task with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError
from tracer_wrap.model.acceptor import Acceptor
from tracer_wrap.model.gate import (
    binomial_pvalue,
    certify,
    certify_per_label,
    min_accepted,
    threshold_grid,
    weighted_pvalue,
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


# -- calibrating on traffic a version already answers (the stratified design) --------------------
#
# A complete period (no version answers: every call is traced), then a period where a version
# answers the inputs with s >= 0.5: each of those reaches the LLM only as an audit sample, at
# rate AUDIT, while every input it defers is traced. Deferred traces are the hard ones.

AUDIT = 0.05


def served_history(rng: np.random.Generator, n_complete: int, n_served: int, q: float = 0.5,
                   sliced: bool = False):
    """Calibration traces of that history: scores, agreement, weights, whether today's rule
    would let them calibrate (traced while nothing was answered locally, or an audit sample), and
    whether they are a uniform draw of traffic, tested exactly too. Each trace calibrates by an
    independent coin of chance ``q``, plain traffic alone being uniform; or, ``sliced`` (the
    library's design, :func:`tracer_wrap.refit.calibration_design`), the audit slice, drawn for
    every call whatever the version decides, is uniform too and always calibrates, and each
    deferred trace weighs ``AUDIT / (AUDIT + (1 - AUDIT) q)``. Both designs draw the same
    random numbers, so one generator state gives one history split both ways."""
    s_complete, s_served = rng.random(n_complete), rng.random(n_served)
    handled = s_served >= 0.5
    in_slice = rng.random(n_served) < AUDIT
    traced = ~handled | in_slice
    handled, in_slice = handled[traced], in_slice[traced]
    scores = np.concatenate([s_complete, s_served[traced]])
    agree = rng.random(scores.size) < agree_prob(scores)
    deferred_weight = AUDIT / (AUDIT + (1 - AUDIT) * q) if sliced else AUDIT
    weights = np.concatenate([np.ones(n_complete), np.where(handled, 1.0, deferred_weight)])
    exchangeable = np.concatenate([np.ones(n_complete, dtype=bool), handled])
    plain = np.arange(scores.size) < n_complete
    slice_ = np.concatenate([np.zeros(n_complete, dtype=bool), in_slice])
    coins = rng.random(scores.size) < q
    if not sliced:
        return scores[coins], agree[coins], weights[coins], exchangeable[coins], plain[coins]
    cal = coins | slice_
    complete = plain | slice_
    return scores[cal], agree[cal], weights[cal], exchangeable[cal], complete[cal]


def test_weighted_pvalue_is_valid_at_the_null_whatever_the_mix_of_strata():
    # Agreement exactly at target on the whole traffic, 0.99 on the part a version answers and
    # lower on the part it defers: P(p <= u) <= u at every u, over many histories.
    rng = np.random.default_rng(8)
    target, handled_share, draws = 0.9, 0.6, 2000
    deferred_agreement = (target - handled_share * 0.99) / (1 - handled_share)
    pvalues = []
    for _ in range(draws):
        n = 3000
        handled = rng.random(n) < handled_share
        traced = ~handled | (rng.random(n) < AUDIT)
        agree = rng.random(n) < np.where(handled, 0.99, deferred_agreement)
        weights = np.where(handled, 1.0, AUDIT)
        pvalues.append(weighted_pvalue(agree[traced], weights[traced], target))
    pvalues = np.array(pvalues)
    for u in (0.01, 0.05, 0.1, 0.2):
        assert np.mean(pvalues <= u) <= u + 3 * np.sqrt(u * (1 - u) / draws)
    assert weighted_pvalue(np.ones(200, dtype=bool), np.ones(200), 0.9) < 0.01  # it has power


@pytest.mark.parametrize("target", [0.90, 0.93])
def test_every_deferred_trace_calibrates_and_the_guarantee_holds_over_many_draws(target):
    rng = np.random.default_rng(21)
    delta, draws = 0.05, 300
    violations = certified = broken = 0
    for _ in range(draws):
        reference, ref_agree = draw(rng, 3000)
        scores, agree, weights, exchangeable, complete = served_history(rng, 200, 20_000)
        grid = threshold_grid(reference)
        for plain in (None, complete):  # the weighted test alone, and with the exact one
            cert = certify(scores, agree, grid=grid, reference_scores=reference,
                           reference_agree=ref_agree, target=target, delta=delta,
                           cal_weights=weights, cal_complete=plain)
            if cert.certified:
                certified += 1
                violations += true_agreement(cert.threshold) < target
        # Today's rule, the exact test on traces traced while nothing answered plus audit
        # samples, over-represents the easy inputs a version answers: the check below catches it.
        naive = certify(scores[exchangeable], agree[exchangeable], grid=grid,
                        reference_scores=reference, reference_agree=ref_agree, target=target,
                        delta=delta)
        broken += naive.certified and true_agreement(naive.threshold) < target
    tolerance = delta + 3 * np.sqrt(delta * (1 - delta) / draws)
    # 100 traces traced while nothing answered could not certify alone (0.9 needs 3 x 29): the
    # deferred traces and audit samples make the difference.
    assert certified > 0.2 * 2 * draws
    assert violations / (2 * draws) <= delta + 3 * np.sqrt(delta * (1 - delta) / (2 * draws))
    assert broken / draws > tolerance


def test_the_audit_slice_calibrates_and_the_guarantee_holds_over_many_draws():
    # The library's design against audit samples on a coin like any trace's and no slice, on
    # the same histories (a short plain period, a long served one): both valid, and the slice
    # certifies more often, since it adds uniform draws of traffic to the exact test.
    rng = np.random.default_rng(34)
    target, delta, draws, q = 0.90, 0.05, 300, 0.3
    certified = {False: 0, True: 0}
    violations = {False: 0, True: 0}
    for _ in range(draws):
        reference, ref_agree = draw(rng, 3000)
        grid = threshold_grid(reference)
        state = rng.bit_generator.state
        for sliced in (False, True):
            rng.bit_generator.state = state  # the same history, split by each design
            scores, agree, weights, _, complete = served_history(rng, 100, 8000, q, sliced)
            cert = certify(scores, agree, grid=grid, reference_scores=reference,
                           reference_agree=ref_agree, target=target, delta=delta,
                           cal_weights=weights, cal_complete=complete)
            if cert.certified:
                certified[sliced] += 1
                violations[sliced] += true_agreement(cert.threshold) < target
    tolerance = delta + 3 * np.sqrt(delta * (1 - delta) / draws)
    assert violations[True] / draws <= tolerance
    assert violations[False] / draws <= tolerance
    assert certified[True] > 0.5 * draws
    assert certified[False] < 0.5 * certified[True]


def test_plain_traffic_keeps_the_exact_tests_power_in_a_mixed_history():
    # 1,500 traces of plain traffic, then a short period of a version answering: the exact test on
    # the plain traffic (Bonferroni with the weighted one) certifies far more than betting alone.
    rng = np.random.default_rng(9)
    coverage: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(40):
        reference, ref_agree = draw(rng, 3000)
        scores, agree, weights, _, complete = served_history(rng, 1500, 600)
        for plain in (True, False):
            cert = certify(scores, agree, grid=threshold_grid(reference),
                           reference_scores=reference, reference_agree=ref_agree, target=0.93,
                           delta=0.05, cal_weights=weights,
                           cal_complete=complete if plain else None)
            coverage[plain].append(cert.coverage)
    assert np.mean(coverage[True]) > np.mean(coverage[False]) + 0.05


def test_weights_of_one_are_the_exact_test_and_bad_weights_are_refused():
    rng = np.random.default_rng(4)
    reference, ref_agree = draw(rng, 2000)
    scores, agree = draw(rng, 1500)
    kwargs = dict(grid=threshold_grid(reference), reference_scores=reference,
                  reference_agree=ref_agree, target=0.9, delta=0.05)
    assert certify(scores, agree, cal_weights=np.ones(1500), **kwargs) == certify(
        scores, agree, **kwargs)
    with pytest.raises(ConfigError):
        certify(scores, agree, cal_weights=np.full(1500, 1.5), **kwargs)


def test_a_weighted_certificate_measures_coverage_and_agreement_by_weight():
    # Scores are uniform on traffic, so a threshold's true coverage is 1 - threshold. The history
    # is mostly the deferred (low-score) traces of a served period: counted one by one they make
    # the accepted share look far smaller than the traffic it stands for.
    rng = np.random.default_rng(6)
    reference, ref_agree = draw(rng, 3000)
    scores, agree, weights, _, complete = served_history(rng, 1500, 8000)
    cert = certify(scores, agree, grid=threshold_grid(reference), reference_scores=reference,
                   reference_agree=ref_agree, target=0.9, delta=0.05, cal_weights=weights,
                   cal_complete=complete)
    assert cert.certified
    accepted = scores >= cert.threshold
    assert cert.coverage == pytest.approx(weights[accepted].sum() / weights.sum())
    assert cert.agreement == pytest.approx(weights[accepted & agree].sum()
                                           / weights[accepted].sum())
    assert cert.n_accepted == accepted.sum()
    truth = 1 - cert.threshold
    assert abs(cert.coverage - truth) < 0.05 < abs(accepted.mean() - truth)
