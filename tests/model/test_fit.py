"""Fitting: a certified router on separable data, honest refusals, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_wrap.errors import ConfigError, GateRefused
from tracer_wrap.model.fit import fit_router
from tracer_wrap.model.gate import min_calibration


def blobs(n: int, k: int = 5, dim: int = 16, noise: float = 0.35, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    y = rng.integers(0, k, n)
    X = centres[y] + noise * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.array([f"label{i}" for i in y])


def test_certifies_every_target_of_the_frontier_in_one_fit():
    X, y = blobs(3000)
    router = fit_router(X, y, targets=(0.9, 0.95, 0.99))
    assert [c["target"] for c in router.frontier()] == [0.9, 0.95, 0.99]
    assert all(c["threshold"] is not None for c in router.frontier())
    coverages = [router.certificate_for(t).coverage for t in (0.9, 0.95, 0.99)]
    assert coverages == sorted(coverages, reverse=True)
    # The automatic share, 1200 / 3000 = 0.4, one coin per trace: 1200 +- 4 standard deviations.
    assert abs(router.info["n_calibration"] - 1200) < 4 * np.sqrt(3000 * 0.4 * 0.6)


def test_held_out_agreement_meets_the_target():
    X, y = blobs(6000, dim=8, noise=1.0, seed=1)
    router = fit_router(X[:4000], y[:4000], serve_target=0.95)
    decisions = router.route_many(None, X[4000:])
    handled = np.array([d.local for d in decisions])
    agree = np.array([d.label for d in decisions]) == y[4000:]
    assert 0.3 < handled.mean() < 1.0
    assert agree[handled].mean() >= 0.95


def test_labels_unseen_in_training_count_as_disagreement():
    X, y = blobs(2000, k=4)
    y = y.copy()
    y[np.random.default_rng(0).random(len(y)) < 0.2] = "brand_new_intent"
    # Every new-intent trace calibrates, so training never sees it.
    fraction = np.where(y == "brand_new_intent", 1.0,
                        np.where(np.arange(len(y)) < len(y) // 3, 0.35, 0.0))
    router = fit_router(X, y, calibration_fraction=fraction)
    assert "brand_new_intent" not in router.labels
    cert = router.certificate_for(0.95)
    assert not cert.certified or cert.coverage < 0.85


def test_a_trace_of_chance_zero_only_trains_and_the_others_keep_their_share():
    X, y = blobs(1000)
    fraction = np.where(np.arange(1000) < 100, 0.4, 0.0)
    router = fit_router(X, y, calibration_fraction=fraction, max_train=None)
    # Fewer traces may calibrate than the share asks for: still only ~40% of them do, so the
    # training part is never only the traces that may not calibrate (the hard, deferred ones).
    assert 20 <= router.info["n_calibration"] <= 60
    assert router.info["n_train"] == 1000 - router.info["n_calibration"]


def test_given_coins_decide_each_traces_side():
    X, y = blobs(1000)
    coins = np.random.default_rng(7).random(1000)
    fraction = np.where(np.arange(1000) < 600, 0.4, 0.0)
    router = fit_router(X, y, calibration_coins=coins, calibration_fraction=fraction,
                        max_train=None)
    calibrates = coins < fraction
    assert router.info["n_calibration"] == int(calibrates.sum())
    assert router.info["n_train"] == int((~calibrates).sum())
    again = fit_router(X, y, calibration_coins=coins, calibration_fraction=fraction,
                       max_train=None, seed=3)
    assert again.info["n_calibration"] == router.info["n_calibration"]  # the seed draws no coin
    for bad in (np.full(1000, 1.0), np.full(10, 0.5), np.full(1000, -0.1)):
        with pytest.raises(ConfigError, match="calibration_coins"):
            fit_router(X, y, calibration_coins=bad)


def test_a_chance_per_trace_decides_with_the_coins_and_is_checked():
    X, y = blobs(1000)
    coins = np.random.default_rng(8).random(1000)
    fraction = np.where(np.arange(1000) < 100, 1.0, 0.3)  # the first 100 always calibrate
    router = fit_router(X, y, calibration_coins=coins, calibration_fraction=fraction,
                        max_train=None)
    assert router.info["n_calibration"] == int((coins < fraction).sum())
    assert router.info["n_train"] == int((coins >= fraction).sum())
    assert router.info["calibration_fraction"] == [0.3, 1.0]
    for bad in (np.full(1000, -0.1), np.full(1000, 1.1), np.full(10, 0.5), 0.0, 1.0):
        with pytest.raises(ConfigError, match="calibration_fraction"):
            fit_router(X, y, calibration_fraction=bad)


def test_too_little_data_refuses():
    X, y = blobs(5)
    with pytest.raises(GateRefused):
        fit_router(X, y)
    X, y = blobs(100, k=1)
    with pytest.raises(GateRefused, match="two labels"):
        fit_router(X, y)


def test_small_data_fits_but_certifies_nothing_strict():
    X, y = blobs(60)
    router = fit_router(X, y, targets=(0.99,), serve_target=0.99)
    assert router.threshold is None
    assert "calibration traces" in router.certificate_for(0.99).reason


@pytest.mark.parametrize("kwargs", [{"serve_target": 0.0}, {"serve_target": 1.2},
                                    {"delta": 0.0}, {"calibration_fraction": 1.0},
                                    {"targets": (0.9, -1.0)}])
def test_bad_settings_are_clear_errors(kwargs):
    X, y = blobs(200)
    with pytest.raises(ConfigError):
        fit_router(X, y, **kwargs)


def test_bad_vectors_are_clear_errors():
    X, y = blobs(200)
    with pytest.raises(ConfigError, match="do not match"):
        fit_router(X[:100], y)
    X[3, 2] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        fit_router(X, y)


# -- the fused surrogate and the per-label guarantee ----------------------------------------------


def keyword_task(n: int, k: int = 6, seed: int = 0, noisy_label: int | None = None,
                 dim: int = 64):
    """Texts whose label is given by keywords, embedded by a hashing embedder of ``dim`` buckets;
    at 64 it is deliberately weak, so word and character n-grams carry what it loses."""
    from tracer_wrap.model.hashing import hashing_embedder

    rng = np.random.default_rng(seed)
    keywords = [[f"kw{i}x{j}" for j in range(12)] for i in range(k)]
    filler = [f"f{j}" for j in range(60)]
    y = rng.integers(0, k, n)
    texts = [" ".join([*rng.choice(keywords[i], 2), *rng.choice(filler, 5)]) for i in y]
    labels = np.array([f"label{i}" for i in y], dtype=object)
    if noisy_label is not None:
        # The teacher is unreliable on one label: 35% of its texts get a random other label.
        flip = (y == noisy_label) & (rng.random(n) < 0.35)
        shifts = rng.integers(0, k - 1, flip.sum())
        labels[flip] = [f"label{(noisy_label + 1 + j) % k}" for j in shifts]
    return texts, hashing_embedder(dim).embed(texts), labels


def test_text_model_serves_texts_and_the_embedding_model_serves_vectors():
    texts, X, y = keyword_task(3000)
    router = fit_router(X[:2000], y[:2000], texts=texts[:2000], targets=(0.9, 0.95))
    assert router.has_text_model and router.info["n_ngram_features"] > 0
    by_text = router.route_many(texts[2000:], X[2000:])
    by_vector = router.route_many(None, X[2000:])
    for one, many in ((router.route(texts[2000], X[2000]), by_text[0]),
                      (router.route(None, X[2000]), by_vector[0])):
        assert (one.label, one.local, one.threshold) == (many.label, many.local, many.threshold)
        assert one.score == pytest.approx(many.score, rel=1e-5)
    assert by_text[0].score != pytest.approx(by_vector[0].score, rel=1e-3)  # two surrogates
    for decisions, cert in ((by_text, router.certificate_for(0.95)),
                            (by_vector, router.certificate_for(0.95, text=False))):
        local = np.array([d.local for d in decisions])
        agree = np.array([d.label for d in decisions]) == y[2000:]
        assert cert.certified and local.any()
        assert agree[local].mean() >= 0.95
    # The n-grams see what the 16-d embedding loses: more is answered locally from text.
    assert router.certificate_for(0.95).coverage > router.certificate_for(0.95, text=False).coverage
    assert np.mean([d.local for d in by_text]) > np.mean([d.local for d in by_vector])


def test_per_label_guarantee_keeps_an_unreliable_label_off_the_local_path():
    _, X, y = keyword_task(6000, noisy_label=2, seed=1, dim=256)
    kwargs = {"targets": (0.95,), "calibration_fraction": 0.4, "C": 10.0}
    average = fit_router(X, y, **kwargs)
    per_label = fit_router(X, y, guarantee="per_label", **kwargs)
    cert = per_label.certificate_for(0.95)
    assert cert.guarantee == "per_label" and cert.certified
    thresholds = dict(zip(per_label.labels, cert.label_thresholds))
    assert thresholds["label2"] is None  # its answers agree ~65%: never answered locally
    assert sum(t is not None for t in thresholds.values()) >= 4
    # The average guarantee answers label2 locally, its errors hidden by the other labels.
    decisions = average.route_many(None, X)
    assert any(d.local and d.label == "label2" for d in decisions)
    assert not any(d.local and d.label == "label2" for d in per_label.route_many(None, X))
    assert per_label.info["guarantee"] == "per_label"


def test_the_served_router_is_exactly_the_certified_one():
    # The calibration rows, as fit_router draws them (the first draw of its seeded generator: one
    # coin per trace, below its chance): the router's own decisions on them, from text and from
    # vectors, reproduce the certificates.
    texts, X, y = keyword_task(1500)
    eligible = np.zeros(len(y), dtype=bool)
    eligible[:1000] = True
    targets = (0.9, 0.95, 0.99)
    router = fit_router(X, y, texts=texts, targets=targets,
                        calibration_fraction=np.where(eligible, 0.35, 0.0))
    rows = np.flatnonzero(eligible & (np.random.default_rng(0).random(len(y)) < 0.35))
    assert router.has_text_model and router.info["n_calibration"] == len(rows)
    assert router.certificate_for(0.9).certified
    assert router.certificate_for(0.9, text=False).certified
    for by_text in (True, False):
        for target in targets:
            router.target = target
            cert = router.certificate_for(target, text=by_text)
            one_by_one = [router.route(texts[i] if by_text else None, X[i]) for i in rows]
            local = np.array([d.local for d in one_by_one])
            assert local.mean() == pytest.approx(cert.coverage)
            if cert.certified:
                agree = np.array([d.label for d in one_by_one]) == y[rows]
                assert agree[local].mean() == pytest.approx(cert.agreement)


def test_the_fused_surrogate_trains_on_at_most_max_text_train_traces():
    texts, X, y = keyword_task(2000)
    router = fit_router(X, y, texts=texts, targets=(0.9,), max_text_train=500)
    assert router.info["n_text_train"] == 500
    assert router.info["n_train"] == 2000 - router.info["n_calibration"]
    decisions = router.route_many(texts[:200], X[:200])
    assert np.mean([d.label == t for d, t in zip(decisions, y[:200])]) > 0.9


def test_text_and_guarantee_settings_are_checked():
    texts, X, y = keyword_task(200)
    with pytest.raises(ConfigError, match="texts"):
        fit_router(X, y, texts=texts[:-1])
    with pytest.raises(ConfigError, match="guarantee"):
        fit_router(X, y, guarantee="everywhere")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="C"):
        fit_router(X, y, C=())


# -- the publish rule: incumbent and candidate certified on the same fresh draw at delta / 2 -------

def noisy_task(n: int, seed: int, k: int = 6, dim: int = 16):
    """Blobs whose teacher answers a random label 5% of the time (agreement tops out near 0.96)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, dim))
    c = rng.integers(0, k, n)
    X = centres[c] + 0.8 * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.where(rng.random(n) < 0.05, rng.integers(0, k, n), c)
    return X.astype(np.float32), np.array([f"label{i}" for i in y])


