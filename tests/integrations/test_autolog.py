"""Zero-code mode: autolog patches the SDK classes once, the launcher needs no code change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import anthropic
import openai
import pytest
import wrapt
from _support import (
    REPO,
    TASK_OPTIONS,
    ask,
    easy_texts,
    fill_store,
)
from typer.testing import CliRunner

import tracer_wrap.integrations.zero_code as autolog_module
from tracer_wrap import flush
from tracer_wrap.integrations import is_local, wrap_openai
from tracer_wrap.integrations.zero_code import autolog, task_summaries
from tracer_wrap.ops.cli import app
from tracer_wrap.store import TraceStore


@pytest.fixture
def logging_on(store, embedder) -> Iterator:
    tasks = autolog(store=store, embedder=embedder, **TASK_OPTIONS)
    try:
        yield tasks
    finally:
        autolog.disable()


def test_autolog_is_idempotent_and_undone(store, embedder):
    original = openai.resources.chat.completions.Completions.create
    tasks = autolog(store=store, embedder=embedder)
    assert autolog(store=store) is tasks and autolog_module.enabled()
    assert openai.resources.chat.completions.Completions.create.__tracer_wrap_original__ is original
    autolog.disable()
    autolog.disable()
    assert openai.resources.chat.completions.Completions.create is original
    assert not autolog_module.enabled()


def test_disable_keeps_an_instrumentation_installed_after_autolog(server, store, embedder):
    # An OpenTelemetry-style instrumentation that patched the SDK method after autolog: undoing
    # autolog must not remove it; autolog's method beneath it passes calls through while off.
    completions = openai.resources.chat.completions.Completions
    original = completions.__dict__["create"]
    seen: list[str] = []

    def other(wrapped, instance, args, kwargs):
        seen.append(kwargs["messages"][-1]["content"])
        return wrapped(*args, **kwargs)

    try:
        autolog(store=store, embedder=embedder, **TASK_OPTIONS)
        wrapt.wrap_function_wrapper(completions, "create", other)
        oai = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
        for i in range(2):
            oai.chat.completions.create(model="m", messages=ask(f"refund #{i}"))
        autolog.disable()
        assert isinstance(completions.__dict__["create"], wrapt.FunctionWrapper)
        assert oai.chat.completions.create(
            model="m", messages=ask("refund #off")).choices[0].message.content == "refund"
        assert seen == ["refund #0", "refund #1", "refund #off"]
        flush()
        assert sum(store.count(task) for task in store.tasks()) == 1  # its second call only
    finally:
        autolog.disable()
        completions.create = original


def test_plain_clients_are_traced_by_template_and_route_only_when_switched_on(
        logging_on, server, store):
    oai = openai.OpenAI(base_url=server.base_url_openai, api_key="t", max_retries=0)
    claude = anthropic.Anthropic(base_url=server.base_url_anthropic, api_key="t", max_retries=0)
    for i in range(3):
        assert oai.chat.completions.create(
            model="m", messages=ask(f"refund #{i}")).choices[0].message.content == "refund"
        claude.messages.create(model="c", max_tokens=8,
                               messages=[{"role": "user", "content": f"top up #{i}"}])
    with oai.chat.completions.stream(model="m", messages=ask("fx fee #s")) as s:
        assert s.get_final_completion().choices[0].message.content == "exchange_rate"
    names = sorted(logging_on.tasks())
    assert len(names) == 2
    chat = next(n for n in names if n.startswith("openai.chat"))
    # A template becomes a task once it recurs: its first call in this process is left alone.
    flush()
    assert [t.teacher for t in store.traces(chat)] == ["refund"] * 2 + ["exchange_rate"]
    # A wrapped client under autolog is traced once, by the wrapper.
    wrapped = wrap_openai(oai, task="wrapped", store=store, embedder=logging_on.embedder,
                          **TASK_OPTIONS)
    wrapped.chat.completions.create(model="m", messages=ask("refund #w"))
    flush()
    assert store.count("wrapped") == 1 and store.count(chat) == 3

    # A router exists, but routing stays off until the task's switch is on.
    fill_store(store, chat, n=800)
    logging_on.task(chat).refit()
    text = easy_texts(1)[0]
    assert not is_local(oai.chat.completions.create(model="m", messages=ask(text)))
    store.set_setting(chat, "routing", True)
    logging_on.task(chat).serving.refresh()  # now, rather than within refresh_seconds
    calls = server.calls["chat.completions"]
    assert is_local(oai.chat.completions.create(model="m", messages=ask(text)))
    assert server.calls["chat.completions"] == calls

    flush()
    rows = {row["task"]: row for row in task_summaries(store)}
    assert rows[chat]["classification"] and rows[chat]["routing"] and rows[chat]["coverage"] > 0.5
    assert rows[chat]["distinct_outputs"] == 4 and not rows["wrapped"]["classification"]


def test_launcher_traces_a_plain_program_in_a_subprocess(server, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = '1'\n")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(f"""
        import os, openai
        assert os.environ.get("USER_SITE_RAN") == "1", (
            "the program's own sitecustomize must still run")
        client = openai.OpenAI(base_url={server.base_url_openai!r}, api_key="t", max_retries=0)
        for i in range(5):
            r = client.chat.completions.create(model="m", messages=[
                {{"role": "system", "content": "Classify."}},
                {{"role": "user", "content": f"refund #{{i}}"}}])
            assert r.choices[0].message.content == "refund"
        print("app done")
    """))
    store = tmp_path / "store"
    # The package under test comes first on the path (not another copy installed in the venv).
    path = os.pathsep.join([str(tmp_path), str(REPO)])
    done = subprocess.run([sys.executable, "-m", "tracer_wrap.ops.cli", "--store", str(store),
                           "run", "--", sys.executable, str(app)],
                          cwd=tmp_path, env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin",
                                             "TRACER_WRAP_EMBEDDER": "hashing"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "app done" in done.stdout
    flush()
    rows = task_summaries(TraceStore(store))
    # The template's first call is left alone (a prompt met once is no task); the rest is traced.
    assert len(rows) == 1 and rows[0]["calls"] == 4 and rows[0]["top_outputs"] == ["refund"]
    assert server.calls["chat.completions"] == 5


def test_tasks_command_prints_json_and_a_table(store):
    fill_store(store, "intent", n=40)
    runner = CliRunner()
    result = runner.invoke(app, ["--store", str(store.path), "tasks", "--json"])
    (row,) = json.loads(result.stdout)
    assert row["task"] == "intent" and row["calls"] == 40 and row["classification"]
    result = runner.invoke(app, ["--store", str(store.path), "tasks"])
    assert "intent" in result.stdout
    # The hint works when copied: it names the store it was given.
    hint = result.stdout.strip().splitlines()[-1].split(": ", 1)[1].replace("TASK", "intent")
    assert hint.startswith(f"tracer-wrap --store {store.path} routing")
    done = runner.invoke(app, hint.split()[1:])
    assert done.exit_code == 0, done.output
    assert store.get_setting("intent", "routing") is True


def test_run_needs_a_program():
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
