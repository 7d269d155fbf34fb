"""RedisStore against a real redis-server on 127.0.0.1: processes, outages, claims."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from _redis_server import REDIS_SERVER, RedisServer

from tracer_wrap.errors import RouterLoadError
from tracer_wrap.store import TraceStore
from tracer_wrap.store.redis_store import RedisStore
from tracer_wrap.versions import load_version

pytestmark = pytest.mark.skipif(REDIS_SERVER is None,
                                reason="redis-server is not installed"
                                       " (apt-get install redis-server)")


@pytest.fixture
def server(tmp_path):
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _log_many(url: str, worker: int, n: int) -> None:
    store = RedisStore(url)
    for i in range(n):
        store.append("t", f"w{worker}-{i}", "l")
        store.append("t", "shared", "l")  # the same input from every process
    store.close()


def _try_claim(url: str, queue) -> None:
    queue.put(RedisStore(url).claim("t", "refit", ttl=30))


def test_processes_lose_and_duplicate_no_trace(server):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_many, args=(server.url, w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    traces = RedisStore(server.url).traces("t")
    assert len(traces) == 401 and len({t.input for t in traces}) == 401
    assert sorted(t.seq for t in traces) == list(range(1, 402))
    assert next(t for t in traces if t.input == "shared").count == 400


def test_claims_are_exclusive_across_processes(server):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_try_claim, args=(server.url, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sorted(results) == [False, False, False, True]


def test_migrate_copies_traces_settings_and_versions(server, tmp_path):
    import numpy as np
    from test_store_contract import _router

    from tracer_wrap.store import NewTrace, encode_vectors
    from tracer_wrap.store.migrate import migrate
    from tracer_wrap.versions import load_version, publish

    src = TraceStore(tmp_path / "src")
    src.append("t", "pruned", "x")
    src.append("t", "a", "x", ts=5.0)
    src.append("t", "a", "y")
    src.append("t", "b", "x", valid=False)
    src.prune("t", max_traces=2)  # the copies' seqs differ from the source's
    raw = encode_vectors("emb", np.ones((1, 4)) / 2)[0]
    src.append_many("t", [NewTrace("c", "x", served_version=1, audit_p=0.5, vector=raw)])
    src.set_setting("t", "routing", True)
    src.incr("t", "calls", 3)
    router = _router(np.random.default_rng(0))
    publish(src, "t", router)
    publish(src, "t", router, force=True)
    summary = migrate(src, server.url)
    dst = RedisStore(server.url)
    assert summary["t"]["traces"] == 3
    got = {t.input: t for t in dst.traces("t")}
    assert (got["c"].served_version, got["c"].audit_p) == (1, 0.5)
    assert dst.get_vectors("t", [got["c"].seq, got["a"].seq]) == [raw, None]
    assert got["a"].count == 2 and got["a"].labels == {"x": 1, "y": 1} and got["a"].ts == 5.0
    assert not got["b"].valid
    assert dst.get_setting("t", "routing") is True and dst.counter("t", "calls") == 3
    assert dst.current_version("t") == 2 and [m["version"] for m in dst.versions("t")] == [1, 2]
    np.testing.assert_array_equal(load_version(dst, "t", 2).weights, router.weights)
    assert dst.reserve_version("t") == 3


def test_migrate_refuses_a_redis_store_into_itself(server):
    from tracer_wrap.errors import ConfigError
    from tracer_wrap.store.migrate import migrate

    RedisStore(server.url).append("t", "a", "x")
    other_spelling = f"redis://127.0.0.1:{server.port}"  # database 0 by default
    with pytest.raises(ConfigError, match="same store"):
        migrate(server.url, other_spelling)
    assert RedisStore(server.url).traces("t")[0].count == 1
    migrate(server.url, f"redis://127.0.0.1:{server.port}/1")  # another database is another store
    assert RedisStore(f"redis://127.0.0.1:{server.port}/1").traces("t")[0].count == 1


def test_migrate_again_after_a_restart_of_the_source_server_copies_only_what_is_new(
        server, tmp_path):
    from tracer_wrap.store.migrate import migrate

    RedisStore(server.url).append("t", "a", "x")
    migrate(server.url, tmp_path / "dst")
    server.stop()  # a clean shutdown: the append-only file keeps the data
    server.start()
    RedisStore(server.url).append("t", "b", "y")
    assert migrate(server.url, tmp_path / "dst")["t"]["traces"] == 1
    dst = TraceStore(tmp_path / "dst")
    assert sorted((t.input, t.count) for t in dst.traces("t")) == [("a", 1), ("b", 1)]


def test_a_redis_password_shows_nowhere(server, tmp_path, monkeypatch):
    import json

    import redis
    from _synthetic import fill_store
    from typer.testing import CliRunner

    from tracer_wrap.ops.cli import app

    with redis.Redis(host="127.0.0.1", port=server.port) as client:
        client.config_set("requirepass", "hunter2")
    url = f"redis://:hunter2@127.0.0.1:{server.port}/0"
    monkeypatch.setenv("TRACER_WRAP_EMBEDDER", "hashing")
    fill_store(TraceStore(tmp_path / "src"), "intent", 300)

    def cli(*args):
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output
        return result

    cli("migrate", "--from", str(tmp_path / "src"), "--to", url)
    cli("--store", url, "fit", "intent", "--min-traces", "50")
    status = json.loads(cli("--store", url, "status", "--json").stdout)
    assert status["store"] == f"redis://:***@127.0.0.1:{server.port}/0"
    cli("--store", url, "report", "intent", "-o", str(tmp_path / "r.html"))
    assert "hunter2" not in (tmp_path / "r.html").read_text()
    # What migrate records in the destination names the source without a secret either.
    cli("migrate", "--from", url, "--to", str(tmp_path / "back"))
    assert not any("hunter2" in name for name in TraceStore(tmp_path / "back").settings("intent"))
    assert "hunter2" not in json.dumps(RedisStore(url).settings("intent"))


def test_router_files_can_live_in_a_shared_directory(server, tmp_path, monkeypatch, embedder):
    from _synthetic import LABELS, make_traces

    from tracer_wrap import traced_classifier

    shared = tmp_path / "nfs"
    monkeypatch.setenv("TRACER_WRAP_ARTIFACTS", str(shared))
    gold = dict(make_traces(600, seed=3))

    @traced_classifier(task="t", labels=sorted(LABELS), store=server.url, embedder=embedder,
                       min_traces=100, refit_every=None, audit_rate=0.0)
    def classify(text):
        return gold[text]

    for text in gold:
        classify(text)
    classify.refit()
    files = list(shared.rglob("v1.npz"))
    assert len(files) == 1
    assert classify.router is not None and classify.router.threshold is not None
    # A tampered file on the shared directory is refused by the hash kept in Redis.
    files[0].write_bytes(files[0].read_bytes()[:-8] + bytes(8))
    other = RedisStore(server.url, artifacts=shared)
    with pytest.raises(RouterLoadError):
        load_version(other, "t", 1)
