"""Operating a store from the command line: routing, pins, prices, guarded fits, migrations, and
help and errors that read cleanly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _synthetic import fill_store
from typer.testing import CliRunner

import tracer_wrap.names as n
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
    fill_store(TraceStore(path), "intent", 800)
    return path


def cli(*args: str) -> object:
    return runner.invoke(app, list(args), catch_exceptions=False)


def fit(store_dir: Path, *extra: str) -> dict:
    result = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "50", "--json", *extra)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_routing_switch_on_off_default(store_dir: Path) -> None:
    store = TraceStore(store_dir)
    for switch, value in (("off", False), ("on", True), ("default", None), ("shadow", False)):
        result = cli("--store", str(store_dir), "routing", "intent", switch)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
        assert store.get_setting("intent", n.SETTING_ROUTING) is value
    assert cli("--store", str(store_dir), "routing", "intent", "maybe").exit_code == 2  # type: ignore[attr-defined]


def test_pin_keeps_a_version_through_refits_until_unpinned(store_dir: Path) -> None:
    fit(store_dir)
    assert cli("--store", str(store_dir), "pin", "intent", "1").exit_code == 0  # type: ignore[attr-defined]
    data = fit(store_dir)
    assert data["version"] == 2 and data["current_version"] == 1 and not data["published"]
    versions = json.loads(cli("--store", str(store_dir), "versions", "intent", "--json").stdout)  # type: ignore[attr-defined]
    assert versions["pinned_version"] == 1
    assert cli("--store", str(store_dir), "unpin", "intent").exit_code == 0  # type: ignore[attr-defined]
    assert fit(store_dir)["current_version"] == 3


def test_price_is_set_shown_and_cleared(store_dir: Path) -> None:
    result = cli("--store", str(store_dir), "price", "intent", "--per-call", "0.0004",
                 "--input-per-mtok", "0.15", "--json")
    data = json.loads(result.stdout)  # type: ignore[attr-defined]
    assert data["price"] == {"per_call": 0.0004, "input_per_mtok": 0.15, "output_per_mtok": 0.0}
    shown = cli("--store", str(store_dir), "price", "intent").stdout  # type: ignore[attr-defined]
    assert "0.0004 per call" in shown
    cli("--store", str(store_dir), "price", "intent", "--clear")
    assert TraceStore(store_dir).get_setting("intent", n.SETTING_PRICE) is None
    both = cli("--store", str(store_dir), "price", "intent", "--clear", "--per-call", "1")
    assert both.exit_code == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("option", ["--per-call", "--input-per-mtok", "--output-per-mtok"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_price_refuses_what_the_options_refuse(store_dir: Path, option: str, value: str) -> None:
    result = cli("--store", str(store_dir), "price", "intent", option, value)
    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    assert TraceStore(store_dir).get_setting("intent", n.SETTING_PRICE) is None
    status = cli("--store", str(store_dir), "status", "intent", "--json")
    json.loads(status.stdout, parse_constant=lambda c: pytest.fail(f"{c} in status --json"))  # type: ignore[attr-defined]


def test_a_non_finite_price_already_in_a_store_is_ignored(store_dir: Path) -> None:
    # Written by a release that did not refuse it (tracer-wrap price --per-call inf).
    TraceStore(store_dir).set_setting("intent", n.SETTING_PRICE, {"per_call": float("inf")})
    status = cli("--store", str(store_dir), "status", "intent", "--json")
    json.loads(status.stdout, parse_constant=lambda c: pytest.fail(f"{c} in status --json"))  # type: ignore[attr-defined]


def test_fit_never_serves_a_router_that_certifies_nothing_unless_forced(store_dir: Path) -> None:
    assert fit(store_dir)["current_version"] == 1
    # 0.999 cannot be certified from 800 traces: the version is saved, not served.
    strict = fit(store_dir, "--target", "0.999")
    assert strict["version"] == 2 and strict["current_version"] == 1 and not strict["published"]
    table = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "50",
                "--target", "0.999").stdout  # type: ignore[attr-defined]
    assert "0.999" in table and "1.00" not in table  # targets keep their digits
    assert "Kept version 1" in table
    forced = fit(store_dir, "--target", "0.999", "--force")
    assert forced["current_version"] == forced["version"] == 4 and forced["published"]


def test_fit_with_an_unknown_fit_option_in_the_file_is_a_one_line_error(
        store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tracer_wrap.toml").write_text("fit_options = {junk = 1}\n", encoding="utf-8")
    result = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "50")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert len(result.stderr.splitlines()) == 1 and "unknown fit option" in result.stderr  # type: ignore[attr-defined]
    assert TraceStore(store_dir).versions("intent") == []


def test_status_and_versions_say_a_tampered_served_version_is_refused(store_dir: Path) -> None:
    fit(store_dir)
    status = json.loads(cli("--store", str(store_dir), "status", "--json").stdout)  # type: ignore[attr-defined]
    assert status["tasks"][0]["refused"] is None
    npz = next(store_dir.glob("routers/*/v1.npz"))
    data = bytearray(npz.read_bytes())
    data[200:204] = b"XXXX"
    npz.write_bytes(bytes(data))
    status = json.loads(cli("--store", str(store_dir), "status", "--json").stdout)  # type: ignore[attr-defined]
    assert "hash mismatch" in status["tasks"][0]["refused"]
    table = cli("--store", str(store_dir), "status", "intent").stdout  # type: ignore[attr-defined]
    assert "REFUSED" in table and "coverage certified" not in table
    versions = cli("--store", str(store_dir), "versions", "intent", "--json").stdout  # type: ignore[attr-defined]
    assert "hash mismatch" in json.loads(versions)["refused"]
    table = cli("--store", str(store_dir), "versions", "intent").stdout  # type: ignore[attr-defined]
    assert "REFUSED" in table
    # The report, the diagnostic of such a store, still renders and says why.
    report = cli("--store", str(store_dir), "report", "intent", "-o",
                 str(store_dir.parent / "report.html"))
    assert report.exit_code == 0, report.output  # type: ignore[attr-defined]
    page = (store_dir.parent / "report.html").read_text(encoding="utf-8")
    assert "v1 refused" in page and "hash mismatch" in page


def test_fit_refuses_another_embedder_than_the_served_one_unless_forced(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fit(store_dir)
    result = cli("--store", str(store_dir), "fit", "intent", "--min-traces", "50",
                 "--embedder", "all-MiniLM-L6-v2")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "fitted with embedder 'hashing'" in result.stderr  # type: ignore[attr-defined]
    assert TraceStore(store_dir).current_version("intent") == 1


def test_migrate_refuses_a_missing_source_and_runs_again_without_doubling(
        store_dir: Path, tmp_path: Path) -> None:
    missing = cli("migrate", "--from", str(tmp_path / "nowhere"), "--to", str(tmp_path / "dst"))
    assert missing.exit_code == 1 and "no store at" in missing.stderr  # type: ignore[attr-defined]
    assert not (tmp_path / "dst").exists()
    source = TraceStore(store_dir)
    fit(store_dir)
    source.add_counters("intent", {"calls": 10, "local": 7})
    for _ in range(2):
        result = cli("migrate", "--from", str(store_dir), "--to", str(tmp_path / "dst"))
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    dst = TraceStore(tmp_path / "dst")
    assert dst.count("intent") == 800 and sum(t.count for t in dst.traces("intent")) == 800
    assert dst.counter("intent", "local") == 7 and dst.counter("intent", "calls") == 10
    assert dst.current_version("intent") == 1
    # Incremental: what the source gained since is copied, once.
    source.append("intent", "a new input after the first migration", "refund")
    source.add_counters("intent", {"local": 3})
    cli("migrate", "--from", str(store_dir), "--to", str(tmp_path / "dst"))
    assert dst.count("intent") == 801 and dst.counter("intent", "local") == 10


def test_migrate_refuses_a_store_into_itself_under_another_spelling(
        store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(store_dir.parent)
    (store_dir.parent / "alias").symlink_to(store_dir)
    for other in ("./store", str(store_dir / ".." / "store"), "alias"):
        result = cli("migrate", "--from", str(store_dir), "--to", other)
        assert result.exit_code == 1  # type: ignore[attr-defined]
        assert "same store" in result.stderr and len(result.stderr.splitlines()) == 1  # type: ignore[attr-defined]
    assert sum(t.count for t in TraceStore(store_dir).traces("intent")) == 800


def test_migrate_again_keeps_what_the_destination_changed(store_dir: Path, tmp_path: Path) -> None:
    dst_dir = str(tmp_path / "dst")
    fit(store_dir)
    cli("--store", str(store_dir), "routing", "intent", "on")
    assert cli("migrate", "--from", str(store_dir), "--to", dst_dir).exit_code == 0  # type: ignore[attr-defined]
    dst = TraceStore(dst_dir)
    assert dst.current_version("intent") == 1 and dst.get_setting("intent", "routing") is True
    # The destination refits and switches routing off; the source publishes a version too.
    assert fit(Path(dst_dir), "--target", "0.9")["current_version"] == 2
    cli("--store", dst_dir, "routing", "intent", "off")
    source_fit = fit(store_dir, "--force")
    assert source_fit["current_version"] == 2
    for _ in range(2):
        result = cli("migrate", "--from", str(store_dir), "--to", dst_dir)
        assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert dst.current_version("intent") == 2  # the destination's refit, not the source's
    assert dst.get_setting("intent", "routing") is False
    kept = dst.versions("intent")
    # The source's v2 is copied once, as v3 (v2 is the destination's own), and burns no number.
    assert [m["version"] for m in kept] == [1, 2, 3]
    assert kept[2]["saved_at"] == TraceStore(store_dir).manifest("intent", 2)["saved_at"]  # type: ignore[index]
    assert dst.reserve_version("intent") == 4
    from tracer_wrap.versions import load_version

    load_version(dst, "intent", 3)  # its v3.json copy was renumbered with it
    # A change on the source reaches a setting the destination left as the last run wrote it.
    cli("--store", str(store_dir), "price", "intent", "--per-call", "0.001")
    cli("migrate", "--from", str(store_dir), "--to", dst_dir)
    assert dst.get_setting("intent", n.SETTING_PRICE)["per_call"] == 0.001
    cli("--store", dst_dir, "price", "intent", "--per-call", "0.002")
    cli("--store", str(store_dir), "price", "intent", "--per-call", "0.003")
    cli("migrate", "--from", str(store_dir), "--to", dst_dir)
    assert dst.get_setting("intent", n.SETTING_PRICE)["per_call"] == 0.002


def test_migrate_again_follows_the_source_while_the_destination_did_not_choose(
        store_dir: Path, tmp_path: Path) -> None:
    dst_dir = str(tmp_path / "dst")
    fit(store_dir)
    cli("migrate", "--from", str(store_dir), "--to", dst_dir)
    fit(store_dir, "--force")
    cli("--store", str(store_dir), "pin", "intent", "2")
    cli("migrate", "--from", str(store_dir), "--to", dst_dir)
    dst = TraceStore(dst_dir)
    assert dst.current_version("intent") == 2 and dst.get_setting("intent", "pinned_version") == 2


COMMANDS = ["status", "fit", "versions", "rollback", "pin", "unpin", "routing", "price",
            "export", "import", "report", "serve", "gateway", "tasks", "run", "demo", "migrate",
            "bench", "simulate"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_texts_show_no_docstring_markup(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    assert not re.search(r"``|:func:|:class:|:meth:|:mod:|:data:", text), text


def test_the_same_error_exits_1_in_every_command(store_dir: Path, tmp_path: Path) -> None:
    for args in (["status", "nope"], ["versions", "nope"], ["fit", "nope"],
                 ["rollback", "nope", "1"], ["pin", "nope", "1"], ["unpin", "nope"],
                 ["routing", "nope", "on"], ["price", "nope"],
                 ["export", "nope", "-o", str(tmp_path / "x")],
                 ["report", "nope", "-o", str(tmp_path / "r.html")]):
        result = runner.invoke(app, ["--store", str(store_dir), *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.startswith("error: no task 'nope'"), args
