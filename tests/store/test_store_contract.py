"""The store contract, run against every store: diskcache (embedded) and Redis (a real server)."""

from __future__ import annotations

import numpy as np
import pytest
from _redis_server import REDIS_SERVER, RedisServer

from tracer_wrap.errors import ConfigError
from tracer_wrap.model.gate import Certificate
from tracer_wrap.model.ood import OODScorer
from tracer_wrap.model.router import Router
from tracer_wrap.store import (
    NewTrace,
    Origin,
    Store,
    Trace,
    TraceStore,
    decode_vectors,
    encode_vectors,
    open_store,
)
from tracer_wrap.versions import load_ood, load_version, publish


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["diskcache", "redis"])
def any_store(request, tmp_path) -> Store:
    if request.param == "diskcache":
        yield open_store(str(tmp_path / "store"))
        return
    server = request.getfixturevalue("redis_server")
    store = open_store(server.url)
    store._client.flushdb()
    yield store
    store.close()


def test_open_store_picks_the_backend(tmp_path):
    assert isinstance(open_store(str(tmp_path / "s")), TraceStore)
    disk = TraceStore(tmp_path / "s")
    assert open_store(disk) is disk
    assert isinstance(disk, Store)


def test_dedup_seq_and_tally(any_store):
    s = any_store
    a = s.append("t", "hello", "greet", ts=1.0, meta={"k": 1})
    s.append("t", "bye", "leave", origin=Origin.AUDIT, router_label="leave")
    b = s.append("t", "hello", "other")
    c = s.append("t", "hello", "greet")
    assert (a.seq, b.seq, c.seq) == (1, 1, 1)
    assert c.count == 3 and c.labels == {"greet": 2, "other": 1} and c.teacher == "greet"
    traces = s.traces("t")
    assert [t.input for t in traces] == ["hello", "bye"] and s.count("t") == 2
    assert traces[0].meta == {"k": 1} and traces[0].ts == 1.0 and traces[0].count == 3
    assert traces[1].origin == "audit" and traces[1].router_label == "leave"
    assert [t.input for t in s.iter_traces("t", start=1)] == ["bye"]
    s.append("t", "junk", "???", valid=False)
    assert len(s.traces("t", valid_only=True)) == 2 and s.tasks() == ["t"]


def test_any_text_and_label_read_back_exactly(any_store):
    # Redis reads a page of traces through one JSON document built by a server-side script.
    texts = ['quote " back\\slash /slash', "é ü 漢字 🙂", "line\nbreak\ttab\x01", "  spaced  ",
             '{"not": "a trace"}']
    labels = ["42", "label with spaces", "étiquette_🙂", "true", "null"]
    for text, label in zip(texts, labels):
        any_store.append("t", text, label)
        any_store.append("t", text, "other")
        any_store.append("t", text, label)
    read = any_store.traces("t")
    assert [t.input for t in read] == texts and [t.teacher for t in read] == labels
    assert all(t.labels == {label: 2, "other": 1} and t.count == 3
               for t, label in zip(read, labels))


def test_served_version_and_audit_probability_round_trip(any_store):
    s = any_store
    s.append_many("t", [NewTrace("audited", "a", origin="audit", served_version=3, audit_p=0.02),
                        NewTrace("plain", "b")])
    s.append("t", "audited", "a")  # a repeat keeps what the first sighting recorded
    audited, plain = s.traces("t")
    assert (audited.served_version, audited.audit_p, audited.count) == (3, 0.02, 2)
    assert (plain.served_version, plain.audit_p) == (None, None)
    # A trace written before the fields existed loads them as None.
    old = Trace.from_json('{"input": "x", "teacher": "y", "seq": 9}')
    assert (old.served_version, old.audit_p) == (None, None)


