"""The ``tracer-wrap`` command: look at a store's tasks and act on them without writing Python.

Every command works on one store: its own ``--store``, else the global ``--store``, else
``$TRACER_WRAP_STORE``, else the ``store`` key of ``tracer_wrap.toml``, else ``./.tracer_wrap``
(:func:`tracer_wrap.options.store_spec`). Read commands take ``--json`` and then print one JSON
document on stdout (progress bars and messages go to stderr). Exit codes, the same for the same
error in every command: 0 ok; 1 an error tracer_wrap reports (a store, a task or a file that
cannot be used, a refusal), printed as one line without traceback; 2 a usage error.

Help texts are the commands' docstrings, so they are written as plain text.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import names
from ..errors import ConfigError, StoreTampered, TracerWrapError
from ..options import TaskOptions, store_spec
from ..store import REDIS_SCHEMES, Store, open_store

if TYPE_CHECKING:  # numpy and the model load lazily: the CLI starts fast
    from ..model.embedder import Embedder

__all__ = ["app", "main"]

app = typer.Typer(
    name="tracer-wrap",
    help="Inspect and operate tracer_wrap stores: status, fit, versions, routing, prices, "
         "reports, the HTTP sidecar.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
#: C0 and C1 control characters but tab and newline. Task names come from callers (``task=``,
#: the gateway's task header) and labels from LLMs: printed raw, an escape sequence among them
#: would clear the operator's screen, retitle the terminal or forge output.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(text: str) -> str:
    """``text`` with every control character written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _PlainConsole(Console):
    """A console that prints strings as they are: no markup, emoji or highlighting (``[/]`` in
    a label would raise, ``[link=...]`` would make a hyperlink of it), control characters shown
    escaped. Every string printed, table cells and titles included, goes through
    :meth:`render_str`; a Panel's title does not, so it is given as a Text of
    :func:`_visible`."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(_visible(text), **kwargs)


console = _PlainConsole(soft_wrap=True, markup=False, emoji=False, highlight=False)
err_console = _PlainConsole(stderr=True, soft_wrap=True, markup=False, emoji=False,
                            highlight=False)

F = TypeVar("F", bound=Callable[..., Any])

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="Store directory or redis:// URL (default: the global --store, "
                                 "$TRACER_WRAP_STORE, tracer_wrap.toml, ./.tracer_wrap)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
EmbedderOpt = Annotated[
    str | None,
    typer.Option("--embedder", help="Embedding model name, or 'hashing' (tiny, for tests and "
                                    "trials). Default: $TRACER_WRAP_EMBEDDER, tracer_wrap.toml, "
                                    "all-MiniLM-L6-v2."),
]
TaskArg = Annotated[str, typer.Argument(help="Task name (tracer-wrap tasks lists them).")]


@app.callback()
def _root(
    ctx: typer.Context,
    store: Annotated[str | None, typer.Option(
        "--store", help="Store directory or redis:// URL for every command (default: "
                        "$TRACER_WRAP_STORE, tracer_wrap.toml, ./.tracer_wrap).")] = None,
) -> None:
    ctx.obj = {"store": store}


def command(name: str | None = None, **settings: Any) -> Callable[[F], F]:
    """Register a command whose tracer_wrap errors print as one line and exit with code 1."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (TracerWrapError, OSError) as exc:
                err_console.print(f"error: {exc}", soft_wrap=True)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        app.command(name, **settings)(wrapper)
        return fn

    return register


def _store_of(ctx: typer.Context, store: str | None, *, must_exist: bool = True,
              reads_only: bool = False) -> Store:
    """The store of the command; ``reads_only`` for a command that only reads it, so that a
    store on a read-only mount opens too."""
    spec = store_spec(store or (ctx.obj or {}).get("store"))
    if isinstance(spec, str) and must_exist and not spec.startswith(REDIS_SCHEMES) \
            and not Path(spec).is_dir():
        raise ConfigError(f"no store at {spec!r} (use --store, $TRACER_WRAP_STORE or the store key"
                          f" of {names.CONFIG_FILE})")
    return open_store(spec, reads_only=reads_only)


