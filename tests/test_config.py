"""Configuration precedence: arguments > TRACER_WRAP_* > tracer_wrap.toml / pyproject > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer_wrap.options import DEFAULTS, make_embedder, task_options
from tracer_wrap.errors import ConfigError
from tracer_wrap.engine import TracedTask
from tracer_wrap.store import TraceStore

TOML = """
target = 0.9
min_traces = 300
store = "from-file"

[tasks."support"]
target = 0.98
routing = false
"""


def test_defaults_match_traced_task(tmp_path: Path) -> None:
    opts = task_options("t", environ={}, cwd=tmp_path)
    assert opts == DEFAULTS
    task = TracedTask("t", **{k: v for k, v in opts.items() if k != "store"})
    assert (task.target, task.delta, task.min_traces, task.refit_every, task.routing,
            task.audit_rate) == (0.95, 0.05, 200, 500, True, 0.02)


def test_precedence_argument_env_task_section_file_default(tmp_path: Path) -> None:
    (tmp_path / "tracer_wrap.toml").write_text(TOML, encoding="utf-8")
    env = {"TRACER_WRAP_MIN_TRACES": "400", "TRACER_WRAP_AUDIT_RATE": "0.1"}
    opts = task_options("support", {"audit_rate": 0.5, "delta": None}, environ=env, cwd=tmp_path)
    assert opts["audit_rate"] == 0.5  # argument beats env
    assert opts["min_traces"] == 400  # env beats file
    assert opts["target"] == 0.98 and opts["routing"] is False  # task section beats top level
    assert opts["store"] == "from-file"  # file beats default
    assert opts["delta"] == 0.05  # None counts as not given
    other = task_options("other", environ={}, cwd=tmp_path)
    assert other["target"] == 0.9 and other["routing"] is True


def test_pyproject_section_used_when_no_own_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.tracer_wrap]\ntarget = 0.97\n'
        '[tool.tracer_wrap.tasks."a"]\nrefit_every = 0\n', encoding="utf-8")
    assert task_options("a", environ={}, cwd=tmp_path)["target"] == 0.97
    assert task_options("a", environ={}, cwd=tmp_path)["refit_every"] is None
    (tmp_path / "tracer_wrap.toml").write_text("target = 0.85\n", encoding="utf-8")
    assert task_options("a", environ={}, cwd=tmp_path)["target"] == 0.85


def test_pyproject_without_section_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    assert task_options("a", environ={}, cwd=tmp_path) == DEFAULTS


@pytest.mark.parametrize("env, message", [
    ({"TRACER_WRAP_TARGET": "high"}, "TRACER_WRAP_TARGET"),
    ({"TRACER_WRAP_TARGET": "1.5"}, "TRACER_WRAP_TARGET"),
    ({"TRACER_WRAP_ROUTING": "maybe"}, "TRACER_WRAP_ROUTING"),
    ({"TRACER_WRAP_MIN_TRACES": "5"}, "TRACER_WRAP_MIN_TRACES"),
])
def test_bad_environment_values_name_their_variable(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        task_options("t", environ=env, cwd=tmp_path)


def test_env_parsing(tmp_path: Path) -> None:
    env = {"TRACER_WRAP_ROUTING": "off", "TRACER_WRAP_REFIT_EVERY": "never",
           "TRACER_WRAP_DELTA": "0.01", "TRACER_WRAP_STORE": "/tmp/s"}
    opts = task_options("t", environ=env, cwd=tmp_path)
    assert opts["routing"] is False and opts["refit_every"] is None
    assert opts["delta"] == 0.01 and opts["store"] == "/tmp/s"


@pytest.mark.parametrize("text, message", [
    ("targt = 0.9\n", "unknown key"),
    ("target = 'high'\n", "expected a number"),
    ('[tasks."t"]\nmin_traces = 2.5\n', r'\[tasks."t"\]'),
    ("routing = 1\n", "true or false"),
    ("target = [\n", "tracer_wrap.toml"),
])
def test_bad_file_values_raise(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "tracer_wrap.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        task_options("t", environ={}, cwd=tmp_path)


def test_unknown_or_invalid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        task_options("t", {"tagret": 0.9}, environ={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="argument target"):
        task_options("t", {"target": 0}, environ={}, cwd=tmp_path)


def test_an_open_store_passes_through(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "s")
    assert task_options("t", {"store": store}, environ={}, cwd=tmp_path)["store"] is store


def test_make_embedder_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACER_WRAP_EMBEDDER", "hashing")
    emb = make_embedder()
    assert emb.name == "hashing" and emb.embed(["a b", "c"]).shape == (2, 512)
    assert make_embedder("all-MiniLM-L6-v2").name == "all-MiniLM-L6-v2"  # lazy: nothing loaded
