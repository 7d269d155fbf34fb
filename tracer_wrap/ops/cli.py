"""The ``tracer-wrap`` command: look at a store's tasks and act on them without writing Python.

Every command works on one trace store: ``--store DIR`` (global or per command), else
``$TRACER_WRAP_STORE``, else ``./.tracer_wrap``. Read commands take ``--json`` and then print one
JSON document on stdout (progress bars and messages go to stderr). Exit codes: 0 ok, 1 error
(a tracer_wrap error prints one line, no traceback), 2 usage error.

The fit and report commands embed traces with ``--embedder`` / ``$TRACER_WRAP_EMBEDDER`` (default
all-MiniLM-L6-v2); ``hashing`` selects a tiny deterministic embedder for tests and quick trials.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typing_extensions import Annotated

from .. import names
from ..errors import ConfigError, TracerWrapError
from ..store import REDIS_SCHEMES, Origin, Store, open_store

__all__ = ["app", "main", "task_status"]

app = typer.Typer(
    name="tracer-wrap",
    help="Inspect and operate tracer_wrap trace stores: status, fit, versions, reports, sidecar.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[
    Optional[str],
    typer.Option("--store", help="Trace store directory or redis:// URL (default: the global "
                                 "--store, $TRACER_WRAP_STORE or ./.tracer_wrap)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
EmbedderOpt = Annotated[
    Optional[str],
    typer.Option("--embedder", help="Embedding model name, or 'hashing' (tiny, for tests and "
                                    "trials). Default: $TRACER_WRAP_EMBEDDER or all-MiniLM-L6-v2."),
]


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[Optional[str], typer.Option(
        "--store", envvar=names.ENV_STORE,
        help="Trace store directory or redis:// URL [env: TRACER_WRAP_STORE; default"
             " ./.tracer_wrap].")] = None,
) -> None:
    ctx.obj = {"store": store}


def _clean_errors(fn: F) -> F:
    """Turn tracer_wrap's own errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TracerWrapError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as exc:  # a file the user named cannot be read or written
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _open_store(ctx: typer.Context, store: str | None, *, must_exist: bool = True) -> Store:
    spec = str(store or (ctx.obj or {}).get("store") or names.DEFAULT_STORE)
    if must_exist and not spec.startswith(REDIS_SCHEMES) and not Path(spec).is_dir():
        raise ConfigError(f"no trace store at {spec!r} (use --store or $TRACER_WRAP_STORE)")
    return open_store(spec)


def _known_task(store: Store, task: str) -> None:
    if task not in store.tasks():
        known = ", ".join(repr(t) for t in store.tasks()) or "none"
        raise ConfigError(f"no task {task!r} in {str(store.path)!r} (tasks: {known})")


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# -- status ----------------------------------------------------------------------------------


def task_status(store: Store, task: str) -> dict[str, Any]:
    """Everything ``status`` shows about one task, as a JSON-serialisable dict.

    Live agreement is the share of audit samples (traces of origin ``audit`` whose router label was
    recorded) where the router's label equals the teacher's. Savings are ``handled`` calls times
    the task's ``price_per_call`` setting, when both are known.
    """
    from ..versions import certified_coverage

    traces = store.traces(task)
    valid = sum(t.valid for t in traces)
    audits = [t for t in traces if t.origin == Origin.AUDIT.value and t.valid
              and t.router_label is not None]
    agree = sum(t.router_label == t.teacher for t in audits)
    version = store.current_version(task)
    manifest = store.manifest(task, version) if version is not None else None
    target = coverage = None
    certified = False
    if manifest is not None:
        target = float(manifest.get("target", 0.95))
        coverage = certified_coverage(manifest, target)
        certified = any(c["threshold"] is not None and c["target"] >= target
                        for c in manifest.get("certificates", []))
    counters = store.counters(task)
    handled, deferred = counters.get("handled"), counters.get("deferred")
    price = store.get_setting(task, "price_per_call")
    savings = (handled * float(price)) if handled is not None and price is not None else None
    return {
        "task": task,
        "traces": len(traces),
        "calls_logged": sum(t.count for t in traces),
        "valid": valid,
        "invalid": len(traces) - valid,
        "current_version": version,
        "versions": len(store.versions(task)),
        "target": target,
        "certified": certified,
        "certified_coverage": coverage,
        "audit_samples": len(audits),
        "live_agreement": agree / len(audits) if audits else None,
        "breaker": store.get_setting(task, "breaker"),
        "handled": handled,
        "deferred": deferred,
        "price_per_call": price,
        "savings": savings,
        "counters": counters,
    }