def served_agreement(router, X, y):
    decisions = router.route_many(None, X)
    local = np.array([d.local for d in decisions])
    agree = np.array([d.label for d in decisions]) == y
    return agree[local].mean() if local.any() else 1.0


def test_a_worse_candidate_is_not_published_and_a_better_one_is():
    X, y = noisy_task(6000, 1)
    kwargs = {"targets": (0.93,), "serve_target": 0.93, "C": 10.0}
    strong = fit_router(X[:2000], y[:2000], **kwargs)
    # A candidate trained on 60 traces against the incumbent fitted on 2000 (every later trace
    # is fresh to it): the incumbent, re-certified, keeps serving.
    kept = fit_router(X, y, max_train=60, incumbent=strong,
                      incumbent_fresh=np.arange(6000) >= 2000, **kwargs)
    assert kept.info["publish"]["served"] == "incumbent"
    assert np.array_equal(kept.weights, strong.weights) and kept.info["delta"] == 0.025
    assert kept.certificate_for(0.93).certified
    weak = fit_router(X[:300], y[:300], max_train=60, **kwargs)
    replaced = fit_router(X, y, incumbent=weak, incumbent_fresh=np.arange(6000) >= 300, **kwargs)
    record = replaced.info["publish"]
    assert record["served"] == "candidate"
    assert record["coverage"]["candidate"] > record["coverage"]["incumbent"]
    assert not np.array_equal(replaced.weights, weak.weights)
    # Too small a share of the calibration traces fresh to the incumbent: no contest, the
    # candidate alone is tested at the whole delta.
    alone = fit_router(X, y, incumbent=strong, incumbent_fresh=np.arange(6000) >= 5000, **kwargs)
    assert "publish" not in alone.info and alone.info["delta"] == 0.05


