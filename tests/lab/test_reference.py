"""The tracer-llm reference runner: its npz/JSON contract offline, the real thing on request.

The real run builds a separate venv with tracer-llm 0.3.3 (a network install plus a fit of a
few minutes), so it runs only with ``TRACER_WRAP_TEST_REFERENCE=1``.
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tracer_wrap.lab import _reference_runner as runner
from tracer_wrap.lab import reference


def _problem(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Three well separated clusters in 16-d, string labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 16)) * 4
    names = np.array(["alpha", "beta", "gamma"])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, 3, size=n)
        X = (centres[idx] + rng.normal(size=(n, 16))).astype(np.float32)
        return X, names[idx]

    return (*draw(n_train), *draw(n_test))


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# --- the runner's parsing helpers ---------------------------------------------------------


def test_load_data_reads_and_normalises(tmp_path: Path) -> None:
    Xtr, ytr, Xte, yte = _problem(30, 10)
    path = _write_npz(
        tmp_path / "d.npz", X_train=Xtr.astype(np.float64), y_train=ytr, X_test=Xte, y_test=yte
    )
    data = runner.load_data(path)
    assert data["X_train"].dtype == np.float32 and data["X_train"].shape == (30, 16)
    assert data["y_test"].dtype.kind == "U" and list(data["y_test"]) == list(yte)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"X_test": None}, "missing arrays"),
        ({"y_train": np.array(["a"] * 5)}, "y_train must be 1-D with 30 rows"),
        ({"X_train": np.zeros(30, dtype=np.float32)}, "X_train must be 2-D"),
        ({"X_test": np.zeros((10, 8), dtype=np.float32)}, "different embedding dimensions"),
    ],
)
def test_load_data_rejects_broken_files(tmp_path: Path, change: dict, message: str) -> None:
    Xtr, ytr, Xte, yte = _problem(30, 10)
    arrays = {"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte, **change}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        runner.load_data(_write_npz(tmp_path / "d.npz", **arrays))


def test_load_config_defaults_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"targets": [0.9, "0.95"], "workdir": str(tmp_path)}))
    cfg = runner.load_config(path)
    assert cfg["targets"] == [0.9, 0.95]
    assert cfg["seed"] == 0 and cfg["latency_calls"] == 500 and cfg["verbose"] is False
    for bad in ({"targets": [], "workdir": "w"}, {"targets": [1.5], "workdir": "w"},
                {"targets": [0.9]}):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError):
            runner.load_config(path)


def test_write_traces_is_valid_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    runner.write_traces(path, np.array(["x", 'quo"te', "ünï"]))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["teacher"] for r in rows] == ["x", 'quo"te', "ünï"]
    assert all(r["input"] for r in rows)


def test_coverage_agreement() -> None:
    y = np.array(["a", "b", "a", "b"])
    assert runner.coverage_agreement(np.array([1, 1, 0, 0]), ["a", "a", None, None], y) == (
        0.5,
        0.5,
        2,
    )
    assert runner.coverage_agreement(np.zeros(4, bool), [None] * 4, y) == (0.0, None, 0)
    assert runner.coverage_agreement(np.zeros(0, bool), [], y[:0]) == (0.0, None, 0)


# --- the runner's whole flow, against a stand-in for tracer-llm ---------------------------


class _FakeRouter:
    """Handles rows whose first coordinate is positive, predicting the label ``"alpha"``."""

    def __init__(self, ood: bool) -> None:
        self.ood = ood

    def predict(self, x: np.ndarray) -> dict[str, Any]:
        ok = float(x[0]) > 0
        return {"label": "alpha" if ok else None, "decision": "handled" if ok else "deferred"}

    def predict_batch(self, X: np.ndarray) -> dict[str, Any]:
        handled = X[:, 0] > 0
        if self.ood:  # the gate defers one more row, so on and off differ
            handled = handled.copy()
            handled[np.flatnonzero(handled)[:1]] = False
        return {"handled": handled, "labels": ["alpha" if h else None for h in handled]}


def _fake_tracer(calls: list[dict[str, Any]]) -> types.ModuleType:
    mod = types.ModuleType("tracer")
    mod.__version__ = "0.3.3-fake"

    class FitConfig:
        def __init__(self, **kwargs: Any) -> None:
            self.__dict__.update(kwargs)

    def fit(trace_path: str, artifact_dir: str, embeddings: np.ndarray, config: Any) -> Any:
        calls.append({"trace_path": trace_path, "n": len(embeddings), **config.__dict__})
        out = Path(artifact_dir)
        out.mkdir(parents=True, exist_ok=True)
        certified = config.target_teacher_agreement < 0.99
        if certified:
            (out / "ood.json").write_text("{}")
        manifest = types.SimpleNamespace(
            selected_method="l2d" if certified else None,
            coverage_cal=0.5 if certified else None,
            teacher_agreement_cal=0.95 if certified else None,
        )
        return types.SimpleNamespace(manifest=manifest)

    def load_router(artifact_dir: str) -> _FakeRouter:
        return _FakeRouter(ood=(Path(artifact_dir) / "ood.json").exists())

    mod.FitConfig = FitConfig
    mod.fit = fit
    mod.load_router = load_router
    return mod


def test_runner_main_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "tracer", _fake_tracer(calls))
    Xtr, ytr, Xte, yte = _problem(40, 20)
    data = _write_npz(tmp_path / "d.npz", X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte)
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {"targets": [0.9, 0.995], "seed": 3, "workdir": str(tmp_path / "w"), "latency_calls": 7}
        )
    )
    out = tmp_path / "o.json"
    assert runner.main(["--data", str(data), "--config", str(cfg), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report

    # One public tracer.fit per target, each deploying exactly that target.
    assert [(c["target_teacher_agreement"], c["frontier_targets"]) for c in calls] == [
        (0.9, (0.9,)),
        (0.995, (0.995,)),
    ]
    assert all(c["n"] == 40 and c["seed"] == 3 for c in calls)
    assert report["n_train"] == 40 and report["n_test"] == 20 and report["dim"] == 16
    assert report["fit_seconds"] == pytest.approx(sum(r["fit_seconds"] for r in report["targets"]))

    first, second = report["targets"]
    handled = Xte[:, 0] > 0
    assert first["certified"] is True and first["n_test"] == 20
    assert first["coverage_no_ood"] == pytest.approx(handled.mean())
    assert first["agreement_no_ood"] == pytest.approx((yte[handled] == "alpha").mean())
    assert first["coverage"] == pytest.approx((handled.sum() - 1) / 20)
    assert first["latency_ms"]["n_calls"] == 7 and first["latency_ms"]["median"] > 0
    assert first["throughput_rows_per_s"] > 0
    # The gate was switched off for the second router and put back afterwards.
    assert (Path(first["artifact_dir"]) / "ood.json").exists()
    assert second == {**second, "certified": False, "coverage": 0.0, "agreement": None}
    assert report["latency_target"] == 0.9 and report["latency_ms"] == first["latency_ms"]


# --- reference.py without a venv ------------------------------------------------------------


def test_ensure_reference_env_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / reference.REFERENCE_VENV_NAME
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / ".tracer-wrap-ready").write_text("\n".join(reference.REFERENCE_PINS) + "\n")

    def no_subprocess(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a ready venv must not be rebuilt")

    monkeypatch.setattr(reference.subprocess, "run", no_subprocess)
    assert reference.ensure_reference_env(tmp_path) == venv


def test_ensure_reference_env_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(reference.ReferenceRunError, match="creating the venv"):
        reference.ensure_reference_env(tmp_path, python=str(tmp_path / "no-such-python-x"))


def test_run_reference_surfaces_runner_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "venv" whose python is this one: it has no tracer-llm, so the runner fails on import.
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(reference, "ensure_reference_env", lambda root: fake)
    Xtr, ytr, Xte, yte = _problem(20, 5)
    with pytest.raises(reference.ReferenceRunError, match="No module named"):
        reference.run_reference(
            Xtr, ytr, Xte, yte, targets=[0.9], seed=0, workdir=tmp_path / "w", venv_root=tmp_path
        )
    with pytest.raises(ValueError, match="do not match"):
        reference.run_reference(
            Xtr, ytr[:3], Xte, yte, targets=[0.9], seed=0, workdir=tmp_path / "w",
            venv_root=tmp_path
        )


# --- the real thing --------------------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("TRACER_WRAP_TEST_REFERENCE") != "1",
    reason="set TRACER_WRAP_TEST_REFERENCE=1 to build the tracer-llm venv and run it",
)
@pytest.mark.timeout(1800)
def test_run_reference_end_to_end(tmp_path: Path) -> None:
    root = Path(os.environ.get("TRACER_WRAP_REFERENCE_VENVS") or reference.default_venv_root())
    Xtr, ytr, Xte, yte = _problem(600, 200)
    report = reference.run_reference(
        Xtr,
        ytr,
        Xte,
        yte,
        targets=[0.9, 0.95],
        seed=0,
        workdir=tmp_path,
        venv_root=root,
        latency_calls=50,
        extra_config={"skip_candidates": ["gbt", "rf", "et", "mlp_1h", "mlp_2h"]},
    )
    assert report["library"] == "tracer-llm" and report["version"] == "0.3.3"
    assert report["fit_seconds"] > 0
    assert [r["target"] for r in report["targets"]] == [0.9, 0.95]
    for row in report["targets"]:
        assert row["n_test"] == 200
        assert row["certified"] is True  # the clusters are separable
        assert row["coverage"] > 0.5 and row["agreement"] >= 0.9
    assert report["latency_ms"]["median"] > 0 and report["throughput_rows_per_s"] > 0
