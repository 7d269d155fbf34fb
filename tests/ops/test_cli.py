"""Every tracer-wrap command, run the way a user runs it, against a real store in tmp_path.

The embedder is the tiny hashing one (``TRACER_WRAP_EMBEDDER=hashing``), so no model is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import httpx
import pytest
from _http import free_port
from _mount import read_only_view
from _synthetic import fill_store
from typer.testing import CliRunner

from tracer_wrap.ops.cli import app
from tracer_wrap.store import TraceStore

runner = CliRunner()


@pytest.fixture(autouse=True)
def _hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACER_WRAP_EMBEDDER", "hashing")
    monkeypatch.delenv("TRACER_WRAP_STORE", raising=False)


@pytest.fixture()
def store_dir(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    st = TraceStore(path)
    fill_store(st, "intent", 800)
    st.set_setting("intent", "price", {"per_call": 0.002})
    st.add_counters("intent", {"calls": 100, "local": 70, "llm": 30})
    return path


def cli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def fitted(store_dir: Path, *extra: str) -> dict:
    result = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "50", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_table_and_json(store_dir: Path) -> None:
    fitted(store_dir)
    st = TraceStore(store_dir)
    st.append("intent", "an audited input", "refund", origin="audit", router_label="refund")
    st.append("intent", "another audited one", "refund", origin="audit", router_label="top_up")
    st.set_setting("intent", "breaker", {"version": 1, "reason": "agreement fell", "at": 1.0})
    result = cli("--store", str(store_dir), "status")
    assert result.exit_code == 0, result.output
    for text in ("intent", "802 distinct inputs", "v1", "target 0.95", "50.0% on 2 audit",
                 "tripped", "70 answered locally", "0.14 saved on 70 LLM calls avoided"):
        assert text in result.stdout, text
    data = json.loads(cli("--store", str(store_dir), "status", "--json").stdout)
    row = data["tasks"][0]
    assert row["traces"] == 802 and row["valid"] == 802 and row["invalid"] == 0
    assert row["current_version"] == 1 and row["certified"] is True
    assert 0 < row["certified_coverage"] <= 1
    assert row["live_agreement"] == 0.5 and row["audit_samples"] == 2
    assert row["usage"]["saved"] == pytest.approx(0.14) and row["breaker"]["version"] == 1
    assert row["usage"]["local"] == 70 and row["usage"]["llm_calls_avoided"] == 70
    served = next(r for r in row["frontier"] if r["target"] == 0.95)
    assert served["saved_per_1000_calls"] == pytest.approx(2.0 * served["coverage"])


def test_global_store_from_environment(store_dir: Path) -> None:
    result = cli("status", "--json", env={"TRACER_WRAP_STORE": str(store_dir)})
    assert json.loads(result.stdout)["tasks"][0]["task"] == "intent"


def test_status_of_missing_store_or_task_is_a_clean_error(tmp_path: Path, store_dir: Path) -> None:
    result = cli("--store", str(tmp_path / "nowhere"), "status")
    assert result.exit_code == 1 and "no store at" in result.stderr
    assert "Traceback" not in result.output
    result = cli("--store", str(store_dir), "status", "other")
    assert result.exit_code == 1 and "no task 'other'" in result.stderr


def test_fit_publishes_and_prints_frontier(store_dir: Path) -> None:
    result = cli("fit", "intent", "--store", str(store_dir), "--min-traces", "50")
    assert result.exit_code == 0, result.output
    assert "◀ served" in result.stdout and "Serving version 1" in result.stdout
    data = fitted(store_dir, "--target", "0.9")
    assert data["version"] == 2 and data["current_version"] == 2
    assert {row["target"] for row in data["frontier"]} >= {0.9, 0.95}


def test_fit_with_too_few_traces_refuses_cleanly(store_dir: Path) -> None:
    result = cli("--store", str(store_dir), "fit", "intent")  # default min 200 ok; ask for more
    assert result.exit_code == 0
    result = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "5000")
    assert result.exit_code == 1 and "at least 5000" in result.stderr


def test_usage_errors_exit_2(store_dir: Path) -> None:
    assert cli("--store", str(store_dir), "fit", "intent", "--target", "1.5").exit_code == 2
    assert cli("--store", str(store_dir), "fit").exit_code == 2
    assert cli("no-such-command").exit_code == 2
    assert cli("--store", str(store_dir), "rollback", "intent", "zero").exit_code == 2


def test_versions_and_rollback(store_dir: Path) -> None:
    fitted(store_dir)
    fitted(store_dir, "--target", "0.9")
    data = json.loads(cli("--store", str(store_dir), "versions", "intent", "--json").stdout)
    assert [v["version"] for v in data["versions"]] == [1, 2] and data["current_version"] == 2
    table = cli("--store", str(store_dir), "versions", "intent").stdout
    assert "v2 ●" in table and "hashing" in table
    result = cli("--store", str(store_dir), "rollback", "intent", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"task": "intent", "previous_version": 2,
                                         "current_version": 1}
    assert TraceStore(store_dir).current_version("intent") == 1
    result = cli("--store", str(store_dir), "rollback", "intent", "9")
    assert result.exit_code == 1 and "not kept" in result.stderr


def test_export_then_import_round_trip(store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "traces.jsonl"
    result = cli("--store", str(store_dir), "export", "intent", "-o", str(out), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["exported"] == 800
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 800 and set(lines[0]) == {"input", "teacher"}
    fresh = tmp_path / "fresh"
    result = cli("--store", str(fresh), "import", str(out), "--task", "copy", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"task": "copy", "lines": 800, "new_traces": 800,
                                         "not_a_label": 0, "not_a_label_top": []}
    assert TraceStore(fresh).traces("copy")[0].origin == "import"


def test_import_of_malformed_or_missing_file_imports_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "teacher": "b"}\n{"input": "no teacher"}\n', encoding="utf-8")
    result = cli("--store", str(tmp_path / "s"), "import", str(bad), "--task", "t")
    assert result.exit_code == 1 and "bad.jsonl:2" in result.stderr
    assert TraceStore(tmp_path / "s").count("t") == 0
    result = cli("--store", str(tmp_path / "s"), "import", str(tmp_path / "none.jsonl"),
                 "--task", "t")
    assert result.exit_code == 1 and "no such file" in result.stderr


def test_export_of_unknown_task_fails(store_dir: Path, tmp_path: Path) -> None:
    result = cli("--store", str(store_dir), "export", "nope", "-o", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 1 and not (tmp_path / "x.jsonl").exists()


def test_report_writes_a_self_contained_html_file(store_dir: Path, tmp_path: Path) -> None:
    fitted(store_dir)
    out = tmp_path / "report.html"
    result = cli("--store", str(store_dir), "report", "intent", "-o", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") >= 2
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_before_any_fit_still_renders(store_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert cli("--store", str(store_dir), "report", "intent", "-o", str(out)).exit_code == 0
    assert "No router has been fitted yet" in out.read_text(encoding="utf-8")


def test_demo_calls_the_demo_module_with_extra_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("tracer_wrap.lab.demo")
    fake.main = lambda argv=None, prog=None: seen.append(list(argv or []))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tracer_wrap.lab.demo", fake)
    result = cli("demo", "--queries", "50")
    assert result.exit_code == 0 and seen == [["--queries", "50"]]


def test_console_script_entry_point_exit_codes(store_dir: Path) -> None:
    """The real entry point in a subprocess: one-line errors, exit codes 0/1/2."""
    env = {**os.environ, "TRACER_WRAP_EMBEDDER": "hashing", "TRACER_WRAP_STORE": str(store_dir)}
    base = [sys.executable, "-m", "tracer_wrap.ops.cli"]
    ok = subprocess.run([*base, "status", "--json"], env=env, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["tasks"]
    err = subprocess.run([*base, "versions", "missing"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert err.returncode == 1 and "Traceback" not in err.stderr
    assert err.stderr.strip().startswith("error: no task 'missing'")
    usage = subprocess.run([*base, "versions"], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2


def test_serve_runs_the_sidecar(store_dir: Path) -> None:
    fitted(store_dir)
    port = free_port()
    env = {**os.environ, "TRACER_WRAP_EMBEDDER": "hashing"}
    proc = subprocess.Popen([sys.executable, "-m", "tracer_wrap.ops.cli", "serve", "--store",
                             str(store_dir), "--port", str(port), "--token", "tok"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "sidecar did not come up"
            time.sleep(0.1)
        r = httpx.post(f"{base}/v1/tasks/intent/route", json={"text": "lost card stolen card"},
                       headers={"Authorization": "Bearer tok"})
        assert r.status_code == 200 and r.json()["label"] == "card_lost"
        assert httpx.post(f"{base}/v1/tasks/intent/route", json={"text": "x"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_read_commands_work_on_a_store_mounted_read_only(store_dir: Path, tmp_path: Path) -> None:
    fitted(store_dir)
    expected = json.loads(cli("--store", str(store_dir), "status", "--json").stdout)
    before = {p: p.read_bytes() for p in store_dir.rglob("*") if p.is_file()}
    with read_only_view(store_dir, tmp_path / "mnt") as view:
        status = cli("--store", str(view), "status", "--json")
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["tasks"] == expected["tasks"]
        assert json.loads(cli("--store", str(view), "tasks", "--json").stdout)
        assert cli("--store", str(view), "versions", "intent").exit_code == 0
        out = tmp_path / "out.jsonl"
        assert cli("--store", str(view), "export", "intent", "-o", str(out)).exit_code == 0
        assert len(out.read_text(encoding="utf-8").splitlines()) == 800
        page = tmp_path / "report.html"
        report = cli("--store", str(view), "report", "intent", "-o", str(page))
        assert report.exit_code == 0, report.output
        # A command that writes says why it cannot.
        refused = cli("--store", str(view), "fit", "intent", "--min-traces", "50")
        assert refused.exit_code == 1 and "not writable" in refused.output
    assert {p: p.read_bytes() for p in store_dir.rglob("*") if p.is_file()} == before


@pytest.fixture()
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A console 200 columns wide (its width is read once, when the CLI module is imported)."""
    from tracer_wrap.ops import cli as cli_module

    monkeypatch.setattr(cli_module.console, "width", 200)


