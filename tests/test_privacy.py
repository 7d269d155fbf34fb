"""Privacy: redaction before storing, hash-only audit tasks, retention after refit."""

from __future__ import annotations

import pytest
from _synthetic import make_traces

from tracer_wrap import Embedder, GateRefused, TracedTask, flush, traced_classifier
from tracer_wrap.errors import ConfigError
from tracer_wrap.privacy import hash_input, redact_pii


@pytest.mark.parametrize("text, expected", [
    ("write to jane.doe+bank@example.co.uk today", "write to <EMAIL> today"),
    ("card 4111 1111 1111 1111 was charged", "card <CARD> was charged"),
    ("card 4111-1111-1111-1111", "card <CARD>"),
    ("call +44 20 7946 0958 or (555) 123-4567", "call <PHONE> or <PHONE>"),
    ("order 4111 1111 1111 1112 failed", "order 4111 1111 1111 1112 failed"),  # fails Luhn
    ("top up of 20 EUR on 2024-01-02", "top up of 20 EUR on 2024-01-02"),  # dates stay
    ("no personal data here", "no personal data here"),
])
def test_redact_pii(text, expected):
    assert redact_pii(text) == expected


def test_redacted_text_is_stored_and_routed(store, embedder):
    """The router was fitted on redacted texts, so it routes the redacted text too."""
    seen: list[str] = []

    def spy(texts):
        seen.extend(texts)
        return embedder.embed(texts)

    gold = {f"{text} from a@b.com": label for text, label in make_traces(40)}

    @traced_classifier(task="t", store=store, embedder=embedder, redact=redact_pii,
                       min_traces=20, refit_every=None, audit_rate=0.0)
    def classify(text):
        return gold.get(text, "refund")

    for text in gold:
        classify(text)
    flush()
    assert all("a@b.com" not in t.input and "<EMAIL>" in t.input for t in store.traces("t"))
    classify.refit()
    classify.task._embedder = Embedder.from_callable(spy, name=embedder.name)
    classify("refund please, I am x@y.org")
    assert seen == ["refund please, I am <EMAIL>"]


def test_a_failing_redact_stores_nothing_and_never_breaks_the_call(store, embedder):
    def broken(text):
        raise RuntimeError("redactor bug")

    for redact in (broken, lambda text: None):
        task = TracedTask("t", store=store, embedder=embedder, redact=redact)
        assert task.call("my card 4111111111111111", lambda: "refund") == "refund"
        task.flush()  # the redact hook runs when the trace is written, off the call
        assert task.stats.errors == 1 and len(task.poisoned) == 1
    assert store.count("t") == 0


def test_hash_only_tasks_keep_labels_not_text_and_cannot_be_fitted(store, embedder):
    task = TracedTask("audit", store=store, embedder=embedder, store_inputs="hash",
                      min_traces=10, refit_every=5)
    rows = make_traces(30)
    for text, label in rows + rows[:5]:
        assert task.call(text, lambda label=label: label) == label
    flush()
    traces = store.traces("audit")
    assert len(traces) == 30 and sum(t.count for t in traces) == 35
    assert [t.input for t in traces] == [hash_input(text) for text, _ in rows]
    assert [t.teacher for t in traces] == [label for _, label in rows]
    with pytest.raises(GateRefused, match="audit-only"):
        task.refit()
    assert task.refit_in_background() is None or task.version is None
    assert task.stats.errors == 0


@pytest.mark.parametrize("options", [
    {"store_inputs": "sha1"}, {"redact": "yes"}, {"retention": {"max_rows": 3}},
    {"retention": {"max_traces": 0}}, {"retention": {"max_traces": 2.5}},
    {"retention": {"max_age_seconds": -1}}, {"retention": 5}, {"retention": {"max_traces": True}},
])
def test_bad_privacy_options_raise_config_error(store, options):
    with pytest.raises(ConfigError):
        TracedTask("t", store=store, **options)


def test_retention_prunes_the_store_after_each_refit(store, embedder):
    calls: list[tuple] = []

    class Pruning(type(store)):  # the store refactor adds prune(); this test does not need it
        def prune(self, task, *, max_traces=None, max_age_seconds=None, keep_after_seq=None):
            calls.append((task, max_traces, max_age_seconds, keep_after_seq))
            return 0

    pruning = Pruning(store.path)
    task = TracedTask("t", store=pruning, embedder=embedder, min_traces=20, refit_every=None,
                      retention={"max_traces": 100, "max_age_seconds": 3600})
    for text, label in make_traces(60):
        task.call(text, lambda label=label: label)
    task.refit()
    assert calls == [("t", 100, 3600.0, 60)]  # never beyond the 60 traces this refit saw


def test_retention_on_the_real_store(store, embedder):
    if not hasattr(store, "prune"):
        pytest.skip("TraceStore.prune lands with the store refactor")
    task = TracedTask("t", store=store, embedder=embedder, min_traces=20, refit_every=None,
                      retention={"max_traces": 50})
    rows = make_traces(120)
    for text, label in rows:
        task.call(text, lambda label=label: label)
    task.refit()
    assert [t.input for t in store.traces("t")] == [text for text, _ in rows[-50:]]
    task.call("refund after pruning", lambda: "refund")  # logging goes on after a prune
    flush()
    assert store.traces("t")[-1].input == "refund after pruning"


def test_a_failing_prune_keeps_the_published_router(store, embedder):
    class Broken(type(store)):
        def prune(self, task, **limits):
            raise OSError("disk error")

    task = TracedTask("t", store=Broken(store.path), embedder=embedder, min_traces=20,
                      refit_every=None, retention={"max_traces": 10})
    for text, label in make_traces(60):
        task.call(text, lambda label=label: label)
    assert task.refit() is not None and task.version == 1 and task.stats.errors == 1
