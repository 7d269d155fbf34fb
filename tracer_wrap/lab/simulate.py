"""Replay a labelled stream through the real ``@traced_classifier`` and measure the flywheel.

Each line of the stream is ``{"input": ..., "teacher": ...}`` (other fields ignored). The
decorated function plays the LLM: it answers each row's ``teacher`` label and counts its calls.
Everything else is production code: embedding, routing, audit samples, the drift breaker, the OOD
check, refits on the refit policy and hot swaps of versions. By default refits run in the calling
thread at each trigger, so a run is reproducible; ``background=True`` runs them in a worker thread
as in production (calls keep being served by the previous version meanwhile).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ..decorator import traced_classifier
from ..errors import ConfigError
from ..model.embedder import Embedder
from ..options import TaskKwargs
from ..store import Store, open_store, read_jsonl

__all__ = ["SimulationInterrupted", "scratch_store", "simulate", "simulate_command"]

#: Where throwaway stores of replays go when the machine has it: a RAM-backed directory. A store
#: on disk syncs every transaction (12 ms per logged call here, against 0.4 ms in RAM), which made
#: the disk, not tracer_wrap, the cost of an inline replay.
_RAM_DIR = Path("/dev/shm")


class SimulationInterrupted(KeyboardInterrupt):
    """A replay stopped by a KeyboardInterrupt (Ctrl-C); ``result`` holds the figures of the rows
    replayed until then (``"interrupted": True``, ``n`` the rows replayed, ``rows`` the stream's
    length). A KeyboardInterrupt, so a caller that does not look for it stops as usual."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"interrupted after {result['n']} of {result['rows']} rows")
        self.result = result