def test_vectors_are_stored_with_their_trace_checked_and_pruned_with_it(any_store):
    s = any_store
    vectors = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    raws = encode_vectors("emb", vectors)
    assert all(isinstance(raw, bytes) and len(raw) == 8 + 2 * 8 for raw in raws)  # float16
    a, b, c = s.append_many("t", [NewTrace("a", "x", vector=raws[0]), NewTrace("b", "y"),
                                  NewTrace("c", "x")])
    s.put_vectors("t", {c.seq: raws[2]})
    got = s.get_vectors("t", [a.seq, b.seq, c.seq, 99])
    assert got[1] is None and got[3] is None
    matrix, found = decode_vectors("emb", got)
    assert found.tolist() == [True, False, True, False] and matrix.dtype == np.float32
    assert np.allclose(matrix[[0, 2]], vectors[[0, 2]], atol=2e-3) and not matrix[1].any()
    # Another embedder's name, another dimension, a truncated or altered vector: missing.
    assert not decode_vectors("other", got)[1].any()
    assert not decode_vectors("emb", got, dim=16)[1].any()
    damaged = [got[0][:-2], got[0][:4] + b"\0" * (len(got[0]) - 4), got[2]]
    assert decode_vectors("emb", damaged)[1].tolist() == [False, False, True]
    s.prune("t", max_traces=2)  # drops "a" with its vector
    assert s.get_vectors("t", [a.seq, c.seq])[0] is None
    assert s.get_vectors("t", [c.seq])[0] == raws[2]


def test_reads_across_pages_keep_order_and_skip_what_is_gone(any_store):
    s = any_store
    n = 1_234  # more than a page of every store's paged reads
    vectors = np.eye(n, 8, dtype=np.float32)[:, :8] + 1.0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    raws = encode_vectors("emb", vectors)
    traces = s.append_many("t", [NewTrace(f"text {i}", f"l{i % 3}", valid=i % 5 != 0,
                                          vector=raws[i] if i % 7 else None)
                                 for i in range(n)])
    s.prune("t", max_traces=n - 10)  # the ten oldest are gone
    kept = traces[10:]
    assert [t.seq for t in s.iter_traces("t")] == [t.seq for t in kept]
    assert [t.input for t in s.iter_traces("t", valid_only=True)] == \
        [t.input for t in kept if t.valid]
    assert [t.seq for t in s.iter_traces("t", start=600)] == [t.seq for t in kept if t.seq > 600]
    asked = [t.seq for t in reversed(traces)] + [n + 50]
    got = s.get_vectors("t", asked)
    want = [raws[t.seq - traces[0].seq] if t.seq in {k.seq for k in kept}
            and (t.seq - traces[0].seq) % 7 else None for t in reversed(traces)] + [None]
    assert got == want


def test_counters_settings_claims(any_store):
    s = any_store
    assert s.incr("t", "a") == 1 and s.incr("t", "a", 4) == 5 and s.counter("t", "b") == 0
    assert s.counters("t") == {"a": 5}
    assert s.get_setting("t", "x", 7) == 7
    s.set_setting("t", "x", {"y": [1]})
    assert s.get_setting("t", "x") == {"y": [1]} and s.settings("t") == {"x": {"y": [1]}}
    assert s.claim("t", "refit", ttl=0.2) and not s.claim("t", "refit", ttl=0.2)
    s.release("t", "refit")
    assert s.claim("t", "refit", ttl=0.05)
    import time
    time.sleep(0.15)
    assert s.claim("t", "refit", ttl=1)


def test_prune_keeps_dedup_consistent(any_store):
    s = any_store
    for i in range(10):
        s.append("t", f"x{i}", "l", ts=float(i))
    assert s.prune("t", max_traces=6) == 4
    assert [t.input for t in s.traces("t")] == [f"x{i}" for i in range(4, 10)]
    assert s.prune("t", max_age_seconds=0) == 6  # every ts is in 1970
    again = s.append("t", "x0", "l")
    assert again.seq == 11 and again.count == 1 and [t.seq for t in s.traces("t")] == [11]
    with pytest.raises(ConfigError):
        s.prune("t", max_traces=-1)


def _router(rng) -> Router:
    cert = Certificate(0.9, 0.5, 0.7, 0.95, 100, 0.9, "")
    # A version records its embedder: one that does not is never loaded.
    return Router(rng.normal(size=(3, 8)), rng.normal(size=3), ["a", "b", "c"], {0.9: cert},
                  target=0.9, info={"embedder": "test"})


