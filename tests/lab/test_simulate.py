"""tracer-wrap simulate on a small Banking77 stream (precomputed MiniLM embeddings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
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
