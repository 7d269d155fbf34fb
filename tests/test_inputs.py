"""Inputs tracer_wrap cannot trust: a ``str`` subclass whose methods raise reaches the LLM as it
would without tracer_wrap, through the decorator and a wrapped OpenAI client, routed or not."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from _synthetic import LABELS, make_traces
from llm_server import LLMServer, serve_llm

from tracer_wrap import TracedTask, flush, traced_classifier
from tracer_wrap.integrations import wrap_openai

NAMES = sorted(LABELS)
OPTIONS = {"min_traces": 50, "refit_every": None, "audit_rate": 0.0, "breaker": False,
           "refresh_seconds": 0}


class Hostile(str):
    """Text whose Python-level methods all raise: only ``str``'s own C code can read it."""

    def _boom(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError("hostile str method")

    __hash__ = _boom  # type: ignore[assignment]
    __len__ = _boom  # type: ignore[assignment]
    __eq__ = _boom  # type: ignore[assignment]
    __iter__ = _boom  # type: ignore[assignment]
    __getitem__ = _boom  # type: ignore[assignment]
    __add__ = _boom  # type: ignore[assignment]
    __str__ = _boom  # type: ignore[assignment]
    __format__ = _boom  # type: ignore[assignment]
    encode = _boom  # type: ignore[assignment]
    strip = _boom  # type: ignore[assignment]
    lower = _boom  # type: ignore[assignment]
    split = _boom  # type: ignore[assignment]
    replace = _boom  # type: ignore[assignment]


def teacher(text: str) -> str:
    lowered = text.lower()
    hits = [(lowered.find(w), label) for label, words in LABELS.items()
            for w in words if w in lowered]
    return min(hits)[1] if hits else "refund"


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with serve_llm(teacher) as running:
        yield running


@pytest.mark.parametrize("fitted", [False, True], ids=["no-router", "router"])
def test_a_hostile_str_through_the_decorator(store, embedder, fitted: bool) -> None:
    rows = dict(make_traces(200))

    @traced_classifier(task="t", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
    def classify(text: str) -> str:
        return rows.get(str.__str__(text), "refund")

    if fitted:
        for text in rows:
            classify(text)
        classify.refit()
        assert classify.task.router is not None
    text = next(iter(rows))
    assert classify(Hostile(text)) == rows[text]
    flush()
    assert classify.task.stats.errors == 0
    stored = [t.input for t in store.traces("t")]
    assert stored.count(text) <= 1 and all(type(s) is str for s in stored)


@pytest.mark.parametrize("fitted", [False, True], ids=["no-router", "router"])
def test_a_hostile_str_through_a_wrapped_openai_client(server, store, embedder,
                                                       fitted: bool) -> None:
    raw = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
    client = wrap_openai(raw, task="intent", labels=NAMES, store=store, embedder=embedder,
                         **OPTIONS)

    def ask(sdk: openai.OpenAI, text: str) -> str | None:
        resp = sdk.chat.completions.create(model="m", messages=[{"role": "user",
                                                                  "content": text}])
        return resp.choices[0].message.content

    if fitted:
        task = TracedTask("intent", labels=NAMES, store=store, embedder=embedder, **OPTIONS)
        for text, label in make_traces(200):
            task.call(text, lambda label=label: label)
        task.refit()
    text = make_traces(1, seed=3)[0][0]
    hostile = Hostile(text)
    try:
        plain: object = ask(raw, hostile)
    except Exception as exc:  # the SDK's own handling of such a string, whatever it is
        plain = type(exc)
    try:
        wrapped: object = ask(client, hostile)
    except Exception as exc:
        wrapped = type(exc)
    assert wrapped == plain == teacher(text)  # the SDK itself sends such a string fine