@app.command()
@_clean_errors
def status(
    ctx: typer.Context,
    tasks: Annotated[Optional[list[str]], typer.Argument(help="Tasks to show (default: all).")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per task: traces, current version, certified coverage, live agreement, breaker, savings."""
    st = _open_store(ctx, store)
    names = tasks or st.tasks()
    for name in names:
        _known_task(st, name)
    rows = [task_status(st, name) for name in names]
    if as_json:
        _emit_json({"store": str(st.path), "tasks": rows})
        return
    if not rows:
        console.print(f"No tasks in {st.path} yet.")
        return
    console.print(f"[bold]tracer_wrap store[/] {st.path}")
    for r in rows:
        console.print(_status_panel(r))


def _breaker_text(breaker: Any) -> str:
    """The drift breaker's setting (see tracer_wrap.breaker) in words."""
    if breaker is None:
        return "closed (not tripped)"
    if isinstance(breaker, dict):
        at = breaker.get("at")
        when = time.strftime(" at %Y-%m-%d %H:%M", time.localtime(at)) if at else ""
        return (f"[red]tripped[/] on version {breaker.get('version', '?')}{when}: "
                f"{breaker.get('reason', '')}")
    return str(breaker)


def _status_panel(r: dict[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    breaker = _breaker_text(r["breaker"])
    if r["current_version"] is None:
        router = "no router yet (every call goes to the LLM)"
    else:
        certified = (f"{_pct(r['certified_coverage'])} coverage certified" if r["certified"]
                     else "[yellow]gate refused: every call goes to the LLM[/]")
        router = f"v{r['current_version']} of {r['versions']} · target {r['target']:.2f} · {certified}"
    rows = [
        ("traces", f"{r['traces']} distinct inputs ({r['valid']} valid, {r['invalid']} invalid),"
                   f" {r['calls_logged']} calls logged"),
        ("router", router),
        ("live agreement", f"{_pct(r['live_agreement'])} on {r['audit_samples']} audit samples"),
        ("breaker", breaker),
        ("calls", "—" if r["handled"] is None and r["deferred"] is None
         else f"{r['handled'] or 0} handled locally, {r['deferred'] or 0} deferred to the LLM"),
        ("savings", "—" if r["savings"] is None
         else f"${r['savings']:,.2f} (at ${float(r['price_per_call']):g} per call)"),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    return Panel(grid, title=f"[bold]{r['task']}[/]", title_align="left", expand=False)


# -- fit -------------------------------------------------------------------------------------


def _embed_with_progress(embedder: Any, texts: list[str], *, label: str) -> None:
    """Embed ``texts`` in batches (filling the embedder's cache) behind a progress bar."""
    batch = 256
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        bar = progress.add_task(label, total=len(texts))
        for i in range(0, len(texts), batch):
            embedder.embed(texts[i:i + batch])
            progress.advance(bar, len(texts[i:i + batch]))


def _frontier_table(manifest: dict[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("target", "threshold", "coverage", "agreement", "accepted"):
        table.add_column(col, no_wrap=True)
    served = manifest.get("target")
    for c in manifest.get("certificates", []):
        mark = " ◀ served" if served is not None and abs(c["target"] - served) < 1e-9 else ""
        table.add_row(
            f"{c['target']:.2f}{mark}",
            "refused" if c["threshold"] is None else f"{c['threshold']:.4f}",
            _pct(c["coverage"]), _pct(c["agreement"]), str(c["n_accepted"]),
        )
        if mark and c["threshold"] is None and c.get("reason"):
            table.caption = f"target {c['target']:.2f} refused: {c['reason']}"
    return table


@app.command()
@_clean_errors
def fit(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task to fit.")],
    target: Annotated[float, typer.Option(min=0.01, max=1.0,
                                          help="Agreement to certify and serve.")] = 0.95,
    delta: Annotated[float, typer.Option(min=0.0001, max=0.5,
                                         help="Allowed error probability of the certificate.")] = 0.05,
    min_traces: Annotated[int, typer.Option(min=10, help="Refuse to fit below this many valid "
                                                         "traces.")] = 200,
    embedder: EmbedderOpt = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a router on the task's valid traces now and publish it if it is at least as good."""
    from ..options import make_embedder
    from ..engine import TracedTask

    st = _open_store(ctx, store)
    _known_task(st, task)
    emb = make_embedder(embedder)
    texts = [t.input for t in st.iter_traces(task, valid_only=True)]
    started = time.perf_counter()
    _embed_with_progress(emb, texts, label=f"embedding {len(texts)} traces")
    before = st.current_version(task)
    traced = TracedTask(task, store=st, embedder=emb, target=target, delta=delta,
                        min_traces=min_traces, refit_every=None)
    with err_console.status("fitting the router and certifying thresholds"):
        traced.refit()
    after = st.current_version(task)
    newest = st.versions(task)[-1]
    published = after is not None and after != before and after == newest["version"]
    result = {"task": task, "version": newest["version"], "published": published,
              "current_version": after, "seconds": round(time.perf_counter() - started, 2),
              "n_traces": newest.get("n_traces"), "certificates": newest.get("certificates", [])}
    if as_json:
        _emit_json(result)
        return
    console.print(_frontier_table(newest, f"{task}: version {newest['version']} "
                                          f"({newest.get('n_traces')} traces, calibration "
                                          f"{newest.get('n_calibration')})"))
    if published:
        console.print(f"[green]Serving version {after}.[/]")
    else:
        console.print(f"[yellow]Kept version {before}: version {newest['version']} certifies "
                      f"less coverage at target {target:.2f}.[/]")


# -- versions and rollback -------------------------------------------------------------------


@app.command()
@_clean_errors
def versions(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task whose router versions to list.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the task's router versions with their certified coverage; mark the one served."""
    from ..versions import certified_coverage

    st = _open_store(ctx, store)
    _known_task(st, task)
    current = st.current_version(task)
    rows = []
    for m in st.versions(task):
        target = float(m.get("target", 0.95))
        rows.append({"version": m["version"], "current": m["version"] == current,
                     "saved_at": m.get("saved_at"), "n_traces": m.get("n_traces"),
                     "target": target, "certified_coverage": certified_coverage(m, target),
                     "embedder": m.get("embedder"), "labels": len(m.get("labels", []))})
    if as_json:
        _emit_json({"task": task, "current_version": current, "versions": rows})
        return
    table = Table(title=f"{task}: router versions", title_justify="left")
    for col in ("version", "saved", "traces", "labels", "target", "coverage", "embedder"):
        table.add_column(col, no_wrap=col != "embedder", overflow="fold")
    table.caption = "● served now"
    for r in rows:
        saved = (time.strftime("%Y-%m-%d %H:%M", time.localtime(r["saved_at"]))
                 if r["saved_at"] else "—")
        table.add_row(f"v{r['version']}" + (" ●" if r["current"] else ""), saved,
                      str(r["n_traces"]), str(r["labels"]), f"{r['target']:.2f}",
                      _pct(r["certified_coverage"]), str(r["embedder"]))
    console.print(table if rows else f"{task} has no router versions yet.")


@app.command()
@_clean_errors
def rollback(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task to roll back.")],
    version: Annotated[int, typer.Argument(min=1, help="Version to serve from now on.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve an earlier (or any kept) version; every process picks it up on its next call."""
    from .. import versions as versions_mod

    st = _open_store(ctx, store)
    _known_task(st, task)
    previous = st.current_version(task)
    core_rollback = getattr(versions_mod, "rollback", None)
    if core_rollback is not None:
        core_rollback(st, task, version)
    else:
        if st.manifest(task, version) is None:
            kept = ", ".join(f"v{m['version']}" for m in st.versions(task)) or "none"
            raise ConfigError(f"{task!r} has no version {version} (kept: {kept})")
        versions_mod.load_version(st, task, version)  # refuse a corrupt or tampered file
        st.set_current(task, version)
    if as_json:
        _emit_json({"task": task, "previous_version": previous, "current_version": version})
    else:
        console.print(f"{task}: now serving version {version} (was "
                      f"{'none' if previous is None else previous}).")


# -- export and import -----------------------------------------------------------------------


@app.command("export")
@_clean_errors
def export_cmd(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task whose traces to export.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="JSONL file to write.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the task's valid traces as JSONL lines {"input": ..., "teacher": ...}."""
    st = _open_store(ctx, store)
    _known_task(st, task)
    n = st.export_jsonl(task, output)
    if as_json:
        _emit_json({"task": task, "exported": n, "path": str(output)})
    else:
        console.print(f"Exported {n} traces of {task} to {output}.")


@app.command("import")
@_clean_errors
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL trace file (tracer-llm format).")],
    task: Annotated[str, typer.Option("--task", help="Task to import into.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Append a JSONL trace file to a task; a malformed line imports nothing."""
    st = _open_store(ctx, store, must_exist=False)
    if not file.is_file():
        raise ConfigError(f"no such file: {str(file)!r}")
    before = st.count(task)
    n = st.import_jsonl(file, task)
    added = st.count(task) - before
    if as_json:
        _emit_json({"task": task, "lines": n, "new_traces": added})
    else:
        console.print(f"Imported {n} lines into {task} ({added} new distinct inputs).")


# -- report, serve, demo ---------------------------------------------------------------------


@app.command()
@_clean_errors
def report(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="Task to report on.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path(
        "report.html"),
    embedder: EmbedderOpt = None,
    store: StoreOpt = None,
) -> None:
    """Write one self-contained HTML report (opens offline) about the task and its router."""
    from ..options import make_embedder
    from .report import render_report

    st = _open_store(ctx, store)
    _known_task(st, task)
    emb = None
    version = st.current_version(task)
    if version is not None:
        manifest = st.manifest(task, version) or {}
        emb = make_embedder(embedder or manifest.get("embedder"))
        texts = [t.input for t in st.iter_traces(task, valid_only=True)]
        _embed_with_progress(emb, texts, label=f"routing {len(texts)} traces")
    html = render_report(st, task, embedder=emb)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, output)
    console.print(f"Wrote {output} ({len(html) // 1024} KiB).")


@app.command()
@_clean_errors
def serve(
    ctx: typer.Context,
    store: StoreOpt = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option(
        envvar="TRACER_WRAP_TOKEN", help="Require 'Authorization: Bearer TOKEN' "
                                         "[env: TRACER_WRAP_TOKEN].")] = None,
    max_body: Annotated[int, typer.Option(min=1024, help="Largest request body in bytes.")]
    = 1_000_000,
    embedder: EmbedderOpt = None,
) -> None:
    """Run the HTTP sidecar: route and log traces from applications in any language."""
    from .server import run

    st = _open_store(ctx, store, must_exist=False)
    err_console.print(f"tracer_wrap sidecar on http://{host}:{port} (store {st.path}, "
                      f"{'token required' if token else 'no token'})")
    run(st, host=host, port=port, token=token, max_body_bytes=max_body, embedder=embedder)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@_clean_errors
def demo(ctx: typer.Context) -> None:
    """Run the offline Banking77 demo; extra options go to it (see: tracer-wrap demo --help-demo)."""
    try:
        from ..lab.demo import main as demo_main
    except ImportError as exc:
        if exc.name == "tracer_wrap.lab.demo":
            raise ConfigError("the demo is not available in this build") from None
        raise
    args = ["--help" if a == "--help-demo" else a for a in ctx.args]
    try:
        result = demo_main(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        raise typer.Exit(exc.code if isinstance(exc.code, int) else 2) from None
    if isinstance(result, int) and result:
        raise typer.Exit(result)


def main() -> None:
    """Entry point of the ``tracer-wrap`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    app(prog_name="tracer-wrap")


# ============================================================================================
# Commands provided by other modules are registered here, below this line, one line each, e.g.
#
#     from .bench import bench_command           # tracer-wrap bench     (tracer_wrap/bench.py)
#     app.command("bench")(bench_command)
#     from .simulate import simulate_command     # tracer-wrap simulate  (tracer_wrap/simulate.py)
#     app.command("simulate")(simulate_command)
#     # tracer-wrap tasks / run                  (zero-code mode)
#
# Wrap a command in ``_clean_errors`` for the exit-code convention (TracerWrapError -> 1).
# --- registration block: start ---
from ..lab.bench import bench_command  # noqa: E402

app.command("bench")(_clean_errors(bench_command))
from ..store.migrate import migrate_command  # noqa: E402
from ..lab.simulate import simulate_command  # noqa: E402
from ..integrations.zero_code import run_command, tasks_command  # noqa: E402

app.command("simulate")(_clean_errors(simulate_command))
app.command("migrate")(_clean_errors(migrate_command))

app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    _clean_errors(run_command))
app.command("tasks")(_clean_errors(tasks_command))
# --- registration block: end ---


if __name__ == "__main__":
    main()