def scratch_store(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for a replay's throwaway store (in RAM when the machine has
    ``/dev/shm``), removed when the context exits."""
    ram = _RAM_DIR if _RAM_DIR.is_dir() and os.access(_RAM_DIR, os.W_OK) else None
    # The background worker may still touch a closed task's store while it is removed (it
    # reopens the cache files): that must not fail the replay.
    return tempfile.TemporaryDirectory(prefix=prefix, dir=ram, ignore_cleanup_errors=True)


def simulate(
    stream_path: str | Path,
    *,
    target: float = 0.95,
    refit_every: int = 500,
    background: bool = False,
    store: Store | str | Path | None = None,
    embedder: Embedder | None = None,
    task: str = "simulate",
    min_traces: int = 200,
    audit_rate: float = 0.02,
    seed: int = 0,
    curve_points: int = 20,
    labels: list[str] | None = None,
    task_options: TaskKwargs | None = None,
) -> dict[str, Any]:
    """Replay ``stream_path`` and return the figures of the run.

    The result holds ``n`` (rows replayed), ``rows`` (rows in the stream), ``interrupted``
    (False here; see below), ``llm_calls`` (calls of the teacher, audits included),
    ``local`` (local answers), ``local_share``, ``local_agreement`` (local answers equal to
    the row's teacher label; None when nothing was local), ``audit_calls``, ``refits``
    (versions fitted), ``breaker_trips``, ``versions`` and ``curve``: one point per
    ``n / curve_points`` rows with the window's and the cumulative coverage and agreement, the
    number of traces and the version served. ``store`` defaults to a temporary directory removed
    afterwards (see :func:`scratch_store`); ``embedder`` to all-MiniLM-L6-v2. Raises ConfigError
    on a malformed stream, and :class:`SimulationInterrupted` (with the figures so far) when a
    KeyboardInterrupt stops the replay: what the run logged is written to its store first, and a
    background refit still running is not waited for.
    """
    rows = list(read_jsonl(stream_path))
    if not rows:
        raise ConfigError(f"{stream_path}: the stream is empty")
    with scratch_store("tracer_wrap-simulate-") as tmp:
        trace_store = open_store(store or tmp)
        return _replay(rows, trace_store, target=target, refit_every=refit_every,
                       background=background, embedder=embedder, task=task,
                       min_traces=min_traces, audit_rate=audit_rate, seed=seed,
                       curve_points=curve_points, labels=labels,
                       task_options=task_options or {})


def _replay(rows: list[tuple[str, str]], store: Store, *, target: float, refit_every: int,
            background: bool, embedder: Embedder | None, task: str, min_traces: int,
            audit_rate: float, seed: int, curve_points: int, labels: list[str] | None,
            task_options: TaskKwargs) -> dict[str, Any]:
    answer: list[str] = [""]
    llm_calls = [0]

    def teacher(text: str) -> str:
        llm_calls[0] += 1
        return answer[0]

    options: TaskKwargs = {
        "labels": labels, "target": target, "store": store,
        "embedder": embedder or Embedder.default(), "min_traces": min_traces,
        # The default policy: refits at min_traces, then each doubling, then every refit_every.
        "refit_every": refit_every, "audit_rate": audit_rate,
        "refit_executor": "thread" if background else "inline", "rng": random.Random(seed),
        "keep_versions": 10_000}
    options.update(task_options)
    classify = traced_classifier(task=task, **options)(teacher)
    traced = classify.task
    n = len(rows)
    step = max(1, n // max(1, curve_points))
    local = agree = 0
    window_local = window_agree = window_n = 0
    curve: list[dict[str, Any]] = []
    done = 0  # rows replayed
    interrupted = False
    try:
        for i, (text, label) in enumerate(rows, 1):
            answer[0] = label
            before = llm_calls[0]
            out = classify(text)
            done = i
            if llm_calls[0] == before:  # the teacher was not asked: a local answer
                local += 1
                window_local += 1
                ok = out == label
                agree += ok
                window_agree += ok
            window_n += 1
            if i % step == 0 or i == n:
                curve.append(_point(i, window_n, window_local, window_agree, local, agree,
                                    store.count(task), traced.version))
                window_local = window_agree = window_n = 0
    except KeyboardInterrupt:
        interrupted = True
        if window_n:
            curve.append(_point(done, window_n, window_local, window_agree, local, agree,
                                store.count(task), traced.version))
    # Written before a throwaway store goes; a background refit still running finishes first,
    # unless the run was interrupted (Ctrl-C stops promptly).
    traced.close(wait=not interrupted)
    manifests = store.versions(task)
    stats = traced.stats.as_dict()
    result = {
        "n": done,
        "rows": n,
        "interrupted": interrupted,
        "llm_calls": llm_calls[0],
        "local": local,
        "local_share": local / done if done else 0.0,
        "local_agreement": agree / local if local else None,
        "audit_calls": stats["audits"],
        "refits": store.counter(task, "refits"),
        "breaker_trips": store.counter(task, "breaker_trips"),
        "outliers_deferred": stats["outliers"],
        "versions": len(manifests),
        "final_version": traced.version,
        "target": target,
        "refit_every": refit_every,
        "background": background,
        "stats": stats,
        "curve": curve,
    }
    if interrupted:
        raise SimulationInterrupted(result)
    return result


def _point(i: int, window_n: int, window_local: int, window_agree: int, local: int, agree: int,
           traces: int, version: int | None) -> dict[str, Any]:
    """One point of the curve, after ``i`` rows."""
    return {
        "n": i,
        "window_coverage": window_local / window_n,
        "window_agreement": window_agree / window_local if window_local else None,
        "coverage": local / i,
        "agreement": agree / local if local else None,
        "traces": traces,
        "version": version,
    }


def _embedder(embeddings: Path | None, name: str | None) -> Embedder:
    """The replay's embedder, loaded now: a name that loads no model is refused before the
    stream starts (a replay without an embedder would answer nothing locally and exit 0)."""
    from ..errors import EmbedderError
    from ..model.embedder import make_embedder

    if embeddings is not None:
        return _precomputed(embeddings)
    chosen = make_embedder(name)
    try:
        chosen.embed(["tracer_wrap"])
    except EmbedderError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--embedder {chosen.name!r}: {first}") from None
    return chosen


def _precomputed(path: Path) -> Embedder:
    with np.load(path, allow_pickle=False) as arrays:
        return Embedder.precomputed(dict(zip(arrays["texts"].tolist(), arrays["X"])),
                                    name="precomputed")


def simulate_command(
    stream: Annotated[Path, typer.Option("--stream", exists=True, dir_okay=False,
                                         help="JSONL stream of {\"input\", \"teacher\"} lines.")],
    target: Annotated[float, typer.Option(min=0.01, max=1.0, help="Target agreement.")] = 0.95,
    refit_every: Annotated[int, typer.Option("--refit-every", min=1,
                                             help="Refit after this many new traces.")] = 500,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    background: Annotated[bool, typer.Option(
        "--background", help="Refit in a worker thread, as in production.")] = False,
    embeddings: Annotated[Path | None, typer.Option(
        "--embeddings", exists=True, dir_okay=False,
        help="npz with arrays X (vectors) and texts, instead of embedding with a model.")] = None,
    embedder: Annotated[str | None, typer.Option(
        "--embedder", help="Embedding model name or 'hashing' (default all-MiniLM-L6-v2).")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="Keep the run's store here (default: a temporary directory).")] = None,
    audit_rate: Annotated[float, typer.Option("--audit-rate", min=0.0, max=1.0)] = 0.02,
    min_traces: Annotated[int, typer.Option("--min-traces", min=10)] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Replay a labelled stream through @traced_classifier with the refit machinery running.

    Ctrl-C stops it with exit code 130, after writing the figures so far to --json (with
    "interrupted": true)."""
    try:
        result = simulate(stream, target=target, refit_every=refit_every, background=background,
                          store=store, embedder=_embedder(embeddings, embedder),
                          audit_rate=audit_rate, min_traces=min_traces, seed=seed)
    except SimulationInterrupted as exc:
        partial = exc.result
        if json_out is not None:
            json_out.write_text(json.dumps(partial, indent=2), encoding="utf-8")
        typer.echo(f"interrupted after {partial['n']} of {partial['rows']} rows"
                   + (f"; the figures so far are in {json_out}" if json_out is not None else ""),
                   err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    agreement = result["local_agreement"]
    typer.echo(f"{result['n']} rows: {result['local']} answered locally"
               f" ({result['local_share']:.1%}) at agreement "
               f"{'n/a' if agreement is None else f'{agreement:.4f}'} (target {target});"
               f" {result['llm_calls']} LLM calls ({result['audit_calls']} audits),"
               f" {result['refits']} refits, {result['breaker_trips']} breaker trips")
    for point in result["curve"]:
        typer.echo(f"  after {point['n']:>6} rows: window coverage {point['window_coverage']:.1%},"
                   f" cumulative {point['coverage']:.1%}, version {point['version']}")
