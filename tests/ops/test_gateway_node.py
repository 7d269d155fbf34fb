"""The gateway driven from Node by the official ``openai`` npm client (``examples/node``).

The package is pinned by ``examples/node/package-lock.json`` and installed with ``npm ci`` (by
``make test``, or here when it is missing). Skipped, saying why, without Node 20+ or npm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from llm_server import LLMServer, serve_llm
from test_gateway import KEY, easy_texts, teacher, through, wait_for

from tracer_wrap.store import TraceStore

pytest.importorskip("uvicorn")

NODE_DIR = Path(__file__).resolve().parents[2] / "examples" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the example's pinned openai package installed."""
    found = shutil.which("node")
    if found is None:
        pytest.skip("node is not installed: the Node test needs Node 20+ and npm")
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"node {version.strip()} is too old: the openai npm client needs Node 20+")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install the openai npm package")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"npm ci could not install the openai package: {done.stderr[-400:]}")
    return found


def run_node(node: str, url: str, *args: str) -> list[dict[str, Any]]:
    env = {**os.environ, "OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": KEY,
           "MODEL": "gpt-test"}
    done = subprocess.run([node, "classify.mjs", *args], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def upstream():
    with serve_llm(teacher) as server:
        yield server


def test_node_openai_client_through_the_gateway(node: str, upstream: LLMServer,
                                                tmp_path: Path) -> None:
    from _synthetic import make_traces

    store = TraceStore(tmp_path / "store")
    # One refit, at 300 traces (by default the first would come at 200).
    with through(upstream, store, routing=True, min_traces=300,
                 refit_every=300) as (url, application):
        # Enough traffic for the gateway's own background refit.
        traffic = [text for text, _ in make_traces(300, seed=5)]
        (tmp_path / "traffic.json").write_text(json.dumps(traffic), encoding="utf-8")
        answers = run_node(node, url, "--file", str(tmp_path / "traffic.json"))
        assert [a["label"] for a in answers] == [teacher(t) for t in traffic]
        assert not any(a["local"] for a in answers)
        assert upstream.calls["chat.completions"] == len(traffic)
        (task,) = store.tasks()
        wait_for(lambda: store.current_version(task) is not None, "a refit published a router")

        for flag in ("", "--stream"):
            before = upstream.calls["chat.completions"]
            texts = easy_texts(20, seed=len(flag))
            answers = run_node(node, url, *([flag] if flag else []), *texts)
            local = [a for a in answers if a["local"]]
            assert len(local) >= 15, flag
            assert [a["label"] for a in answers] == [teacher(t) for t in texts]
            assert upstream.calls["chat.completions"] - before == len(texts) - len(local)

        # Free-form chat reaches the upstream as sent and never enters the engine (a call that
        # did would be counted before its answer is sent).
        engine = application.state.gateway.tasks.task(task)
        before = upstream.calls["chat.completions"], engine.stats.calls
        (reply,) = run_node(node, url, "--chat", "Write a haiku about banks")
        assert reply["reply"] == "refund"  # what the fake LLM says to anything
        assert upstream.calls["chat.completions"] == before[0] + 1
        endpoint, body = upstream.requests[-1]
        assert body["tools"][0]["function"]["name"] == "search"
        assert [m["content"] for m in body["messages"]][-1] == "Write a haiku about banks"
        assert engine.stats.calls == before[1]
    assert store.tasks() == [task]
