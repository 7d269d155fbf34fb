"""tracer-wrap simulate on a small Banking77 stream (precomputed MiniLM embeddings)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from _wait import PATIENCE, until
from typer.testing import CliRunner

from tracer_wrap import Embedder
from tracer_wrap.lab.simulate import simulate, simulate_command


def stream(tmp_path: Path, d: dict, n: int, n_labels: int) -> tuple[Path, dict]:
    """``n`` shuffled rows of the first ``n_labels`` intents (fewer intents: faster fits)."""
    keep = np.isin(d["y"], sorted(set(d["y"].tolist()))[:n_labels])
    idx = np.random.default_rng(0).permutation(np.flatnonzero(keep))[:n]
    path = tmp_path / "stream.jsonl"
    path.write_text("".join(json.dumps({"input": str(d["texts"][i]), "teacher": str(d["y"][i]),
                                        "extra": 1}) + "\n" for i in idx))
    return path, d


def test_simulate_banking77(tmp_path: Path, banking77_train) -> None:
    path, d = stream(tmp_path, banking77_train, 3000, 30)
    emb = Embedder.precomputed(dict(zip(d["texts"].tolist(), d["X"])))
    r = simulate(path, target=0.95, refit_every=500, embedder=emb)
    assert r["n"] == 3000 and r["local"] + r["llm_calls"] == r["n"]
    assert r["local"] > 0.3 * r["n"] and r["local_agreement"] >= 0.95
    assert r["refits"] >= 2 and r["audit_calls"] > 0 and r["stats"]["errors"] == 0
    curve = r["curve"]
    assert curve[0]["window_coverage"] == 0 and curve[-1]["window_coverage"] > 0.5


def test_simulate_command(tmp_path: Path, banking77_train) -> None:
    path, d = stream(tmp_path, banking77_train, 400, 10)
    npz = tmp_path / "emb.npz"
    np.savez(npz, X=d["X"], texts=d["texts"])
    app = typer.Typer()
    app.command()(simulate_command)
    out = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["--stream", str(path), "--target", "0.95", "--refit-every",
                                   "250", "--json", str(out), "--embeddings", str(npz),
                                   "--background"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["n"] == 400 and data["background"] and {"llm_calls", "local", "curve"} <= set(data)
    assert "rows:" in res.output


def long_stream(tmp_path: Path, n: int) -> Path:
    """``n`` rows of Banking77 queries (repeated with a suffix): longer than any test waits for."""
    from tracer_wrap.lab.datasets import load_banking77

    rows = load_banking77()
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"input": f"{rows[i % len(rows)][0]} #{i}",
                                        "teacher": rows[i % len(rows)][1]}) + "\n"
                            for i in range(n)))
    return path


def test_an_interrupted_replay_writes_its_traces_before_its_scratch_store_goes(
        tmp_path: Path, caplog) -> None:
    # Ctrl-C mid-stream: the replay stops at once with the figures so far, and what it logged is
    # written while its throwaway store still exists (before, the background writer met a removed
    # store: "trace store failed ... unable to open database file").
    import tracer_wrap
    from tracer_wrap.lab.simulate import SimulationInterrupted
    from tracer_wrap.model.hashing import hashing_embedder

    hashing = hashing_embedder()
    calls = [0]

    def embed(texts: list[str]) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 300:
            raise KeyboardInterrupt
        return hashing.embed(texts)

    path = long_stream(tmp_path, 2000)
    with pytest.raises(SimulationInterrupted) as stopped:
        simulate(path, embedder=Embedder.from_callable(embed, name="h", cache_bytes=0),
                 min_traces=50, refit_every=100)
    assert tracer_wrap.flush(60)
    result = stopped.value.result
    assert result["interrupted"] and result["rows"] == 2000 and 0 < result["n"] < 2000
    assert result["local"] + result["llm_calls"] >= result["n"]
    assert result["curve"][-1]["n"] == result["n"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_ctrl_c_stops_simulate_with_130_and_writes_the_figures_so_far(tmp_path: Path) -> None:
    from tracer_wrap.store import open_store

    path = long_stream(tmp_path, 100_000)
    store, out = tmp_path / "store", tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracer_wrap.ops.cli", "simulate", "--stream", str(path),
         "--embedder", "hashing", "--store", str(store), "--json", str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # Python turns SIGINT into KeyboardInterrupt only when it is not ignored at start.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # The second row's trace: the first row is replayed.
        until(lambda: (store / "traces").is_dir() and open_store(store).count("simulate") > 1,
              "the replay's first traces")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=PATIENCE)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "failed" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted after"), stderr
    data = json.loads(out.read_text())
    assert data["interrupted"] and 0 < data["n"] < data["rows"] == 100_000


def test_simulate_refuses_an_embedder_that_loads_no_model(tmp_path: Path) -> None:
    path = long_stream(tmp_path, 50)
    res = subprocess.run(
        [sys.executable, "-m", "tracer_wrap.ops.cli", "simulate", "--stream", str(path),
         "--embedder", "/nonexistent/no-such-model"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
        timeout=PATIENCE)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: --embedder"), res.stderr
    assert "rows:" not in res.stdout
