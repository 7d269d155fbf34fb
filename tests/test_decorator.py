"""@traced_classifier end to end on a real store: routing, logging, fail-open, bad input."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _synthetic import LABELS, make_traces
from _wait import until

from tracer_wrap import ConfigError, Embedder, TraceStore, flush, traced_classifier
from tracer_wrap.errors import EmbedderError


def make_classifier(store, embedder, **options):
    gold = dict(make_traces(1600, seed=1))
    calls: list[str] = []

    @traced_classifier(task="intents", labels=sorted(LABELS), store=store, embedder=embedder,
                       min_traces=100, refit_every=None, audit_rate=0.0, **options)
    def classify(text: str) -> str:
        calls.append(text)
        return gold[text]

    return classify, gold, calls


def test_calls_go_to_the_llm_until_a_router_is_fitted_then_easy_ones_are_answered_locally(
        store, embedder):
    classify, gold, calls = make_classifier(store, embedder)
    texts = list(gold)
    for text in texts[:800]:
        assert classify(text) == gold[text]
    assert len(calls) == 800 and classify.router is None
    router = classify.refit()
    assert router.threshold is not None
    calls.clear()
    answers = [classify(text) for text in texts[800:]]
    local = 800 - len(calls)
    assert local > 400
    agree = np.mean([a == gold[t] for a, t in zip(answers, texts[800:])])
    assert agree >= 0.95
    stats = classify.stats
    assert (stats.calls, stats.local, stats.llm) == (1600, local, 800 + len(calls))
    # Every call that went to the LLM became a trace; local answers did not.
    flush()
    assert store.count("intents") == 800 + len(calls)


def test_llm_outputs_are_normalised_and_invalid_ones_never_trained_on(store, embedder):
    outputs = iter(["  'Refund'. ", "TOP UP", "I'm sorry, I can't help with that", "refund"])

    @traced_classifier(task="t", labels=["refund", "top_up"], store=store, embedder=embedder)
    def classify(text: str) -> str:
        return next(outputs)

    results = [classify(f"text {i}") for i in range(4)]
    assert results[2] == "I'm sorry, I can't help with that"  # returned unchanged
    flush()
    traces = store.traces("t")
    assert [(t.teacher, t.valid) for t in traces] == [
        ("refund", True), ("top_up", True), ("I'm sorry, I can't help with that", False),
        ("refund", True)]
    assert classify.stats.invalid == 1


def test_async_functions_and_methods_are_supported(store, embedder):
    class Classifier:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @traced_classifier(task="method", store=store, embedder=embedder)
        def classify(self, text: str, *, hint: str = "") -> str:
            self.seen.append(text)
            return "a" if "a" in text else "b"

    @traced_classifier(task="async", store=store, embedder=embedder)
    async def aclassify(text: str) -> str:
        await asyncio.sleep(0)
        return "yes"

    c = Classifier()
    assert c.classify("banana", hint="x") == "a"
    assert c.seen == ["banana"]
    flush()
    assert store.traces("method")[0].input == "banana"
    assert inspect.iscoroutinefunction(aclassify)
    assert asyncio.run(aclassify("hello")) == "yes"
    flush()  # traces are written by the background worker
    assert store.traces("async")[0].teacher == "yes"
    assert aclassify.__name__ == "aclassify"


def test_methods_of_every_kind_read_their_text_whatever_their_first_parameter_is(store, embedder):
    class Classifier:
        @traced_classifier(task="named", store=store, embedder=embedder, text_arg="text")
        def named(me, text: str) -> str:  # not called self, on purpose
            return "a"

        @traced_classifier(task="positional", store=store, embedder=embedder)
        def positional(me, text: str) -> str:
            return "a"

        @traced_classifier(task="class", store=store, embedder=embedder)
        @classmethod
        def of_class(klass, text: str) -> str:
            return "a"

        @traced_classifier(task="async-class", store=store, embedder=embedder)
        @classmethod
        async def of_class_async(klass, text: str) -> str:
            return "a"

        @traced_classifier(task="static", store=store, embedder=embedder)
        @staticmethod
        def static(text: str) -> str:
            return "a"

    c = Classifier()
    answers = [c.named("one"), c.positional("two"), Classifier.of_class("three"),
               asyncio.run(Classifier.of_class_async("four")), c.static("five")]
    assert answers == ["a"] * 5
    flush()
    assert [store.traces(task)[0].input for task in
            ("named", "positional", "class", "async-class", "static")] == [
        "one", "two", "three", "four", "five"]


@pytest.mark.parametrize("text_arg", ["txt", 5, -1, True, 1.0])
def test_a_text_arg_the_function_does_not_have_fails_at_decoration_time(store, text_arg):
    with pytest.raises(ConfigError, match="text_arg"):
        traced_classifier(store=store, text_arg=text_arg)(lambda text, hint="": text)


def test_bare_decorator_names_the_task_after_the_function(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("TRACER_WRAP_STORE", str(tmp_path / "s"))

    @traced_classifier
    def sentiment(text):
        return "positive"

    sentiment.task._embedder = embedder
    assert sentiment("great") == "positive"
    flush()
    assert sentiment.task.store.tasks() == [f"{__name__}.test_bare_decorator_names_the_task_after"
                                            "_the_function.<locals>.sentiment"]


@pytest.mark.parametrize("text", ["", "   ", None, 42, b"bytes", "x" * 50_000])
def test_untraceable_inputs_go_to_the_function_and_log_nothing(store, embedder, text):
    seen = []

    @traced_classifier(task="t", store=store, embedder=embedder)
    def classify(text):
        seen.append(text)
        return "a"

    assert classify(text) == "a"
    assert seen == [text] and store.count("t") == 0
    assert classify.stats.skipped == 1


@pytest.mark.parametrize("options", [{"target": 0}, {"target": 1.5}, {"delta": 2},
                                     {"labels": []}, {"task": ""}, {"min_traces": 1}])
def test_bad_options_fail_at_decoration_time(options, store):
    with pytest.raises(ConfigError):
        traced_classifier(store=store, **options)(lambda text: text)


def test_fail_open_when_the_embedder_breaks(store, embedder, caplog):
    classify, gold, calls = make_classifier(store, embedder)
    for text in list(gold)[:400]:
        classify(text)
    classify.refit()

    def broken(texts):
        raise RuntimeError("model crashed")

    # Same name as the embedder the router was fitted with, so the version is served and the
    # failure is the model's.
    classify.task._embedder = Embedder.from_callable(broken, name=embedder.name)
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        results = [classify(text) for text in list(gold)[400:450]]
    assert results == [gold[t] for t in list(gold)[400:450]]
    assert len(calls) == 50
    faults = [r for r in caplog.records if "routing failed" in r.getMessage()]
    assert len(faults) == 1  # logged once for the storm, not per call
    assert classify.stats.errors == 50


def test_fail_open_when_the_router_file_is_corrupted(store, embedder, caplog):
    classify, gold, calls = make_classifier(store, embedder)
    texts = list(gold)
    for text in texts[:400]:
        classify(text)
    classify.refit()
    version = store.current_version("intents")
    path = store.router_dir("intents") / f"v{version}.npz"
    path.write_bytes(path.read_bytes()[:100])
    # A fresh process (a new decorator on the same store) must refuse the file and call the LLM.
    fresh, _, fresh_calls = make_classifier(store, embedder)
    with caplog.at_level(logging.WARNING, logger="tracer_wrap"):
        for text in texts[400:420]:
            assert fresh(text) == gold[text]
    assert len(fresh_calls) == 20
    assert any("router load failed" in r.getMessage() for r in caplog.records)


def test_fail_open_when_the_store_cannot_be_written(tmp_path, embedder):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store directory should be")

    @traced_classifier(task="t", store=str(blocker / "store"), embedder=embedder)
    def classify(text):
        return "a"

    assert [classify("hello"), classify("world")] == ["a", "a"]
    # Both answers stay buffered, and the background writer counts each failed write.
    until(lambda: classify.stats.errors >= 2, "the writer's faults to be counted")
    assert classify.stats.llm == 2
    blocker.unlink()  # the store can be created now: both answers are written
    assert classify.flush() and TraceStore(blocker / "store").count("t") == 2


def test_llm_errors_propagate_unchanged_and_log_no_trace(store, embedder):
    class RateLimited(Exception):
        pass

    @traced_classifier(task="t", store=store, embedder=embedder)
    def classify(text):
        raise RateLimited("429")

    with pytest.raises(RateLimited):
        classify("hello")
    assert store.count("t") == 0


def test_the_decorated_function_is_transparent(store, embedder):
    @traced_classifier(task="t", store=store, embedder=embedder)
    def classify(text: str, temperature: float = 0.0) -> str:
        """Docs."""
        return "a"

    assert classify.__doc__ == "Docs."
    assert list(inspect.signature(classify).parameters) == ["text", "temperature"]
    assert classify(text="by keyword") == "a"
    flush()
    assert store.traces("t")[0].input == "by keyword"


def test_embedder_errors_are_tracer_wrap_errors():
    with pytest.raises(EmbedderError):
        Embedder.from_callable(lambda ts: 1 / 0).embed_one("x")


# -- pickling: process pools ----------------------------------------------------------------------

POOLED_MODULE = '''
import os
from tracer_wrap import traced_classifier

@traced_classifier(task="pooled", store=os.environ["POOL_STORE"], embedder="hashing")
def classify(text):
    return "refund" if "refund" in text else "top_up"
'''

POOL_SCRIPT = '''
import concurrent.futures, multiprocessing, os, pickle, sys
import pooled

if __name__ == "__main__":
    method, how = sys.argv[1:]
    texts = [f"{word} #{how} {i}" for i in range(6) for word in ("refund", "top up")]
    assert pickle.loads(pickle.dumps(pooled.classify)) is pooled.classify
    context = multiprocessing.get_context(method)
    if how == "pool":
        with context.Pool(2) as pool:
            answers = pool.map(pooled.classify, texts)
            pool.close()
            pool.join()  # the workers end by themselves, writing their traces as they exit
    else:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            answers = list(executor.map(pooled.classify, texts))
    assert answers == [pooled.classify.__wrapped__(t) for t in texts], answers
    assert pooled.classify.stats.calls == 0  # every call ran in a worker
    print(len(texts))
'''


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["pool", "executor"])
def test_a_decorated_function_pickles_by_reference_for_process_pools(tmp_path, method, how):
    (tmp_path / "pooled.py").write_text(POOLED_MODULE)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "POOL_STORE": str(tmp_path / "store"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)])}
    out = subprocess.run([sys.executable, "-c", POOL_SCRIPT, method, how], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # The workers' calls are traced, by their own task of the same name, in the same store.
    store = TraceStore(tmp_path / "store")
    assert store.count("pooled") == int(out.stdout) == store.counters("pooled")["llm"]
