"""The parity gate's guarantee, tested over many calibration draws of a task with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.model.gate import binomial_pvalue, certify, min_accepted, threshold_grid


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
