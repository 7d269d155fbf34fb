"""Every path of a call runs one engine: the decorator, a wrapped OpenAI client over real HTTP,
the sidecar over real HTTP and ``TracedTask.route`` make the same decisions on the same router
(out-of-distribution vetoes included), a drift-breaker trip stops local answers on all of them,
and ``tracer-wrap status`` and the HTML report show the calls, local answers and money saved
each process counted."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from _http import serving
from llm_server import serve_llm
from test_engine import CENTRES, EMBEDDER, label_of_text
from typer.testing import CliRunner

import tracer_wrap.names as n
from tracer_wrap import TracedTask, TraceStore, flush, traced_classifier, wrap_openai
from tracer_wrap.integrations import is_local
from tracer_wrap.ops.cli import app
from tracer_wrap.ops.report import render_report
from tracer_wrap.ops.server import create_app
from tracer_wrap.store import Origin

LABELS = [f"l{k}" for k in range(4)]
PRICE = 0.002


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every path reads these from the environment: no random audits, no cached store reads."""
    monkeypatch.setenv("TRACER_WRAP_AUDIT_RATE", "0")
    monkeypatch.setenv("TRACER_WRAP_REFRESH_SECONDS", "0")
    monkeypatch.setenv("TRACER_WRAP_REFIT_EVERY", "never")
    monkeypatch.setenv("TRACER_WRAP_TARGET", "0.9")
    monkeypatch.setenv("TRACER_WRAP_PRICE_PER_CALL", str(PRICE))


def train(store: TraceStore, name: str) -> None:
    trainer = TracedTask(name, store=store, embedder=EMBEDDER, labels=LABELS, min_traces=100)
    for i in range(600):
        trainer.record(trainer.route(f"c{i % 4} train {i}"), f"l{i % 4}")
    trainer.refit()
    trainer.close()


def inputs() -> list[str]:
    easy = [f"c{i % 4} fresh {i}" for i in range(24)]
    far = [f"ood {a} {b}" for a in range(4) for b in range(4) if a != b]
    return easy + far


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Classify the input; answer with its label."},
            {"role": "user", "content": text}]


def decorated(store: TraceStore, name: str):
    llm_calls: list[str] = []

    @traced_classifier(task=name, store=store, embedder=EMBEDDER, labels=LABELS)
    def classify(text: str) -> str:
        llm_calls.append(text)
        return label_of_text(text)

    return classify, llm_calls