def test_versions_and_artifacts_round_trip(any_store):
    s, rng = any_store, np.random.default_rng(0)
    router = _router(rng)
    ood = OODScorer(rng.normal(size=(3, 8)), 0.1)
    v = publish(s, "t", router, ood=ood)
    assert v == 1 and s.current_version("t") == 1 and [m["version"] for m in s.versions("t")] == [1]
    loaded = load_version(s, "t", 1)
    np.testing.assert_array_equal(loaded.weights, router.weights)
    assert load_ood(s, "t", 1).cut == pytest.approx(0.1)
    with pytest.raises(FileNotFoundError):
        s.read_artifact("t", "nope.npz")
    with pytest.raises(ConfigError):
        s.write_artifact("t", "../evil", b"")


def test_tampered_artifact_is_refused(any_store):
    from tracer_wrap.errors import RouterLoadError

    s = any_store
    publish(s, "t", _router(np.random.default_rng(1)))
    data = bytearray(s.read_artifact("t", "v1.npz"))
    data[-1] ^= 1
    s.write_artifact("t", "v1.npz", bytes(data))
    with pytest.raises(RouterLoadError, match="hash"):
        load_version(s, "t", 1)


@pytest.mark.parametrize("backend", ["diskcache", "redis"])
def test_traced_classifier_runs_unchanged_on_both_stores(backend, tmp_path, request, embedder):
    """Everything above the store works on either: log, refit, publish, answer locally."""
    from _synthetic import LABELS, make_traces

    from tracer_wrap import traced_classifier

    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        open_store(server.url)._client.flushdb()
        spec = server.url
    else:
        spec = str(tmp_path / "store")
    gold = dict(make_traces(1200, seed=2))
    calls: list[str] = []

    @traced_classifier(task="intents", labels=sorted(LABELS), store=spec, embedder=embedder,
                       min_traces=100, refit_every=None, audit_rate=0.0)
    def classify(text: str) -> str:
        calls.append(text)
        return gold[text]

    texts = list(gold)
    for text in texts[:600]:
        classify(text)
    assert classify.refit().threshold is not None
    calls.clear()
    answers = [classify(text) for text in texts[600:]]
    assert len(calls) < 300  # most calls never reached the function
    assert sum(a == gold[t] for a, t in zip(answers, texts[600:])) / 600 >= 0.95
    classify.flush()
    assert classify.task.store.count("intents") == 600 + len(calls)


def test_a_counter_batch_resent_after_a_lost_reply_counts_once(any_store):
    from tracer_wrap.accounting import Ledger
    from tracer_wrap.errors import StoreError

    class LostReply:
        """The store adds the first batch, then the reply is lost (a dropped connection)."""

        lost = 1

        def __getattr__(self, name):
            return getattr(any_store, name)

        def add_counters(self, task, deltas, *, batch=None):
            any_store.add_counters(task, deltas, batch=batch)
            if self.lost:
                self.lost -= 1
                raise StoreError("connection lost after the store ran the call")

    store = LostReply()
    ledger = Ledger(lambda: store, "t")
    ledger.add({"calls": 3, "llm": 2})
    assert not ledger.flush()  # the caller cannot know the store added it
    ledger.add({"calls": 1})
    assert ledger.flush()
    assert any_store.counters("t") == {"calls": 4, "llm": 2}


def test_a_claim_is_released_only_by_its_holder(any_store):
    import subprocess
    import sys

    # Another process takes the claim (a refit elsewhere, after this process's claim lapsed).
    take = ("import sys; from tracer_wrap.store import open_store;"
            " print(open_store(sys.argv[1]).claim('t', 'refit', ttl=600))")
    out = subprocess.run([sys.executable, "-c", take, str(any_store.path)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "True"
    any_store.release("t", "refit")  # not this process's: it stays theirs
    assert not any_store.claim("t", "refit", ttl=1)


@pytest.mark.parametrize("how", ["add_counters", "add_counters in a batch", "incr"])
def test_a_task_with_counters_and_no_trace_is_listed(any_store, how):
    # A task whose every answer the store refused (poisoned) still shows its counts.
    if how == "incr":
        any_store.incr("refused", "poisoned", 5)
    else:
        any_store.add_counters("refused", {"calls": 5, "poisoned": 5},
                               batch="b1" if how.endswith("batch") else None)
    assert any_store.tasks() == ["refused"] and any_store.counter("refused", "poisoned") == 5