def test_no_contest_when_the_fresh_traces_are_too_few_to_test_the_incumbent_at_all():
    """Every calibration trace is fresh, but fewer than the gate needs at delta / 2: the contest
    would refuse the incumbent outright and only halve the candidate's delta."""
    X, y = noisy_task(2000, 3)
    kwargs = {"targets": (0.93,), "serve_target": 0.93, "C": 10.0}
    incumbent = fit_router(X[1000:], y[1000:], **kwargs)
    floor = min_calibration(0.93, 0.025)
    for n, contest in ((300, False), (700, True)):
        fitted = fit_router(X[:n], y[:n], incumbent=incumbent,
                            incumbent_fresh=np.ones(n, dtype=bool), **kwargs)
        n_cal = fitted.info["n_calibration"]
        assert (n_cal >= floor) == contest, (n, n_cal, floor)
        assert ("publish" in fitted.info) == contest
        assert fitted.info["delta"] == (0.025 if contest else 0.05)


def test_the_served_version_keeps_its_guarantee_at_delta_over_many_draws():
    delta, target, draws = 0.1, 0.92, 60
    X_truth, y_truth = noisy_task(100_000, 12345)
    incumbent = fit_router(*noisy_task(3000, 7), targets=(target,), serve_target=target, C=10.0)
    rng = np.random.default_rng(0)
    violations = certified = 0
    winners = {"candidate": 0, "incumbent": 0}
    for draw in range(draws):
        X, y = noisy_task(2000, 1000 + draw)
        # Candidates of varied quality, so either side wins in some draws.
        served = fit_router(X, y, targets=(target,), serve_target=target, delta=delta, C=10.0,
                            max_train=int(rng.choice([40, 200, 2000])), seed=draw,
                            incumbent=incumbent, incumbent_fresh=np.ones(len(y), dtype=bool))
        if served.certificate_for(target).certified:
            certified += 1
            winners[served.info["publish"]["served"]] += 1
            violations += served_agreement(served, X_truth, y_truth) < target
    assert certified > 0.8 * draws and min(winners.values()) >= 10  # both sides win, often
    assert violations / draws <= delta + 3 * np.sqrt(delta * (1 - delta) / draws)