def test_every_path_makes_the_same_decisions_and_a_trip_stops_them_all(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "store")
    train(store, "t")
    texts = inputs()
    classify, llm_calls = decorated(store, "t")
    direct = TracedTask("t", store=store, embedder=EMBEDDER, labels=LABELS)

    def decisions_by_path(url: str, client: openai.OpenAI) -> dict[str, list[str | None]]:
        by_path: dict[str, list[str | None]] = {}
        plans = [direct.route(t) for t in texts]
        by_path["engine"] = [p.decision.label if p.local and p.decision else None for p in plans]
        out = []
        for text in texts:
            before = len(llm_calls)
            label = classify(text)
            out.append(label if len(llm_calls) == before else None)
        by_path["decorator"] = out
        out = []
        for text in texts:
            resp = client.chat.completions.create(model="m", messages=ask(text))
            out.append(resp.choices[0].message.content if is_local(resp) else None)
        by_path["openai"] = out
        routed = httpx.post(f"{url}/v1/tasks/t/route/batch", json={"texts": texts}).json()
        by_path["sidecar"] = [d["label"] if d["local"] else None for d in routed["decisions"]]
        one = [httpx.post(f"{url}/v1/tasks/t/route", json={"text": t}).json() for t in texts]
        by_path["sidecar one by one"] = [d["label"] if d["local"] else None for d in one]
        return by_path

    with serve_llm(label_of_text) as server, \
            serving(create_app(store, embedder=EMBEDDER)) as url, \
            openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, task="t", store=store, embedder=EMBEDDER, labels=LABELS)
        by_path = decisions_by_path(url, client)
        reference = by_path["engine"]
        for path, decisions in by_path.items():
            assert decisions == reference, path
        local = [d for d in reference if d is not None]
        assert len(local) >= 20 and all(d == label_of_text(t)
                                        for d, t in zip(reference, texts) if d is not None)
        # The surrogate alone would answer some of the far inputs; every path vetoed them.
        assert direct.stats.outliers > 0
        router = direct.router
        assert router is not None
        vetoed = [t for t, d in zip(texts, reference) if d is None and t.startswith("ood")
                  and router.route(None, _unit(EMBEDDER.embed_one(t))).local]
        assert vetoed

        store.set_setting("t", n.SETTING_BREAKER, {"version": 1, "reason": "test", "at": 0})
        tripped = decisions_by_path(url, client)
        for path, decisions in tripped.items():
            assert decisions == [None] * len(texts), path


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_status_and_report_show_what_each_path_counted(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "store")
    for name in ("deco", "client", "side"):
        train(store, name)
    texts = inputs()
    classify, _ = decorated(store, "deco")
    for text in texts:
        classify(text)
    with serve_llm(label_of_text) as server, \
            serving(create_app(store, embedder=EMBEDDER)) as url, \
            openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, task="client", store=store, embedder=EMBEDDER, labels=LABELS)
        for text in texts:
            client.chat.completions.create(model="m", messages=ask(text))
        for text in texts:
            plan = httpx.post(f"{url}/v1/tasks/side/route", json={"text": text}).json()
            if not plan["local"]:
                httpx.post(f"{url}/v1/tasks/side/traces", json={
                    "input": text, "teacher": label_of_text(text), "plan": plan["plan"],
                    "usage": {"input_tokens": 20, "output_tokens": 2}})
        sidecar_status = httpx.get(f"{url}/v1/tasks/side/status").json()
    flush()
    stats = {"deco": classify.stats, "client": client.tracer_wrap_tasks.task("client").stats}
    result = CliRunner().invoke(app, ["--store", str(store.path), "status", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["task"]: row for row in json.loads(result.stdout)["tasks"]}
    for name, process in stats.items():
        usage = rows[name]["usage"]
        # 600 calls and LLM answers trained the router before the process under test started.
        assert usage["calls"] == process.calls + 600 and process.calls == len(texts), name
        assert usage["local"] == process.local > 0, name
        assert usage["llm"] == process.llm + 600, name
        assert usage["llm_calls_avoided"] == process.local
        assert usage["saved"] == pytest.approx(process.local * PRICE)
    side = rows["side"]["usage"]
    assert side == sidecar_status["usage"]
    assert side["calls"] == len(texts) + 600 and side["local"] + side["llm"] - 600 == len(texts)
    assert side["input_tokens"] == 20 * (side["llm"] - 600)
    for name in ("deco", "client", "side"):
        page = render_report(store, name, embedder=EMBEDDER)
        usage = rows[name]["usage"]
        assert f"<div class=\"v\">{usage['local']:,}</div>" in page
        assert f"Saved so far: <strong>{usage['saved']:,.2f}</strong>" in page


def test_centres_are_well_separated() -> None:
    """The fixture task is what the tests assume: four distinct unit centres."""
    gram = CENTRES @ CENTRES.T
    assert np.allclose(np.diag(gram), 1) and np.abs(gram - np.eye(4)).max() < 0.8


def test_disabled_every_path_calls_the_llm_and_leaves_the_store_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$TRACER_WRAP_DISABLE`` turns tracer_wrap off on every path alike: each call reaches the
    LLM and nothing is routed, counted or traced (one accounting, even for the calls it skips)."""
    store = TraceStore(tmp_path / "store")
    train(store, "t")
    before = (store.count("t"), store.counters("t"))
    monkeypatch.setenv("TRACER_WRAP_DISABLE", "1")
    texts = inputs()[:6]  # inputs the router answers locally while enabled
    classify, llm_calls = decorated(store, "t")
    assert [classify(text) for text in texts] == [label_of_text(t) for t in texts]
    assert llm_calls == texts
    with serve_llm(label_of_text) as server, \
            serving(create_app(store, embedder=EMBEDDER)) as url, \
            openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, task="t", store=store, embedder=EMBEDDER, labels=LABELS)
        for text in texts:
            reply = client.chat.completions.create(model="m", messages=ask(text))
            assert not is_local(reply) and reply.choices[0].message.content == label_of_text(text)
        assert len(server.requests) == len(texts)
        for text in texts:
            plan = httpx.post(f"{url}/v1/tasks/t/route", json={"text": text}).json()
            assert not plan["local"] and "disabled" in plan["reason"]
            posted = httpx.post(f"{url}/v1/tasks/t/traces", json={
                "input": text, "teacher": label_of_text(text), "plan": plan["plan"]})
            assert posted.status_code < 300, posted.text
    assert flush()
    assert (store.count("t"), store.counters("t")) == before
    monkeypatch.delenv("TRACER_WRAP_DISABLE")
    assert classify(texts[0]) == label_of_text(texts[0]) and llm_calls == texts  # local again


def test_disabled_neither_creates_the_store_nor_refits(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tracer_wrap.errors import GateRefused

    monkeypatch.setenv("TRACER_WRAP_DISABLE", "1")

    @traced_classifier(task="t", store=tmp_path / "store", embedder=EMBEDDER, labels=LABELS)
    def classify(text: str) -> str:
        return label_of_text(text)

    texts = inputs()[:6]
    assert [classify(text) for text in texts] == [label_of_text(t) for t in texts]
    classify.task.step()  # what the background worker does
    assert flush()
    with pytest.raises(GateRefused, match="disabled"):
        classify.refit()
    assert not (tmp_path / "store").exists()


def test_every_path_answers_locally_in_the_llms_spelling(tmp_path: Path) -> None:
    """The router's labels are l0..l3 and the LLM answers L0..L3 (one label, spelled another way):
    a local answer is what the LLM would have returned, on every path."""
    store = TraceStore(tmp_path / "store")
    for i in range(600):  # traces spelled l0..l3, written without teaching a spelling
        store.append("t", f"c{i % 4} train {i}", f"l{i % 4}", origin=Origin.LLM)
    TracedTask("t", store=store, embedder=EMBEDDER, labels=LABELS, min_traces=100).refit()
    texts = inputs()[:24]  # answered locally
    calls: list[str] = []

    @traced_classifier(task="t", store=store, embedder=EMBEDDER, labels=LABELS)
    def classify(text: str) -> str:
        calls.append(text)
        return label_of_text(text).upper()

    for label in LABELS:  # one LLM answer per label teaches its spelling, to every process
        classify.task.record(None, label.upper(), text=f"teach {label}")
    assert flush()
    assert [classify(text) for text in texts] == [label_of_text(t).upper() for t in texts]
    assert len(calls) < len(texts) // 2  # most of them answered locally
    with serve_llm(lambda text: label_of_text(text).upper()) as server, \
            serving(create_app(store, embedder=EMBEDDER)) as url, \
            openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0) as raw:
        client = wrap_openai(raw, task="t", store=store, embedder=EMBEDDER, labels=LABELS)
        client.tracer_wrap_tasks.task("t")
        httpx.post(f"{url}/v1/tasks/t/route", json={"text": texts[0]})  # the sidecar's task
        assert flush()  # each new task reads the spellings the store holds
        replies = [client.chat.completions.create(model="m", messages=ask(t)) for t in texts]
        assert sum(is_local(r) for r in replies) > len(texts) // 2
        assert [r.choices[0].message.content for r in replies] == [
            label_of_text(t).upper() for t in texts]
        routed = httpx.post(f"{url}/v1/tasks/t/route/batch", json={"texts": texts}).json()
        local = [(d["label"], t) for d, t in zip(routed["decisions"], texts) if d["local"]]
        assert len(local) > len(texts) // 2
        assert all(label == label_of_text(t).upper() for label, t in local)
