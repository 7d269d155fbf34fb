"""Task options: one object, validated once; arguments > TRACER_WRAP_* > tracer_wrap.toml /
pyproject > defaults, the same for every path (decorator, TracedTask, clients, sidecar, CLI)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tracer_wrap import Price, TracedTask, redact_pii, traced_classifier
from tracer_wrap.errors import ConfigError
from tracer_wrap.model.embedder import make_embedder
from tracer_wrap.options import TaskKwargs, TaskOptions, store_spec
from tracer_wrap.store import TraceStore

TOML = """
target = 0.9
min_traces = 300
store = "from-file"
price = { per_call = 0.001 }

[tasks."support"]
target = 0.98
routing = false
redact = "pii"
"""


def resolve(task: str = "t", explicit: dict | None = None, *, env: dict | None = None,
            cwd: Path) -> TaskOptions:
    return TaskOptions.resolve(task, explicit, environ=env or {}, cwd=cwd)


def test_typed_keywords_list_exactly_the_options() -> None:
    fields = {f.name for f in dataclasses.fields(TaskOptions)} - {"sources"}
    assert set(TaskKwargs.__annotations__) == fields


def test_defaults_are_those_of_a_traced_task(tmp_path: Path) -> None:
    options = resolve(cwd=tmp_path)
    assert options == TaskOptions()
    assert (options.target, options.delta, options.min_traces, options.refit_every,
            options.routing, options.audit_rate) == (0.95, 0.05, 200, 500, True, 0.02)
    assert options.store is None and store_spec(environ={}, cwd=tmp_path) == ".tracer_wrap"


def test_precedence_argument_env_task_section_file_default(tmp_path: Path) -> None:
    (tmp_path / "tracer_wrap.toml").write_text(TOML, encoding="utf-8")
    env = {"TRACER_WRAP_MIN_TRACES": "400", "TRACER_WRAP_AUDIT_RATE": "0.1"}
    options = resolve("support", {"audit_rate": 0.5, "delta": None}, env=env, cwd=tmp_path)
    assert options.audit_rate == 0.5  # argument beats env
    assert options.min_traces == 400  # env beats file
    assert options.target == 0.98 and options.routing is False  # task section beats top level
    assert options.store == "from-file" and options.price == Price(per_call=0.001)
    assert options.redact is redact_pii
    assert options.delta == 0.05  # None counts as not given
    assert 0.98 in options.targets  # the served target is always certified
    other = resolve("other", cwd=tmp_path)
    assert other.target == 0.9 and other.routing is True and other.redact is None
    assert store_spec(environ={}, cwd=tmp_path) == "from-file"
    assert store_spec(environ={"TRACER_WRAP_STORE": "/x"}, cwd=tmp_path) == "/x"
    assert store_spec("given", environ={"TRACER_WRAP_STORE": "/x"}, cwd=tmp_path) == "given"


def test_pyproject_section_used_when_no_own_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.tracer_wrap]\ntarget = 0.97\n'
        '[tool.tracer_wrap.tasks."a"]\nrefit_every = 0\n', encoding="utf-8")
    assert resolve("a", cwd=tmp_path).target == 0.97
    assert resolve("a", cwd=tmp_path).refit_every is None
    (tmp_path / "tracer_wrap.toml").write_text("target = 0.85\n", encoding="utf-8")
    assert resolve("a", cwd=tmp_path).target == 0.85


def test_pyproject_without_section_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    assert resolve("a", cwd=tmp_path) == TaskOptions()


@pytest.mark.parametrize("env, message", [
    ({"TRACER_WRAP_TARGET": "high"}, "TRACER_WRAP_TARGET"),
    ({"TRACER_WRAP_TARGET": "1.5"}, "TRACER_WRAP_TARGET"),
    ({"TRACER_WRAP_ROUTING": "maybe"}, "TRACER_WRAP_ROUTING"),
    ({"TRACER_WRAP_MIN_TRACES": "5"}, "TRACER_WRAP_MIN_TRACES"),
    ({"TRACER_WRAP_STORE_INPUTS": "encrypted"}, "TRACER_WRAP_STORE_INPUTS"),
    ({"TRACER_WRAP_PRICE_PER_CALL": "cheap"}, "TRACER_WRAP_PRICE_PER_CALL"),
    ({"TRACER_WRAP_FIT_OPTIONS": "C=1"}, "cannot be set from the environment"),
])
def test_bad_environment_values_name_their_variable(tmp_path: Path, env: dict,
                                                     message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(env=env, cwd=tmp_path)


def test_env_parsing(tmp_path: Path) -> None:
    env = {"TRACER_WRAP_ROUTING": "off", "TRACER_WRAP_REFIT_EVERY": "never",
           "TRACER_WRAP_DELTA": "0.01", "TRACER_WRAP_STORE": "/tmp/s",
           "TRACER_WRAP_TARGETS": "0.9, 0.99", "TRACER_WRAP_OOD_QUANTILE": "none",
           "TRACER_WRAP_EMBEDDER": "hashing", "TRACER_WRAP_BREAKER": "false",
           "TRACER_WRAP_PRICE_INPUT_PER_MTOK": "0.15", "TRACER_WRAP_REFIT_EXECUTOR": "process"}
    options = resolve(env=env, cwd=tmp_path)
    assert options.routing is False and options.refit_every is None
    assert options.delta == 0.01 and options.store == "/tmp/s"
    assert options.targets == (0.9, 0.95, 0.99) and options.ood_quantile is None
    assert options.embedder == "hashing" and options.breaker is False
    assert options.price == Price(input_per_mtok=0.15) and options.refit_executor == "process"


@pytest.mark.parametrize("text, message", [
    ("targt = 0.9\n", "unknown key"),
    ("target = 'high'\n", "expected a number"),
    ('[tasks."t"]\nmin_traces = 2.5\n', r'\[tasks."t"\]'),
    ("routing = 1\n", "true or false"),
    ("target = [\n", "tracer_wrap.toml"),
    ("price = { per_cal = 1 }\n", "unknown price field"),
    ("breaker = { margin = -1 }\n", "breaker.margin"),
    ("refit_policy = 3\n", "only be set in code"),
    ("redact = 'all'\n", "redact"),
])
def test_bad_file_values_raise(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "tracer_wrap.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        resolve(cwd=tmp_path)


def test_a_price_is_a_finite_number_from_every_source(tmp_path: Path) -> None:
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="argument price"):
            TaskOptions(price=Price(per_call=bad))
        with pytest.raises(ConfigError, match="argument price.output_per_mtok"):
            TaskOptions(price={"output_per_mtok": bad})
    with pytest.raises(ConfigError, match="PRICE_PER_CALL"):
        resolve(env={"TRACER_WRAP_PRICE_PER_CALL": "inf"}, cwd=tmp_path)
    (tmp_path / "tracer_wrap.toml").write_text("price = { per_call = inf }\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="tracer_wrap.toml: price.per_call"):
        resolve(cwd=tmp_path)


def test_fit_options_take_only_what_fit_router_takes_and_a_refit_leaves(tmp_path: Path) -> None:
    (tmp_path / "tracer_wrap.toml").write_text("fit_options = {junk = 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tracer_wrap.toml: fit_options: unknown fit option"):
        resolve(cwd=tmp_path)
    for key in ("targets", "delta", "info", "vectors"):
        with pytest.raises(ConfigError, match="argument fit_options: .* set by every refit"):
            TaskOptions(fit_options={key: 1})
    assert TaskOptions(fit_options={"folds": 5, "seed": 1}).fit_options == {"folds": 5, "seed": 1}


def test_the_fit_arguments_a_refit_reserves_are_those_it_passes() -> None:
    import ast
    import inspect

    import tracer_wrap.refit as refit
    from tracer_wrap.options import REFIT_FIT_ARGUMENTS, fit_option_names

    calls = [node for node in ast.walk(ast.parse(inspect.getsource(refit)))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "run_fit"]
    assert len(calls) == 1
    passed = {kw.arg for kw in calls[0].keywords if kw.arg is not None}
    assert passed == REFIT_FIT_ARGUMENTS
    assert not fit_option_names() & passed and "folds" in fit_option_names()


def test_unknown_or_invalid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        resolve(explicit={"tagret": 0.9}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="argument target"):
        resolve(explicit={"target": 0}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="argument delta"):
        TaskOptions(delta=1.0)
    with pytest.raises(ConfigError, match="labels"):
        TaskOptions(labels="abc")  # type: ignore[arg-type]


def test_an_open_store_and_embedder_pass_through(tmp_path: Path) -> None:
    store, embedder = TraceStore(tmp_path / "s"), make_embedder("hashing")
    options = resolve(explicit={"store": store, "embedder": embedder}, cwd=tmp_path)
    assert options.store is store and options.embedder is embedder


def test_make_embedder_is_the_one_place_embedders_are_built() -> None:
    emb = make_embedder("hashing")
    assert emb.name == "hashing" and emb.embed(["a b", "c"]).shape == (2, 512)
    assert make_embedder("all-MiniLM-L6-v2").name == "all-MiniLM-L6-v2"  # lazy: nothing loaded
    assert make_embedder().name == "all-MiniLM-L6-v2"


def test_the_embedder_named_in_the_environment_reaches_every_task(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRACER_WRAP_EMBEDDER", "hashing")
    task = TracedTask("t", store=str(tmp_path / "s"))
    assert task.embedder.name == "hashing"


def test_environment_and_file_fill_what_the_decorator_does_not_say(tmp_path, monkeypatch,
                                                                   embedder):
    (tmp_path / "tracer_wrap.toml").write_text(
        'min_traces = 321\n[tasks."t"]\ntarget = 0.97\ndelta = 0.1\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRACER_WRAP_DELTA", "0.02")

    @traced_classifier(task="t", store=str(tmp_path / "s"), embedder=embedder, min_traces=50)
    def classify(text):
        return "a"

    options = classify.task.options
    assert options.target == 0.97  # the task's table in the file
    assert options.delta == 0.02  # the environment beats the file
    assert options.min_traces == 50  # the argument beats both


def test_a_bad_value_in_the_file_names_the_file(tmp_path, monkeypatch):
    (tmp_path / "tracer_wrap.toml").write_text("target = 7\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="tracer_wrap.toml"):
        traced_classifier(task="t", store=str(tmp_path / "s"))(lambda text: "a")


@pytest.mark.parametrize("spec", ["http://x", "https://host/y", "file:///tmp/s", "REDIS://h",
                                  "s3://bucket/store"])
def test_a_url_that_is_no_store_is_refused_from_every_source(tmp_path: Path, spec: str) -> None:
    # It used to become a directory named "http:" (tracer-wrap migrate --to http://x, --store).
    scheme = spec.partition("://")[0]
    for call in (lambda: store_spec(spec, cwd=tmp_path),
                 lambda: store_spec(environ={"TRACER_WRAP_STORE": spec}, cwd=tmp_path),
                 lambda: resolve(explicit={"store": spec}, cwd=tmp_path),
                 lambda: resolve(env={"TRACER_WRAP_STORE": spec}, cwd=tmp_path)):
        with pytest.raises(ConfigError, match=f"{scheme}:// is not a store's URL scheme"):
            call()
    (tmp_path / "tracer_wrap.toml").write_text(f'store = "{spec}"\n')
    with pytest.raises(ConfigError, match="tracer_wrap.toml"):
        store_spec(environ={}, cwd=tmp_path)
    assert not (tmp_path / f"{scheme}:").exists()


@pytest.mark.parametrize("spec", ["redis://h:6379/0", "rediss://h", "unix:///tmp/redis.sock",
                                  "C://x", "./store", "dir:with:colons"])
def test_redis_urls_and_directories_pass(tmp_path: Path, spec: str) -> None:
    assert store_spec(spec, cwd=tmp_path) == spec


def test_the_cli_refuses_a_store_url_of_another_scheme_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from _wait import PATIENCE

    src = tmp_path / "src"
    TraceStore(str(src))
    base = [sys.executable, "-m", "tracer_wrap.ops.cli"]
    for argv in (["migrate", "--from", str(src), "--to", "http://x"],
                 ["--store", "http://x/y", "status"]):
        res = subprocess.run([*base, *argv], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "TRACER_WRAP_EMBEDDER": "hashing"},
                             timeout=PATIENCE)
        assert res.returncode == 1, res.stdout + res.stderr
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert "http:// is not a store's URL scheme" in res.stderr
    assert not (tmp_path / "http:").exists()


def test_the_price_from_the_environment_has_every_documented_form(tmp_path: Path) -> None:
    # TRACER_WRAP_PRICE (the price option's own variable) was silently ignored.
    options = resolve(env={"TRACER_WRAP_PRICE": "0.0004",
                           "TRACER_WRAP_PRICE_INPUT_PER_MTOK": "0.15"}, cwd=tmp_path)
    assert options.price == Price(per_call=0.0004, input_per_mtok=0.15)
    assert options.sources["price"] == "$TRACER_WRAP_PRICE, $TRACER_WRAP_PRICE_INPUT_PER_MTOK"
    for env, message in [
            ({"TRACER_WRAP_PRICE": "cheap"}, r"\$TRACER_WRAP_PRICE: expected a number"),
            ({"TRACER_WRAP_PRICE": "1", "TRACER_WRAP_PRICE_PER_CALL": "2"}, "set one"),
            ({"TRACER_WRAP_PRICE_PER_TOKEN": "1"},
             r"\$TRACER_WRAP_PRICE_PER_TOKEN: not a price variable")]:
        with pytest.raises(ConfigError, match=message):
            resolve(env=env, cwd=tmp_path)