def _known_task(store: Store, task: str) -> None:
    if task not in store.tasks():
        known = ", ".join(repr(t) for t in store.tasks()) or "none"
        raise ConfigError(f"no task {task!r} in {str(store.path)!r} (tasks: {known})")


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _target(value: float | None) -> str:
    """A target with every digit it has (0.999, not 1.00)."""
    return "—" if value is None else f"{value:.4g}"


def _money(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _when(ts: float | None) -> str:
    return "—" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


# -- status ----------------------------------------------------------------------------------


@command()
def status(
    ctx: typer.Context,
    tasks: Annotated[list[str] | None, typer.Argument(help="Tasks to show (default: all).")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Per task: traces, served version, certified coverage, routing, live agreement, breaker,
    calls answered locally and money saved."""
    from .status import task_status

    st = _store_of(ctx, store, reads_only=True)
    selected = tasks or st.tasks()
    for name in selected:
        _known_task(st, name)
    rows = [task_status(st, name) for name in selected]
    if as_json:
        _emit_json({"store": str(st.path), "tasks": rows})
        return
    if not rows:
        console.print(f"No tasks in {st.path} yet.")
        return
    console.print(f"tracer_wrap store {st.path}")
    for row in rows:
        console.print(_status_panel(row))


def _breaker_text(breaker: Any) -> str:
    if breaker is None:
        return "closed (not tripped)"
    if isinstance(breaker, dict):
        return (f"tripped on version {breaker.get('version', '?')} at {_when(breaker.get('at'))}:"
                f" {breaker.get('reason', '')}")
    return str(breaker)


def _routing_text(value: Any) -> str:
    if value is None:
        return "each process's own setting (default on)"
    return "on" if value else "off (shadow mode: nothing answered locally)"


def _status_panel(r: dict[str, Any]) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    if r["current_version"] is None and r["refused"]:  # its pointer cannot be read
        router = f"REFUSED, every call goes to the LLM: {r['refused']}"
    elif r["current_version"] is None:
        router = "no router yet (every call goes to the LLM)"
    else:
        certified = (f"{_pct(r['certified_coverage'])} coverage certified" if r["certified"]
                     else "gate refused: every call goes to the LLM")
        pinned = " (pinned)" if r["pinned_version"] == r["current_version"] else ""
        router = (f"v{r['current_version']}{pinned} of {r['versions']} · target "
                  f"{_target(r['target'])} · {certified}")
        if r["refused"]:
            router = (f"v{r['current_version']}{pinned} REFUSED, every call goes to the LLM:"
                      f" {r['refused']}")
    usage = r["usage"]
    calls = (f"{usage['calls']:,} calls: {usage['local']:,} answered locally, {usage['llm']:,}"
             f" LLM answers ({usage['audits']:,} audits, {usage['invalid']:,} invalid)")
    if usage["price"] is None:
        money = "no price set (tracer-wrap price TASK --per-call ...)"
    else:
        money = (f"{_money(usage['saved'])} saved on {usage['llm_calls_avoided']:,} LLM calls"
                 f" avoided; LLM spend {_money(usage['llm_cost'])} (price "
                 f"{_price_text(usage['price'])})")
    rows = [
        ("traces", f"{r['traces']:,} distinct inputs ({r['valid']:,} valid, {r['invalid']:,}"
                   f" invalid), {r['calls_logged']:,} calls logged"),
        ("router", router),
        ("routing", _routing_text(r["routing"])),
        ("live agreement", f"{_pct(r['live_agreement'])} on {r['audit_samples']} audit samples"),
        ("breaker", _breaker_text(r["breaker"])),
        ("calls", calls),
        ("lost traces", f"{usage['dropped']:,} dropped (a process's buffer was full),"
                        f" {usage['poisoned']:,} poisoned (refused by the store)"),
        ("savings", money),
    ]
    if r.get("unreadable"):
        rows.append(("damaged rows", f"{r['unreadable']:,} store rows cannot be read and were"
                                     " skipped (each is logged with its key)"))
    for key, value in rows:
        grid.add_row(key, value)
    return Panel(grid, title=Text(_visible(r["task"])), title_align="left", expand=False)


def _price_text(price: dict[str, float]) -> str:
    from ..accounting import Price

    return Price(**price).describe()


# -- fit -------------------------------------------------------------------------------------


def _embed_missing(st: Store, task: str, embedder: Embedder, *, verb: str) -> None:
    """Embed the valid traces of ``task`` that have no stored vector of ``embedder`` behind a
    progress bar, filling the embedder's cache for the refit or report that stores them."""
    from ..refit import unembedded

    traces = list(st.iter_traces(task, valid_only=True))
    texts = [t.input for t in unembedded(st, task, traces, embedder.name)]
    _embed_with_progress(embedder, texts,
                         label=f"{verb}: embedding {len(texts)} of {len(traces)} traces")


def _embed_with_progress(embedder: Embedder, texts: list[str], *, label: str) -> None:
    """Embed ``texts`` in batches (filling the embedder's cache) behind a progress bar."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as progress:
        bar = progress.add_task(label, total=len(texts))
        embedder.embed_chunked(texts, done=lambda n: progress.advance(bar, n))


def _frontier_table(rows: list[dict[str, Any]], served: float | None, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("target", "threshold", "coverage", "agreement", "saved / 1,000 calls"):
        table.add_column(col, no_wrap=True)
    for row in rows:
        mark = " ◀ served" if served is not None and abs(row["target"] - served) < 1e-12 else ""
        table.add_row(
            f"{_target(row['target'])}{mark}",
            "refused" if row["threshold"] is None else f"{row['threshold']:.4f}",
            _pct(row["coverage"]), _pct(row["agreement"]), _money(row["saved_per_1000_calls"]))
        if mark and row["threshold"] is None and row.get("reason"):
            table.caption = f"target {_target(row['target'])} refused: {row['reason']}"
    return table


@command()
def fit(
    ctx: typer.Context,
    task: TaskArg,
    target: Annotated[float | None, typer.Option(
        min=0.01, max=1.0, help="Agreement to certify and serve (default: the task's options).")]
    = None,
    delta: Annotated[float | None, typer.Option(
        min=0.0001, max=0.5, help="Allowed error probability of the certificate.")] = None,
    min_traces: Annotated[int | None, typer.Option(
        min=10, help="Refuse to fit below this many valid traces.")] = None,
    embedder: EmbedderOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Serve the new version even if it certifies nothing, or replace a "
                        "version fitted with another embedder.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a router on the task's valid traces now. Publish rule: the new fit and the served
    version are certified on the same fresh calibration traces at delta/2 each, and the one that
    certifies more coverage at the target is published (the served one with its new
    certificate); with no served version the fit is certified at delta and served if it
    certifies the target. One that certifies nothing, or that was fitted with another embedder
    than the served version, is only saved, unless --force."""
    from ..engine import TracedTask
    from .status import frontier_rows

    st = _store_of(ctx, store)
    _known_task(st, task)
    explicit = {"target": target, "delta": delta, "min_traces": min_traces,
                "embedder": embedder, "store": st, "refit_every": None,
                "refit_executor": "inline"}
    traced = TracedTask(task, options=TaskOptions.resolve(task, explicit))
    try:
        before = st.current_version(task)
        served = st.manifest(task, before) if before is not None else None
    except StoreTampered as exc:  # the fit replaces what cannot be read (with --force)
        err_console.print(f"warning: {exc}", highlight=False, soft_wrap=True, markup=False)
        before, served = None, None
    if served is not None and not force and served.get("embedder") not in (
            None, traced.embedder.name):
        raise ConfigError(
            f"version {before} of {task!r} was fitted with embedder {served.get('embedder')!r};"
            f" a router fitted with {traced.embedder.name!r} cannot serve the processes that embed"
            f" with it. Pass --embedder {served.get('embedder')} or --force.")
    started = time.perf_counter()
    _embed_missing(st, task, traced.embedder, verb="embedding")
    with err_console.status("fitting the router and certifying thresholds"):
        traced.refit()
    newest = st.versions(task)[-1]
    after = st.current_version(task)
    if force and after != newest["version"]:
        from ..versions import rollback

        rollback(st, task, newest["version"])
        after = newest["version"]
    traced.close()
    published = after == newest["version"] and after != before
    from ..accounting import read_summary

    rows = frontier_rows(newest, read_summary(st, task))
    result = {"task": task, "version": newest["version"], "published": published,
              "current_version": after, "seconds": round(time.perf_counter() - started, 2),
              "n_traces": newest.get("n_traces"), "embedder": newest.get("embedder"),
              "target": newest.get("target"), "frontier": rows}
    if as_json:
        _emit_json(result)
        return
    console.print(_frontier_table(rows, newest.get("target"),
                                  f"{task}: version {newest['version']} ({newest.get('n_traces')}"
                                  f" traces, calibration {newest.get('n_calibration')})"))
    if published:
        console.print(f"Serving version {after}.")
    else:
        console.print(f"Kept version {before}: version {newest['version']} certifies nothing at"
                      f" target {_target(newest.get('target'))} (saved; --force serves it).")


# -- versions, rollback, pin -------------------------------------------------------------------


@command()
def versions(ctx: typer.Context, task: TaskArg, store: StoreOpt = None,
             as_json: JsonOpt = False) -> None:
    """List the task's router versions: when each was fitted, on how many traces, what it
    certified at its target; mark the one served and the pinned one."""
    from ..versions import certified_coverage, pinned_version
    from .status import refusal

    st = _store_of(ctx, store, reads_only=True)
    _known_task(st, task)
    current, pinned = st.current_version(task), pinned_version(st, task)
    refused = refusal(st, task, current)
    rows = []
    for m in st.versions(task):
        target = float(m.get("target", 0.95))
        rows.append({"version": m["version"], "current": m["version"] == current,
                     "pinned": m["version"] == pinned, "saved_at": m.get("saved_at"),
                     "n_traces": m.get("n_traces"), "target": target,
                     "certified_coverage": certified_coverage(m, target),
                     "embedder": m.get("embedder"), "labels": len(m.get("labels", []))})
    if as_json:
        _emit_json({"task": task, "current_version": current, "pinned_version": pinned,
                    "refused": refused, "versions": rows})
        return
    caption = "● served now, 📌 pinned"
    if refused:
        caption = (f"● v{current} is REFUSED, every call goes to the LLM: {refused}\n"
                   "📌 pinned")
    table = Table(title=f"{task}: router versions", title_justify="left", caption=caption)
    for col in ("version", "fitted", "traces", "labels", "target", "coverage", "embedder"):
        table.add_column(col, no_wrap=col != "embedder", overflow="fold")
    for r in rows:
        mark = (" ●" if r["current"] else "") + (" 📌" if r["pinned"] else "")
        table.add_row(f"v{r['version']}{mark}", _when(r["saved_at"]), str(r["n_traces"]),
                      str(r["labels"]), _target(r["target"]), _pct(r["certified_coverage"]),
                      str(r["embedder"]))
    console.print(table if rows else f"{task} has no router versions yet.")


@command()
def rollback(
    ctx: typer.Context,
    task: TaskArg,
    version: Annotated[int, typer.Argument(min=1, help="Version to serve from now on.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve an earlier (or any kept) version; every process picks it up within a second. A
    later refit that wins the publish rule's contest replaces it; pin it to stop that."""
    from ..versions import rollback as do_rollback

    st = _store_of(ctx, store)
    _known_task(st, task)
    try:
        previous: int | str | None = st.current_version(task)
    except StoreTampered:  # what a rollback is for: it replaces the unreadable pointer
        previous = "unreadable"
    do_rollback(st, task, version)
    if as_json:
        _emit_json({"task": task, "previous_version": previous, "current_version": version})
    else:
        console.print(f"{task}: now serving version {version} (was "
                      f"{'none' if previous is None else previous}).")


@command()
def pin(
    ctx: typer.Context,
    task: TaskArg,
    version: Annotated[int, typer.Argument(min=1, help="Version to serve until unpinned.")],
    store: StoreOpt = None,
) -> None:
    """Serve a version and keep serving it whatever refits publish, until unpin."""
    from ..versions import pin as do_pin

    st = _store_of(ctx, store)
    _known_task(st, task)
    do_pin(st, task, version)
    console.print(f"{task}: version {version} is served and pinned.")


@command()
def unpin(ctx: typer.Context, task: TaskArg, store: StoreOpt = None) -> None:
    """Let refits replace the served version again (under the publish rule)."""
    from ..versions import unpin as do_unpin

    st = _store_of(ctx, store)
    _known_task(st, task)
    do_unpin(st, task)
    console.print(f"{task}: unpinned; refits may replace the served version again.")


# -- routing and price ------------------------------------------------------------------------


@command()
def routing(
    ctx: typer.Context,
    task: TaskArg,
    switch: Annotated[str, typer.Argument(
        help="on: answer locally where certified. off: shadow mode, every call goes to the LLM "
             "while traces are logged and the router is scored on what it would have answered. "
             "default: each process's own routing option.")],
    store: StoreOpt = None,
) -> None:
    """Switch local answers of a task on or off for every process sharing the store (each
    process follows within a second)."""
    values = {"on": True, "off": False, "shadow": False, "default": None}
    if switch not in values:
        raise typer.BadParameter(f"expected on, off or default, got {switch!r}")
    st = _store_of(ctx, store)
    _known_task(st, task)
    st.set_setting(task, names.SETTING_ROUTING, values[switch])
    console.print(f"{task}: routing {_routing_text(values[switch])}.")


@command()
def price(
    ctx: typer.Context,
    task: TaskArg,
    per_call: Annotated[float | None, typer.Option(
        "--per-call", min=0.0, help="Cost of one LLM call.")] = None,
    input_per_mtok: Annotated[float | None, typer.Option(
        "--input-per-mtok", min=0.0, help="Cost of a million input tokens.")] = None,
    output_per_mtok: Annotated[float | None, typer.Option(
        "--output-per-mtok", min=0.0, help="Cost of a million output tokens.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the task's price.")] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set (or show) what one LLM call of the task costs; savings are counted at this price. An
    application that sets a price in code, the environment or tracer_wrap.toml writes its own."""
    from ..accounting import read_summary
    from ..options import check_price

    given = {k: v for k, v in (("per_call", per_call), ("input_per_mtok", input_per_mtok),
                               ("output_per_mtok", output_per_mtok)) if v is not None}
    if clear and given:
        raise typer.BadParameter("--clear takes no prices")
    try:  # the options' own check: typer's min=0.0 lets inf through
        new_price = check_price(given, "price") if given else None
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    st = _store_of(ctx, store)
    _known_task(st, task)
    if clear:
        st.set_setting(task, names.SETTING_PRICE, None)
    elif new_price is not None:
        st.set_setting(task, names.SETTING_PRICE, new_price.as_dict())
    usage = read_summary(st, task)
    if as_json:
        _emit_json(usage)
    elif usage["price"] is None:
        console.print(f"{task}: no price set.")
    else:
        console.print(f"{task}: {_price_text(usage['price'])}; saved so far"
                      f" {_money(usage['saved'])} on {usage['llm_calls_avoided']:,} LLM calls"
                      " avoided.")


# -- export and import -----------------------------------------------------------------------


@command("export")
def export_cmd(
    ctx: typer.Context,
    task: TaskArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="JSONL file to write.")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the task's valid traces as JSONL lines {"input": ..., "teacher": ...}."""
    st = _store_of(ctx, store, reads_only=True)
    _known_task(st, task)
    n = st.export_jsonl(task, output)
    if as_json:
        _emit_json({"task": task, "exported": n, "path": str(output)})
    else:
        console.print(f"Exported {n} traces of {task} to {output}.")


@command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="The file of logged calls or traces.")],
    fmt: Annotated[str, typer.Option(
        "--format", help="tracer (JSONL input/teacher), csv, openai (chat JSONL: fine-tuning "
                         "lines or request/response pairs), langfuse, langsmith, otlp "
                         "(OpenTelemetry GenAI spans), helicone; auto: detect.")] = "auto",
    task: Annotated[str | None, typer.Option(
        "--task", help="Import into this task: everything of a tracer or csv file, or the one "
                       "task found in the others.")] = None,
    task_keys: Annotated[list[str] | None, typer.Option(
        "--task-key", help="Import the task found under this key (or a unique start of it); "
                           "repeat for several.")] = None,
    as_name: Annotated[str | None, typer.Option(
        "--as", help="Name the one task imported (default: its key, the name live traffic of "
                     "its template gets).")] = None,
    import_all: Annotated[bool, typer.Option(
        "--all", help="Import every task found, each under its key.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", help="Take this as every call's model (the model is part of the task key: "
                        "give the one your application asks for).")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn from calls already logged: read a file, show the classification tasks found in it
    (grouped by prompt template, as zero-code mode does), and import only the tasks named. A
    malformed file imports nothing."""
    from .imports import discover, import_tasks

    if as_name is not None and task is not None:
        raise typer.BadParameter("give --task or --as, not both")
    name = as_name or task
    found = discover(file, fmt, model=model)
    flat = found.format in ("tracer", "csv")
    if flat and (task_keys or import_all):
        raise typer.BadParameter(f"a {found.format} file holds one task: name it with --task")
    if task_keys:
        chosen = [found.select(key) for key in task_keys]
    elif import_all:
        chosen = list(found.tasks)
    elif name is not None:
        if len(found.tasks) > 1:
            raise ConfigError(f"{file} holds {len(found.tasks)} tasks; pick one with --task-key"
                              " (tracer-wrap import FILE lists them)")
        chosen = list(found.tasks)
    else:
        chosen = []
    if name is not None and len(chosen) > 1:
        raise typer.BadParameter("--as names one task: give one --task-key")
    if flat and chosen and name is None:
        raise typer.BadParameter(f"name the task to import this {found.format} file into with"
                                 " --task")
    if not chosen:
        _show_discovery(found, file, as_json)
        return
    st = _store_of(ctx, store, must_exist=False)
    results = import_tasks(st, [(t, name or t.key) for t in chosen])
    if as_json:
        _emit_json(results[0] if name is not None else {"imported": results})
        return
    for result in results:
        console.print(f"Imported {result['lines']} records into {result['task']}"
                      f" ({result['new_traces']} new distinct inputs).")
        if result["not_a_label"]:
            top = ", ".join(f"{answer!r} x{n}" for answer, n in result["not_a_label_top"])
            console.print(f"Left out {result['not_a_label']} records whose answer names no label"
                          f" of {result['task']} (most often: {top}).")


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def _show_discovery(found: Any, file: Path, as_json: bool) -> None:
    if as_json:
        _emit_json(found.as_dict())
        return
    skipped = sum(found.skipped.values())
    console.print(f"{file}: {found.format} format, {found.records} records, {skipped} skipped.")
    for reason, n in found.skipped.most_common():
        console.print(f"  skipped {n}: {reason}")
    if not found.tasks:
        console.print("No classification-shaped calls found: nothing to import.")
        return
    table = Table(title="tasks found (nothing imported yet)", title_justify="left")
    for column in ("task key", "records", "labels", "classification?"):
        table.add_column(column, no_wrap=True)
    table.add_column("top labels", overflow="fold")
    for t in found.tasks:
        row = t.summary()
        table.add_row(row["task_key"] or "—", str(row["records"]), str(row["labels"]),
                      "yes" if row["classification"] else "no",
                      ", ".join(_clip(label, 24) for label in row["top_labels"]))
    console.print(table)
    for t in found.tasks:
        model = f" ({t.model})" if t.model else ""
        console.print(f"{t.key or 'template'}{model}: {t.template}")
    if found.format in ("tracer", "csv"):
        console.print(f"Import it: tracer-wrap import {file} --task NAME")
    else:
        console.print(f"Import one: tracer-wrap import {file} --task-key KEY [--as NAME];"
                      " every task: --all")


# -- report, serve, tasks, run --------------------------------------------------------------------


@command()
def report(
    ctx: typer.Context,
    task: TaskArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path(
        "report.html"),
    embedder: Annotated[str | None, typer.Option(
        "--embedder", help="Embedding model name, or 'hashing'. Default: the embedder the "
                           "served version was fitted with.")] = None,
    store: StoreOpt = None,
) -> None:
    """Write one self-contained HTML report (opens offline) about the task and its router."""
    from ..model.embedder import make_embedder
    from .report import render_report

    st = _store_of(ctx, store, reads_only=True)
    _known_task(st, task)
    emb = None
    version = st.current_version(task)
    if version is not None:
        manifest = st.manifest(task, version) or {}
        emb = make_embedder(embedder or manifest.get("embedder"))
        _embed_missing(st, task, emb, verb="routing")
    html = render_report(st, task, embedder=emb)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, output)
    console.print(f"Wrote {output} ({len(html) // 1024} KiB).")


@command()
def serve(
    ctx: typer.Context,
    store: StoreOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")]
    = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        envvar=names.ENV_TOKEN, help="Require 'Authorization: Bearer TOKEN'.")] = None,
    max_body: Annotated[int, typer.Option(min=1024, help="Largest request body in bytes.")]
    = 1_000_000,
    embedder: EmbedderOpt = None,
) -> None:
    """Run the HTTP sidecar: route inputs and log LLM answers from applications in any language,
    through the same engine as the Python library."""
    from .server import run

    st = _store_of(ctx, store, must_exist=False)

    def ready() -> None:  # after the checks: no banner for a sidecar that refuses to start
        err_console.print(f"tracer_wrap sidecar on http://{host}:{port} (store {st.path}, "
                          f"{'token required' if token else 'no token'})")

    run(st, host=host, port=port, token=token, max_body_bytes=max_body, embedder=embedder,
        ready=ready)


@command()
def gateway(
    ctx: typer.Context,
    store: StoreOpt = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(
        help="Interface to bind (127.0.0.1: this machine only; any other needs --token).")]
    = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        envvar=names.ENV_TOKEN, help="Require this token in the X-Tracer-Wrap-Token header of "
                                     "every request.")] = None,
    openai_upstream: Annotated[str, typer.Option(
        "--openai-upstream", help="Base URL of the OpenAI-compatible API calls go to.")]
    = "https://api.openai.com/v1",
    anthropic_upstream: Annotated[str, typer.Option(
        "--anthropic-upstream", help="Base URL of the Anthropic API calls go to.")]
    = "https://api.anthropic.com",
    routing_on: Annotated[bool, typer.Option(
        "--routing/--no-routing",
        help="Answer locally for every task whose store switch is not off (default: only tasks "
             "switched on with tracer-wrap routing TASK on).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    timeout: Annotated[float, typer.Option(
        min=1.0, help="Seconds to wait on the upstream: for each piece of an answer (and at "
                      "most 10 to connect).")] = 600.0,
    embedder: EmbedderOpt = None,
) -> None:
    """Run the OpenAI- and Anthropic-compatible gateway. Point an application at it by its base
    URL only (OPENAI_BASE_URL=http://HOST:PORT/v1, ANTHROPIC_BASE_URL=http://HOST:PORT): every call
    goes to the upstream with the caller's own API key, except the classification calls a
    certified router answers locally; the others become traces, grouped into tasks by prompt
    template (tracer-wrap tasks lists them)."""
    from .gateway import run as run_gateway
    from .gateway import upstream_problem

    for option, url in (("--openai-upstream", openai_upstream),
                        ("--anthropic-upstream", anthropic_upstream)):
        why = upstream_problem(url)
        if why is not None:  # a usage error, as typer reports its own: exit 2
            err_console.print(f"error: {option}: {why}")
            raise typer.Exit(2)
    spec = store_spec(store or (ctx.obj or {}).get("store"))
    where = str(spec.path) if isinstance(spec, Store) else spec

    def ready() -> None:  # after the checks: no banner for a gateway that refuses to start
        err_console.print(f"tracer_wrap gateway on http://{host}:{port}/v1 -> {openai_upstream}"
                          f" and http://{host}:{port} -> {anthropic_upstream} (store {where},"
                          f" {'token required' if token else 'no token'})")

    run_gateway(where, host=host, port=port, token=token, workers=workers,
                openai_upstream=openai_upstream, anthropic_upstream=anthropic_upstream,
                routing=routing_on, embedder=embedder, timeout=timeout, ready=ready)


@command()
def tasks(ctx: typer.Context, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """List the tasks discovered in the store: calls, distinct outputs, whether each looks like
    classification, whether routing is on and the coverage certified today."""
    from ..integrations.zero_code import task_summaries

    st = _store_of(ctx, store, reads_only=True)
    rows = task_summaries(st)
    if as_json:
        _emit_json(rows)
        return
    table = Table(title="tracer_wrap tasks")
    # The task key is what `routing TASK on` takes: never cut, folded when too wide.
    table.add_column("task", overflow="fold")
    for column in ("calls", "distinct outputs", "classification?", "routing", "coverage",
                   "top outputs"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["task"], str(row["calls"]), str(row["distinct_outputs"]),
                      "yes" if row["classification"] else "no",
                      {True: "on", False: "off", None: "default"}[row["routing"]],
                      _pct(row["coverage"]), ", ".join(row["top_outputs"]))
    console.print(table)
    if rows:
        store_flag = (ctx.obj or {}).get("store")
        prefix = f"tracer-wrap --store {store_flag}" if store_flag else "tracer-wrap"
        console.print(f"Turn routing on for a task: {prefix} routing TASK on")


@command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_cmd(
    ctx: typer.Context,
    argv: Annotated[list[str], typer.Argument(help="The program and its arguments, after --.")],
    store: StoreOpt = None,
    routing_on: Annotated[bool, typer.Option(
        "--routing/--no-routing",
        help="Route every task whose store switch is not off (default: only tasks switched "
             "on).")] = False,
) -> None:
    """Run a program with every openai and anthropic chat call traced, no code change:
    tracer-wrap run -- python app.py"""
    from ..integrations.zero_code import launch_env

    if not argv:
        raise typer.BadParameter("name the program to run, e.g. tracer-wrap run -- python app.py")
    spec = store_spec(store or (ctx.obj or {}).get("store"))
    os.execvpe(argv[0], list(argv), launch_env(store=str(spec), routing=routing_on))


@command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                           "help_option_names": []})
def demo(ctx: typer.Context) -> None:
    """Run the offline Banking77 demo; its options (--queries, --target, ...) go to it
    (tracer-wrap demo --help)."""
    from ..lab.demo import main as demo_main

    # --help is the demo's own (argparse lists its options); --help-demo still works.
    args = ["--help" if a in ("--help", "--help-demo") else a for a in ctx.args]
    try:
        demo_main(args, prog="tracer-wrap demo")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        raise typer.Exit(exc.code if isinstance(exc.code, int) else 2) from None


@command()
def migrate(
    from_: Annotated[str, typer.Option(
        "--from", help="Source store: a directory or redis:// URL.")],
    to: Annotated[str, typer.Option(
        "--to", help="Destination store: a directory or redis:// URL.")],
) -> None:
    """Copy traces, counters, settings and router versions from one store into another. Running
    it again copies only what is new since the last run."""
    from ..store.migrate import migrate as do_migrate

    for task, counts in do_migrate(from_, to).items():
        damaged = (f"; {counts['unreadable']} damaged rows skipped (see the warnings)"
                   if counts.get("unreadable") else "")
        console.print(f"{task}: {counts['traces']} traces, {counts['counters']} counters,"
                      f" {counts['settings']} settings, {counts['versions']} versions copied"
                      f"{damaged}")


def _register_lab() -> None:
    from ..lab.bench import bench_command
    from ..lab.simulate import simulate_command

    command("bench")(bench_command)
    command("simulate")(simulate_command)


_register_lab()


def main() -> None:
    """Entry point of the ``tracer-wrap`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    app(prog_name="tracer-wrap")


if __name__ == "__main__":
    main()