def test_names_and_labels_from_the_store_print_as_they_are(tmp_path: Path, wide) -> None:
    # Task names come from callers and labels from LLMs: markup must not be read (``[/]``
    # raised, ``[link=...]`` made a hyperlink) and control characters must not reach the
    # terminal (``\x1b[2J`` clears it).
    path = tmp_path / "store"
    st = TraceStore(path)
    odd = "intent[/x] [link=http://evil.example]x[/link]"
    st.append(odd, "a question", "answer [/] done \x1b[2J")
    st.add_counters(odd, {"calls": 1, "llm": 1})
    for args in (("status",), ("tasks",), ("versions", odd), ("price", odd),
                 ("routing", odd, "on")):
        result = cli("--store", str(path), *args)
        assert result.exit_code == 0, (args, result.output)
        assert "\x1b" not in result.stdout, args
        if args != ("tasks",):
            assert odd in result.stdout, (args, result.stdout)
    shown = cli("--store", str(path), "tasks").stdout
    assert odd in shown and "answer [/] done \\x1b[2J" in shown


def test_the_tasks_table_never_cuts_a_task_key(tmp_path: Path) -> None:
    path = tmp_path / "store"
    key = "openai.chat:254af38a745c0e1d2b3a4f5e6d7c8b9a0f1e2d3c4b5a6978"
    TraceStore(path).append(key, "a question", "refund")
    shown = cli("--store", str(path), "tasks").stdout  # 80 columns: the key is folded
    assert key in "".join(line.split("│")[1].strip() for line in shown.splitlines()
                          if line.startswith("│"))


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(store_dir: Path, monkeypatch) -> None:
    from tracer_wrap.ops import status as status_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(status_module, "task_status", interrupted)
    result = cli("--store", str(store_dir), "status")
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted"


def test_demo_help_lists_the_demos_own_options() -> None:
    result = cli("demo", "--help")
    assert result.exit_code == 0
    assert "--queries" in result.stdout and "--target" in result.stdout


def test_help_texts_say_each_thing_once_and_truly() -> None:
    for name in ("serve", "gateway"):
        shown = " ".join(cli(name, "--help", env={"COLUMNS": "200"}).stdout.split())
        assert shown.count("TRACER_WRAP_TOKEN") == 1, shown
    report = " ".join(cli("report", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert "the embedder the served version was fitted with" in report


def test_a_server_needs_a_port_it_can_announce() -> None:
    # The banner names the URL to call: port 0 (any free port) would announce ":0".
    for name in ("serve", "gateway"):
        assert cli(name, "--port", "0").exit_code == 2