def multimodal(n: int, k: int = 4, sub: int = 3, dim: int = 16, seed: int = 0):
    """Labels made of ``sub`` separate clusters each: a linear surrogate is confidently wrong
    between them, which its nearness to the label's own traces (the trust margin) reveals."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k * sub, dim))
    cluster = rng.integers(0, k * sub, n)
    X = centres[cluster] + 0.45 * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.array([f"label{i}" for i in cluster % k])


def test_the_trust_acceptor_is_chosen_where_it_certifies_more_and_served_as_certified():
    X, y = multimodal(3000)
    targets = (0.9, 0.98)
    router = fit_router(X[:2000], y[:2000], targets=targets)
    plain = fit_router(X[:2000], y[:2000], targets=targets, trust=False)
    assert router.info["trust_acceptor"] == {"embedding": True}
    assert router.prototypes is not None and plain.prototypes is None
    assert not plain.info["trust_acceptor"]["embedding"]
    assert (router.certificate_for(0.98).coverage
            > plain.certificate_for(0.98).coverage + 0.03)
    # The calibration rows (fit_router's first draw) reproduce the certificates one by one.
    rows = np.flatnonzero(np.random.default_rng(0).random(2000) < router.info[
        "calibration_fraction"])
    for target in targets:
        router.target = target
        cert = router.certificate_for(target)
        local = np.array([router.route(None, X[i]).local for i in rows])
        assert cert.certified and local.mean() == pytest.approx(cert.coverage)
        decisions = router.route_many(None, X[2000:])
        agree = np.array([d.label for d in decisions]) == y[2000:]
        held = np.array([d.local for d in decisions])
        assert agree[held].mean() >= target - 0.01


def test_no_trust_acceptor_for_the_per_label_guarantee_or_a_forced_global_one():
    X, y = multimodal(2000)
    for kwargs in ({"guarantee": "per_label"}, {"acceptor": "global"}):
        router = fit_router(X, y, targets=(0.9,), **kwargs)
        assert router.prototypes is None
        assert not any(router.info["trust_acceptor"].values())
