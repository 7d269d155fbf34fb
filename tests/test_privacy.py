"""Privacy: redaction before storing, hash-only audit tasks, retention after refit."""

from __future__ import annotations

import pytest
from _synthetic import make_traces
from _wait import until

from tracer_wrap import (
    Embedder,
    GateRefused,
    TracedTask,
    TraceStore,
    flush,
    names,
    traced_classifier,
)
from tracer_wrap.errors import ConfigError
from tracer_wrap.privacy import hash_input, hash_key, redact_pii


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
    key = hash_key(store, "audit")
    assert [t.input for t in traces] == [hash_input(text, key) for text, _ in rows]
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


# -- keyed hashes, and the same rule for every stored string -----------------------------------


def _hashed_task(store, embedder, task="audit", **options):
    return TracedTask(task, store=store, embedder=embedder, store_inputs="hash",
                      refit_every=None, audit_rate=0.0, **options)


def test_hashes_are_keyed_so_public_texts_cannot_be_confirmed(tmp_path, embedder,
                                                              monkeypatch):
    """The attack of the issue: hash the public Banking77 texts and look them up. With a keyed
    hash none matches; two stores have two keys; one input keeps one hash in its task."""
    import hashlib

    from tracer_wrap.lab.datasets import load_banking77

    monkeypatch.delenv(names.ENV_HASH_KEY, raising=False)
    texts = [text for text, _ in load_banking77("test")[:20]]
    first, second = TraceStore(tmp_path / "one"), TraceStore(tmp_path / "two")
    for st in (first, second):
        task = _hashed_task(st, embedder)
        for text in texts + texts[:5]:
            task.call(text, lambda: "card_arrival")
        task.flush()
    stored = [t.input for t in first.traces("audit")]
    assert len(stored) == 20 and sum(t.count for t in first.traces("audit")) == 25  # dedupe
    plain = {hashlib.sha256(t.encode()).hexdigest() for t in texts}
    assert not any(h.split(":", 1)[1] in plain for h in stored)
    assert not plain & {h[-64:] for h in stored}
    assert set(stored).isdisjoint(t.input for t in second.traces("audit"))  # different keys
    assert first.get_setting("audit", names.SETTING_HASH_KEY) \
        != second.get_setting("audit", names.SETTING_HASH_KEY)
    # A new process of the same task finds the same key: the same input, the same trace.
    again = _hashed_task(TraceStore(tmp_path / "one"), embedder)
    again.call(texts[0], lambda: "card_arrival")
    again.flush()
    assert first.count("audit") == 20


def test_the_hash_key_from_the_environment_replaces_the_stored_one(tmp_path, embedder,
                                                                   monkeypatch):
    monkeypatch.setenv(names.ENV_HASH_KEY, "operator secret")
    stores = [TraceStore(tmp_path / "one"), TraceStore(tmp_path / "two")]
    for st in stores:
        task = _hashed_task(st, embedder)
        task.call("where is my card", lambda: "card_arrival")
        task.flush()
        assert st.get_setting("audit", names.SETTING_HASH_KEY) is None  # not in the store
    assert stores[0].traces("audit")[0].input == stores[1].traces("audit")[0].input \
        == hash_input("where is my card", b"operator secret")


def test_every_stored_string_follows_the_rule(store, embedder, monkeypatch):
    """An invalid answer quoting the input and the strings of ``meta`` are redacted, then
    hashed, as the input is."""
    monkeypatch.delenv(names.ENV_HASH_KEY, raising=False)
    text = "my card 4111 1111 1111 1111 was charged twice, mail me at jane@example.com"
    task = _hashed_task(store, embedder, redact=redact_pii, labels=["refund", "card_lost"])
    plan = task.route(text)
    label = task.record(plan, f"I cannot classify '{text}'", meta={
        "user": "jane@example.com", "nested": {"quote": [text]}, "n": 3})
    assert label is None  # invalid: it names no label
    task.flush()
    [trace] = store.traces("audit")
    key = hash_key(store, "audit")
    assert trace.input == hash_input(redact_pii(text), key)
    assert trace.teacher == hash_input(redact_pii(f"I cannot classify '{text}'"), key)
    assert trace.meta == {"user": hash_input("<EMAIL>", key),
                          "nested": {"quote": [trace.input]}, "n": 3}
    raw = "".join(p.read_bytes().decode("latin-1") for p in store.path.rglob("*")
                  if p.is_file())
    assert "4111" not in raw and "jane" not in raw and "charged twice" not in raw


def test_an_answer_redaction_would_change_is_no_label_of_a_task_without_labels(
        store, embedder, tmp_path, monkeypatch):
    """Without declared labels any answer could be a label: one quoting an e-mail address is
    invalid instead, and stored redacted, on every path that reads answers."""
    task = TracedTask("free", store=store, embedder=embedder, redact="pii", min_traces=20,
                      refit_every=None)
    assert task.call("who handles this?", lambda: "escalate jane.doe@example.com") == \
        "escalate jane.doe@example.com"  # the caller gets the LLM's answer untouched
    assert task.call("and this one?", lambda: "refund") == "refund"
    assert task.flush()
    traces = {t.input: t for t in store.traces("free")}
    assert not traces["who handles this?"].valid
    assert traces["who handles this?"].teacher == "escalate <EMAIL>"
    assert traces["and this one?"].valid and traces["and this one?"].teacher == "refund"
    raw = "".join(p.read_bytes().decode("latin-1") for p in store.path.rglob("*")
                  if p.is_file())
    assert "jane" not in raw

    from tracer_wrap.ops.imports import discover, import_task

    monkeypatch.chdir(tmp_path)  # imports take the task's options from its configuration
    (tmp_path / "tracer_wrap.toml").write_text('[tasks.free]\nredact = "pii"\n',
                                               encoding="utf-8")
    lines = tmp_path / "calls.jsonl"
    lines.write_text('{"input": "x", "teacher": "mail bob@example.com"}\n'
                     '{"input": "y", "teacher": "refund"}\n', encoding="utf-8")
    (found,) = discover(lines).tasks
    result = import_task(TraceStore(tmp_path / "imported"), found, "free")
    assert result["lines"] == 1 and result["not_a_label"] == 1


def test_the_key_is_read_by_the_writer_never_on_the_request_path(tmp_path, embedder,
                                                                 monkeypatch):
    import threading

    monkeypatch.delenv(names.ENV_HASH_KEY, raising=False)
    reads: list[str] = []

    class Watched(TraceStore):
        def setdefault_setting(self, task, name, value):
            reads.append(threading.current_thread().name)
            return super().setdefault_setting(task, name, value)

    store = Watched(tmp_path / "s")
    task = _hashed_task(store, embedder)
    for i in range(30):
        task.call(f"hello {i}", lambda: "greeting")
    until(lambda: store.count("audit") == 30, "the background writer to write the traces")
    assert reads and threading.main_thread().name not in reads  # the background writer's
