"""``tracer-wrap import``: every format's sample file (``examples/imports``), discovery by prompt
template, importing only what is named, malformed files, and the formats' other shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tracer_wrap.errors import ConfigError
from tracer_wrap.ops.cli import app
from tracer_wrap.ops.imports import discover
from tracer_wrap.store import TraceStore

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "imports"
runner = CliRunner()
LABELS = ["card_lost", "exchange_rate", "refund", "top_up"]
SYSTEM = ("Classify the customer message into one of: card_lost, refund, top_up, exchange_rate. "
          "Answer with the label only.")
#: The task key of the samples' template (system prompt, "Customer message:\n{text}",
#: gpt-4o-mini): the key the gateway and autolog give live calls of that template.
KEY = "openai.chat:b19cb69170c23f770398"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TRACER_WRAP_STORE", raising=False)
    monkeypatch.chdir(tmp_path)  # no tracer_wrap.toml of the repository applies


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args), terminal_width=200)


@pytest.mark.parametrize("sample,fmt,records,skipped", [
    ("openai-chat.jsonl", "openai", 26, {}),
    ("langfuse-observations.json", "langfuse", 52,
     {"a SPAN observation, not a GENERATION": 26}),
    ("langsmith-runs.jsonl", "langsmith", 48, {"a chain run, not an llm run": 24}),
    ("otlp-genai-spans.json", "otlp", 48, {"not a GenAI span": 24}),
    ("helicone-requests.json", "helicone", 25, {"the call failed": 1}),
    ("traces.jsonl", "tracer", 24, {}),
    ("labelled.csv", "csv", 24, {}),
])
def test_every_sample_holds_one_classification_task(sample: str, fmt: str, records: int,
                                                    skipped: dict[str, int]) -> None:
    found = discover(SAMPLES / sample, model="gpt-4o-mini")
    assert (found.format, found.records, dict(found.skipped)) == (fmt, records, skipped)
    task = found.tasks[0].summary()
    assert task["records"] == task["inputs"] == 24 and task["labels"] == 4
    assert task["classification"] and set(task["top_labels"]) <= set(LABELS)
    if fmt in ("tracer", "csv"):
        assert task["task_key"] == "" and len(found.tasks) == 1
        return
    # One template, one key, whichever tool logged the calls; the free-form replies logged
    # next to them are a task of their own, not classification.
    assert task["task_key"] == KEY
    assert task["template"].endswith("| Customer message: {text}")
    assert {row[0] for row in found.tasks[0].rows} >= {"I lost my card on the train this morning"}
    assert all(not t.summary()["classification"] for t in found.tasks[1:])


def test_without_a_model_the_fine_tuning_file_gets_another_key() -> None:
    (first, _) = discover(SAMPLES / "openai-chat.jsonl").tasks
    assert first.key != KEY and first.model is None


def test_the_command_shows_the_tasks_and_imports_nothing_until_told(tmp_path: Path) -> None:
    store = tmp_path / "store"
    sample = str(SAMPLES / "langfuse-observations.json")
    shown = cli("--store", str(store), "import", sample)
    assert shown.exit_code == 0, shown.output
    assert KEY in shown.stdout and "classification?" in shown.stdout
    assert "skipped 26" in shown.stdout
    assert not store.exists() or TraceStore(store).tasks() == []
    as_json = json.loads(cli("--store", str(store), "import", sample, "--json").stdout)
    assert as_json["format"] == "langfuse" and as_json["records"] == 52
    assert [t["task_key"] for t in as_json["tasks"]][0] == KEY
    assert [t["classification"] for t in as_json["tasks"]] == [True, False]

    done = cli("--store", str(store), "import", sample, "--task-key", KEY[:16], "--as", "intent",
               "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"task": "intent", "lines": 24, "new_traces": 24,
                                       "not_a_label": 0, "not_a_label_top": []}
    traces = TraceStore(store).traces("intent")
    assert {t.teacher for t in traces} == set(LABELS) and {t.origin for t in traces} == {"import"}
    assert "I lost my card on the train this morning" in {t.input for t in traces}
    assert TraceStore(store).tasks() == ["intent"]


def test_all_imports_every_task_under_its_key(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = cli("--store", str(store), "import", str(SAMPLES / "openai-chat.jsonl"), "--all",
               "--model", "gpt-4o-mini", "--json")
    assert done.exit_code == 0, done.output
    imported = json.loads(done.stdout)["imported"]
    assert [(r["task"] == KEY, r["lines"]) for r in imported] == [(True, 24), (False, 2)]
    assert sorted(TraceStore(store).tasks()) == sorted(r["task"] for r in imported)


def test_flat_formats_import_into_the_task_named(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for sample in ("traces.jsonl", "labelled.csv"):
        done = cli("--store", str(store), "import", str(SAMPLES / sample), "--task", "flat")
        assert done.exit_code == 0, done.output
    assert TraceStore(store).count("flat") == 24  # the same 24 inputs twice
    assert sum(t.count for t in TraceStore(store).traces("flat")) == 48
    refused = cli("--store", str(store), "import", str(SAMPLES / "labelled.csv"), "--all")
    assert refused.exit_code == 2


def test_choosing_among_several_tasks_needs_a_key(tmp_path: Path) -> None:
    sample = str(SAMPLES / "openai-chat.jsonl")
    several = cli("--store", str(tmp_path / "s"), "import", sample, "--task", "x")
    assert several.exit_code == 1 and "holds 2 tasks" in several.stderr
    unknown = cli("--store", str(tmp_path / "s"), "import", sample, "--task-key", "nope")
    assert unknown.exit_code == 1 and "matches no task" in unknown.stderr
    ambiguous = cli("--store", str(tmp_path / "s"), "import", sample, "--task-key", "openai.")
    assert ambiguous.exit_code == 1 and "matches several tasks" in ambiguous.stderr


def test_imports_follow_the_tasks_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """Labels and what of an input is stored apply to imports as to live calls."""
    (tmp_path / "tracer_wrap.toml").write_text(
        '[tasks."hashed"]\nstore_inputs = "hash"\n'
        '[tasks."three"]\nlabels = ["card_lost", "refund", "top_up"]\n', encoding="utf-8")
    store = tmp_path / "store"
    sample = str(SAMPLES / "traces.jsonl")
    assert cli("--store", str(store), "import", sample, "--task", "hashed").exit_code == 0
    assert all(t.input.startswith("hmac-sha256:") for t in TraceStore(store).traces("hashed"))
    three = json.loads(cli("--store", str(store), "import", sample, "--task", "three",
                           "--json").stdout)
    assert three["lines"] == 18  # exchange_rate answers match no label of the task
    assert three["not_a_label"] == 6 and three["not_a_label_top"] == [["exchange_rate", 6]]
    said = cli("--store", str(tmp_path / "other"), "import", sample, "--task", "three")
    assert said.exit_code == 0
    assert "Left out 6 records whose answer names no label of three (most often:" \
        " 'exchange_rate' x6)" in " ".join(said.stdout.split())


# -- malformed files import nothing and say where ------------------------------------------


def _lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def fine_tuning(text: str = "hi", label: str = "refund") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text},
                         {"role": "assistant", "content": label}]}


@pytest.mark.parametrize("name,content,where", [
    ("bad.jsonl", [fine_tuning(), fine_tuning("b"), "{not json", fine_tuning("c")], "bad.jsonl:3"),
    ("roles.jsonl", [fine_tuning(), {"messages": "nope"}], "roles.jsonl:2"),
    ("pairs.jsonl", [fine_tuning(), {"custom_id": "r1", "response": {"body": {}}}],
     "pairs.jsonl:2"),
    ("langfuse.json", json.dumps({"data": [
        {"type": "GENERATION", "input": [{"role": "user", "content": "a"}], "output": "refund"},
        {"input": "no type"}]}), "langfuse.json: record 2"),
    ("runs.jsonl", [{"run_type": "llm", "inputs": {"messages": [{"role": "user", "content": "a"}]},
                     "outputs": {"generations": [[{"text": "refund"}]]}},
                    {"run_type": "llm", "inputs": {"messages": [{"weird": 1}]}, "outputs": {}}],
     "runs.jsonl:2"),
    ("spans.json", json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]},
        {"attributes": "not a list"}]}]}]}), "spans.json: span 2"),
    ("helicone.json", json.dumps([{"request_body": {"model": "m", "messages": []},
                                   "response_body": {"choices": []}}, {"nope": 1}]),
     "helicone.json: record 2"),
    ("broken.json", '{"data": [\n  {"type": "GENERATION"},\n  oops\n]}', "broken.json:3"),
    ("labels.csv", "input,label\nhello,refund\nbye,\n", "labels.csv:3"),
    ("columns.csv", "question,answer_text\nhello,refund\n", "columns.csv:1"),
])
def test_a_malformed_file_imports_nothing_and_names_the_record(
        tmp_path: Path, name: str, content: Any, where: str) -> None:
    path = tmp_path / name
    if isinstance(content, list):
        _lines(path, content)
    else:
        path.write_text(content, encoding="utf-8")
    store = tmp_path / "store"
    fmt = {"runs.jsonl": "langsmith", "langfuse.json": "langfuse", "helicone.json": "helicone"}
    result = cli("--store", str(store), "import", str(path), "--all",
                 *(["--format", fmt[name]] if name in fmt else []))
    assert result.exit_code == 1, result.output
    assert where in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not store.exists() or TraceStore(store).tasks() == []


def test_an_undetectable_or_missing_file_is_an_error(tmp_path: Path) -> None:
    odd = _lines(tmp_path / "odd.jsonl", [{"what": "is this"}])
    result = cli("--store", str(tmp_path / "s"), "import", str(odd))
    assert result.exit_code == 1 and "--format" in result.stderr
    missing = cli("--store", str(tmp_path / "s"), "import", str(tmp_path / "none.json"))
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    with pytest.raises(ConfigError, match="unknown format"):
        discover(odd, "parquet")


# -- the formats' other shapes -------------------------------------------------------------


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def completion(label: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": label}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}


def rows_of(path: Path, fmt: str = "auto") -> list[tuple[str, object]]:
    return [row for task in discover(path, fmt).tasks for row in task.rows]


def test_openai_request_response_pairs_of_every_api(tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "classify", "parameters": {
        "type": "object", "properties": {"label": {"type": "string"}}}}}
    forced = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [{
                "id": "t", "type": "function",
                "function": {"name": "classify", "arguments": '{"label": "top_up"}'}}]}}]}
    path = _lines(tmp_path / "pairs.jsonl", [
        {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": ask("my card is gone")},
         "response": {"status_code": 200, "request_id": "r", "body": completion("card_lost")}},
        {"request": {"model": "m", "messages": ask("fx fee?"), "tools": [tool],
                     "tool_choice": "required"}, "response": forced},
        {"request": {"model": "gpt-4.1", "input": "refund me"}, "response": {
            "id": "resp", "object": "response", "status": "completed", "output": [{
                "type": "message", "role": "assistant", "id": "m", "status": "completed",
                "content": [{"type": "output_text", "text": "refund", "annotations": []}]}]}},
        {"request": {"model": "claude", "max_tokens": 5, "system": SYSTEM,
                     "messages": [{"role": "user", "content": "top it up"}]},
         "response": {"id": "msg", "type": "message", "role": "assistant", "model": "claude",
                      "content": [{"type": "text", "text": "top_up"}], "stop_reason": "end_turn",
                      "usage": {"input_tokens": 9, "output_tokens": 1}}},
        {"body": {"model": "m", "messages": ask("x")},
         "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}}},
    ])
    found = discover(path)
    assert sorted(row for t in found.tasks for row in t.rows) == [
        ("fx fee?", "top_up"), ("my card is gone", "card_lost"), ("refund me", "refund"),
        ("top it up", "top_up")]
    assert {t.api for t in found.tasks} == {"openai.chat", "openai.responses",
                                            "anthropic.messages"}
    assert dict(found.skipped) == {"the call failed": 1}


def test_langfuse_traces_with_nested_observations_and_string_payloads(tmp_path: Path) -> None:
    path = tmp_path / "traces.json"
    path.write_text(json.dumps([{"id": "t1", "name": "ticket", "observations": [
        {"type": "SPAN", "name": "route"},
        {"type": "GENERATION", "model": "gpt-4o-mini", "input": json.dumps(ask("lost my card")),
         "output": json.dumps({"role": "assistant", "content": '{"label": "card_lost"}'})},
        {"type": "GENERATION", "model": "gpt-4o-mini", "input": {"messages": ask("money back")},
         "output": completion("refund"), "modelParameters": {"temperature": "0"}},
        {"type": "GENERATION", "level": "ERROR", "input": ask("x"), "output": None},
    ]}]), encoding="utf-8")
    found = discover(path)
    assert found.format == "langfuse"
    assert sorted(row for t in found.tasks for row in t.rows) == [("lost my card", "card_lost"),
                                                                  ("money back", "refund")]


def test_langsmith_runs_from_the_openai_wrapper_and_anthropic(tmp_path: Path) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"runs": [
        {"run_type": "llm", "name": "ChatOpenAI",
         "inputs": {"messages": ask("lost my card"), "model": "gpt-4o-mini"},
         "outputs": completion("card_lost")},
        {"run_type": "llm", "name": "ChatAnthropic",
         "inputs": {"messages": [[{"type": "system", "content": SYSTEM},
                                  {"type": "human", "content": "money back"}]]},
         "outputs": {"generations": [[{"text": "", "message": {
             "type": "ai", "content": "", "tool_calls": [
                 {"name": "classify", "args": {"label": "refund"}, "id": "t"}]}}]]},
         "extra": {"metadata": {"ls_provider": "anthropic", "ls_model_name": "claude-3-5"}}},
        {"run_type": "llm", "error": "RateLimitError", "inputs": {"messages": ask("x")}},
        {"run_type": "llm", "inputs": {"prompts": ["Classify: fx fee"]},
         "outputs": {"generations": [[{"text": " exchange_rate"}]]}},
    ]}), encoding="utf-8")
    found = discover(path)
    assert sorted(row for t in found.tasks for row in t.rows) == [
        ("Classify: fx fee", "exchange_rate"), ("lost my card", "card_lost"),
        ("money back", "refund")]
    assert {t.api for t in found.tasks} == {"openai.chat", "anthropic.messages"}
    assert dict(found.skipped) == {"the call failed": 1}


def _attrs(values: dict[str, Any]) -> list[dict[str, Any]]:
    def value(v: Any) -> dict[str, Any]:
        if isinstance(v, int):
            return {"intValue": str(v)}
        if isinstance(v, dict):
            return {"kvlistValue": {"values": _attrs(v)}}
        return {"stringValue": v}
    return [{"key": k, "value": value(v)} for k, v in values.items()]


def test_otlp_spans_of_every_generation_of_the_genai_conventions(tmp_path: Path) -> None:
    base = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini"}
    spans = [
        # OpenLLMetry's indexed attributes.
        {"attributes": _attrs({**base, "gen_ai.prompt.0.role": "system",
                               "gen_ai.prompt.0.content": SYSTEM, "gen_ai.prompt.1.role": "user",
                               "gen_ai.prompt.1.content": "lost my card",
                               "gen_ai.completion.0.role": "assistant",
                               "gen_ai.completion.0.content": "card_lost"})},
        # 1.28-1.36: message events.
        {"attributes": _attrs({**base, "gen_ai.operation.name": "chat"}), "events": [
            {"name": "gen_ai.system.message", "attributes": _attrs({"content": SYSTEM})},
            {"name": "gen_ai.user.message", "attributes": _attrs({"content": "money back"})},
            {"name": "gen_ai.choice", "attributes": _attrs({
                "index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "refund"}})}]},
        # The oldest: prompt and completion events with JSON.
        {"attributes": _attrs(base), "events": [
            {"name": "gen_ai.content.prompt",
             "attributes": _attrs({"gen_ai.prompt": json.dumps(ask("top up failed"))})},
            {"name": "gen_ai.content.completion", "attributes": _attrs({
                "gen_ai.completion": json.dumps([{"role": "assistant", "content": "top_up"}])})}]},
        # 1.37+ with a forced tool call answer, from Anthropic.
        {"attributes": _attrs({
            "gen_ai.provider.name": "anthropic", "gen_ai.request.model": "claude",
            "gen_ai.operation.name": "chat",
            "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                {"type": "text", "content": "fx fee?"}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"type": "tool_call", "name": "classify",
                 "arguments": {"label": "exchange_rate"}}]}])})},
        {"attributes": _attrs({**base, "gen_ai.operation.name": "embeddings"})},
        {"attributes": _attrs(base), "status": {"code": 2}},
        {"attributes": _attrs({**base, "gen_ai.operation.name": "chat"})},
        # An image input is no text classification.
        {"attributes": _attrs({**base, "gen_ai.input.messages": json.dumps([{
            "role": "user", "parts": [{"type": "text", "content": "what is this"},
                                      {"type": "blob", "modality": "image"}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"type": "text", "content": "a cat"}]}])})},
    ]
    lines = [json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
             for span in spans]
    path = tmp_path / "collector.jsonl"  # the collector's file exporter: a document per line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = discover(path)
    assert found.format == "otlp"
    assert sorted(row for t in found.tasks for row in t.rows) == [
        ("fx fee?", "exchange_rate"), ("lost my card", "card_lost"), ("money back", "refund"),
        ("top up failed", "top_up")]
    assert dict(found.skipped) == {
        "a embeddings span, not a chat": 1, "the call failed": 1,
        "no prompt content recorded (content capture off?)": 1,
        "not classification-shaped (free tools, several answers, not text, ...)": 1}


def test_helicone_anthropic_and_string_bodies(tmp_path: Path) -> None:
    path = tmp_path / "helicone.json"
    path.write_text(json.dumps({"data": [
        {"request_body": json.dumps({"model": "claude", "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "fx fee?"}]}),
         "response_body": json.dumps({"type": "message", "role": "assistant", "id": "m",
                                      "content": [{"type": "text", "text": "exchange_rate"}]}),
         "provider": "ANTHROPIC", "request_path": "https://api.anthropic.com/v1/messages",
         "response_status": 200},
        {"request_body": {"model": "m", "messages": ask("refund pls")},
         "response_body": completion("refund"), "response_status": 200, "provider": "OPENAI"},
    ]}), encoding="utf-8")
    assert sorted(rows_of(path)) == [("fx fee?", "exchange_rate"), ("refund pls", "refund")]


def test_imported_traces_and_live_calls_through_the_gateway_share_a_task(tmp_path: Path) -> None:
    """Start warm: the task imported from another tool's log is the task the gateway puts live
    calls of the same template into, once it has seen the template (a few calls)."""
    import openai
    from llm_server import serve_llm
    from test_gateway import teacher, through, wait_for

    store = TraceStore(tmp_path / "store")
    done = cli("--store", str(store.path), "import", str(SAMPLES / "helicone-requests.json"),
               "--task-key", KEY)
    assert done.exit_code == 0, done.output
    with serve_llm(teacher) as upstream, through(upstream, store) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        for i in range(6):
            client.chat.completions.create(
                model="gpt-4o-mini", temperature=0, max_tokens=10, messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Customer message:\nrefund number {i} please"}])
        wait_for(lambda: sum(store.count(t) for t in store.tasks()) == 24 + 6, "six traces")
    # The learner needs four calls to see the template: from the fourth on, the imported task.
    assert store.count(KEY) == 24 + 3
    assert {t.input for t in store.traces(KEY)} >= {"refund number 5 please"}


# -- a bad record on line 6 imports nothing: every format, every kind of bad -------------------


def _sixth_input() -> str:
    lines = (SAMPLES / "traces.jsonl").read_text(encoding="utf-8").splitlines()
    return str(json.loads(lines[5])["input"])


@pytest.mark.parametrize("sample", ["openai-chat.jsonl", "langfuse-observations.json",
                                    "langsmith-runs.jsonl", "otlp-genai-spans.json",
                                    "helicone-requests.json", "traces.jsonl"])
def test_a_lone_surrogate_in_the_sixth_record_imports_nothing(tmp_path: Path,
                                                              sample: str) -> None:
    """The record parses, but its input is text no store can encode: the whole import is
    refused with the record's place, before any row is written."""
    text = _sixth_input()
    raw = (SAMPLES / sample).read_text(encoding="utf-8")
    assert text in raw
    path = tmp_path / sample
    path.write_text(raw.replace(text, "\\ud800" + text, 1), encoding="utf-8")
    store = tmp_path / "store"
    args = ["--task", "t"] if sample == "traces.jsonl" else ["--all", "--model", "gpt-4o-mini"]
    result = cli("--store", str(store), "import", str(path), *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert sample in result.stderr and "surrogate" in result.stderr
    if sample.endswith(".jsonl"):
        line = raw[:raw.index(text)].count("\n") + 1
        assert f"{sample}:{line}" in result.stderr
    assert not store.exists() or all(TraceStore(store).count(t) == 0
                                     for t in TraceStore(store).tasks())


@pytest.mark.parametrize("line6, why", [
    ('{"input": "   ", "teacher": "refund"}', "empty"),
    (json.dumps({"input": "x" * 20_001, "teacher": "refund"}), "longer"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"input": "a", "teacher": "refund", "n": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"input": "a", "teacher": 7}', "not a trace line"),
    ('{"input": "a"', "not valid JSON"),
])
def test_a_bad_sixth_line_imports_nothing_and_names_it(tmp_path: Path, line6: str,
                                                       why: str) -> None:
    lines = (SAMPLES / "traces.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path / "traces.jsonl"
    path.write_text("\n".join([*lines[:5], line6, *lines[6:]]) + "\n", encoding="utf-8")
    store = tmp_path / "store"
    result = cli("--store", str(store), "import", str(path), "--task", "t", "--format", "tracer")
    assert result.exit_code == 1, result.output
    assert "traces.jsonl:6" in result.stderr and why in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists() or TraceStore(store).count("t") == 0


def test_a_csv_with_bytes_that_are_not_utf8_on_line_6_imports_nothing(tmp_path: Path) -> None:
    lines = (SAMPLES / "labelled.csv").read_bytes().splitlines()
    path = tmp_path / "labelled.csv"
    path.write_bytes(b"\n".join([*lines[:5], b"caf\xe9 \xed\xa0\x80,refund", *lines[6:]]) + b"\n")
    store = tmp_path / "store"
    result = cli("--store", str(store), "import", str(path), "--task", "t")
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
    assert "labelled.csv:6" in result.stderr and "UTF-8" in result.stderr
    assert not store.exists() or TraceStore(store).count("t") == 0
