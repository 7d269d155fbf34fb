"""Run the reference library, tracer-llm 0.3.3, side by side with tracer_wrap.

tracer-llm pins ``numpy < 2.1``, so it cannot share tracer_wrap's environment: it gets its own
virtual environment (made once by :func:`ensure_reference_env`) and is driven through
``_reference_runner.py``, a standalone script run with that environment's interpreter
(:func:`run_reference`). Both sides see the same embeddings and the same split.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tracer_wrap import names
from tracer_wrap.errors import TracerWrapError

__all__ = [
    "REFERENCE_PINS",
    "REFERENCE_VENV_NAME",
    "ReferenceRunError",
    "default_venv_root",
    "ensure_reference_env",
    "reference_python",
    "run_reference",
]

REFERENCE_VENV_NAME = "tracer-llm-0.3.3"
# Exact versions so the reference figures are reproducible. tracer-llm's core needs no torch
# (torch is only in its [embeddings] extra, which the runner does not use).
REFERENCE_PINS: tuple[str, ...] = (
    "tracer-llm==0.3.3",
    "numpy==2.0.2",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",
    "joblib==1.6.0",
    "threadpoolctl==3.8.0",
    "narwhals==2.29.0",
    "cloudpickle==3.1.2",
)
_READY = ".tracer-wrap-ready"
_RUNNER = Path(__file__).with_name("_reference_runner.py")


class ReferenceRunError(TracerWrapError, RuntimeError):
    """The reference environment could not be built, or the reference run failed."""


def default_venv_root() -> Path:
    """``$TRACER_WRAP_REFERENCE_VENVS``, else ``$XDG_CACHE_HOME/tracer_wrap/venvs`` (~/.cache)."""
    explicit = os.environ.get(names.ENV_REFERENCE_VENVS)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tracer_wrap" / "venvs"


def reference_python(venv: Path) -> Path:
    """The interpreter of a virtual environment (POSIX or Windows layout)."""
    posix = venv / "bin" / "python"
    return posix if posix.exists() or os.name != "nt" else venv / "Scripts" / "python.exe"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock, so two benchmarks never build the same venv at once."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): serialising builds is a nicety, not a need
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text: str | bytes | None, n: int = 40) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(text.strip().splitlines()[-n:])


def _run_step(cmd: Sequence[str | os.PathLike[str]], what: str, timeout: float) -> None:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ReferenceRunError(
            f"{what} timed out after {timeout:.0f} s:\n{_tail(exc.stderr)}") from exc
    except OSError as exc:
        raise ReferenceRunError(f"{what} failed: {exc}") from exc
    if proc.returncode != 0:
        raise ReferenceRunError(
            f"{what} failed (exit {proc.returncode}):\n{_tail(proc.stderr or proc.stdout)}"
        )


def _pins_text() -> str:
    return "\n".join(REFERENCE_PINS) + "\n"


def ensure_reference_env(
    root: Path, *, python: str | None = None, timeout: float = 1800.0
) -> Path:
    """Create (once) the venv ``root/tracer-llm-0.3.3`` with tracer-llm and its pinned deps.

    Idempotent and cached: a ready marker holding the pins is written last, so a venv whose
    build was interrupted, or that was built with other pins, is rebuilt. A file lock keeps
    concurrent callers from building it twice. Returns the venv directory.
    """
    root = Path(root)
    venv = root / REFERENCE_VENV_NAME
    marker = venv / _READY

    def ready() -> bool:
        return (
            marker.exists()
            and marker.read_text(encoding="utf-8") == _pins_text()
            and reference_python(venv).exists()
        )

    if ready():
        return venv
    with _file_lock(root / f"{REFERENCE_VENV_NAME}.lock"):
        if ready():  # another process finished it while we waited for the lock
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        base = python or getattr(sys, "_base_executable", None) or sys.executable
        _run_step([base, "-m", "venv", venv], f"creating the venv {venv}", timeout)
        py = reference_python(venv)
        _run_step(
            [py, "-m", "pip", "install", "--disable-pip-version-check", "-q", *REFERENCE_PINS],
            f"pip install {' '.join(REFERENCE_PINS)}",
            timeout,
        )
        _run_step([py, "-c", "import tracer.api, sklearn"], "importing tracer-llm", 120.0)
        marker.write_text(_pins_text(), encoding="utf-8")
    return venv


def run_reference(
    X_train: np.ndarray,
    y_train: Sequence[str] | np.ndarray,
    X_test: np.ndarray,
    y_test: Sequence[str] | np.ndarray,
    *,
    targets: Sequence[float],
    seed: int,
    workdir: Path,
    venv_root: Path | None = None,
    latency_calls: int = 500,
    timeout: float = 3600.0,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit and evaluate tracer-llm 0.3.3 on these embeddings; return the runner's JSON report.

    The report has ``fit_seconds`` (all targets), ``targets`` (one row per target: ``target,
    certified, coverage, agreement, n_test`` and more), ``latency_ms`` / ``latency_no_ood_ms``
    (``median``, ``p99`` of one embedded input) and ``throughput_rows_per_s``. ``venv_root``
    defaults to :func:`default_venv_root`; tracer-llm's artifacts go to ``workdir/artifacts``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    venv = ensure_reference_env(Path(venv_root) if venv_root is not None else default_venv_root())
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)
    # Plain unicode arrays: the runner loads with allow_pickle=False.
    y_tr = np.asarray([str(v) for v in y_train], dtype=str)
    y_te = np.asarray([str(v) for v in y_test], dtype=str)
    if X_train.ndim != 2 or len(X_train) != len(y_tr):
        raise ValueError(f"X_train {X_train.shape} and y_train ({len(y_tr)},) do not match")
    if X_test.ndim != 2 or len(X_test) != len(y_te):
        raise ValueError(f"X_test {X_test.shape} and y_test ({len(y_te)},) do not match")
    config = {
        **(extra_config or {}),
        "targets": [float(t) for t in targets],
        "seed": int(seed),
        "workdir": str(workdir / "artifacts"),
        "latency_calls": int(latency_calls),
    }
    with tempfile.TemporaryDirectory(dir=workdir, prefix="run-") as tmp:
        data_path = Path(tmp) / "data.npz"
        config_path = Path(tmp) / "config.json"
        out_path = Path(tmp) / "out.json"
        np.savez(data_path, X_train=X_train, y_train=y_tr, X_test=X_test, y_test=y_te)
        config_path.write_text(json.dumps(config), encoding="utf-8")
        # -I: the script's own folder (tracer_wrap/) must not land on sys.path, where a module
        # of ours could shadow one the reference needs; it also drops PYTHONPATH and user site.
        cmd = [
            str(reference_python(venv)),
            "-I",
            str(_RUNNER),
            "--data", str(data_path),
            "--config", str(config_path),
            "--out", str(out_path),
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, check=False
            )
        except OSError as exc:
            raise ReferenceRunError(f"cannot start the reference runner: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ReferenceRunError(
                f"tracer-llm reference run timed out after {timeout:.0f} s:\n{_tail(exc.stderr)}"
            ) from exc
        if proc.returncode != 0 or not out_path.exists():
            raise ReferenceRunError(
                f"tracer-llm reference run failed (exit {proc.returncode}):\n{_tail(proc.stderr)}"
            )
        report: dict[str, Any] = json.loads(out_path.read_text(encoding="utf-8"))
    return report
