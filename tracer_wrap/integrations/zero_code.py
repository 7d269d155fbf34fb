"""Zero-code mode: trace every chat call of the openai and anthropic SDKs, route only when told.

``tracer_wrap.autolog()`` (one line at start-up) patches the SDK classes' chat methods once:
``chat.completions.create`` / ``parse`` and ``responses.create`` / ``parse`` of openai
(``stream()`` goes through ``create``), ``messages.create`` / ``parse`` / ``stream`` of anthropic
(if installed), sync and async; ``with_raw_response`` and ``with_streaming_response`` reach the
patched methods. Every classification-shaped call is logged to the store under the task of its
prompt template, once the template recurs (a one-off prompt, such as a chat turn, is left alone).
Nothing is routed until a task's routing switch is on in the store::

    tracer-wrap routing <task> on

The launcher needs no code change at all (the way ``opentelemetry-instrument`` works)::

    tracer-wrap run -- python app.py

runs the program with ``PYTHONPATH`` starting with a directory whose ``sitecustomize.py`` calls
:func:`autolog` (and then runs the program's own ``sitecustomize``, if any). ``tracer-wrap tasks``
lists the discovered tasks. Patching is opt-in, idempotent and undone by :func:`disable`
(also available as ``autolog.disable()``).

Environment variables read by the launcher's ``sitecustomize``:
:data:`~tracer_wrap.names.ENV_AUTOLOG` (set by ``tracer-wrap run``) and
:data:`~tracer_wrap.names.ENV_AUTOLOG_ROUTING`; task options come from ``TRACER_WRAP_*`` and
``tracer_wrap.toml`` as everywhere.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import names
from ..store import Store, open_store
from ._sdk import ApiSpec, Tasks, inside_wrapper

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ..options import TaskKwargs

__all__ = ["autolog", "disable", "enabled", "launch_env", "task_summaries"]

LAUNCHER_DIR = Path(__file__).resolve().parent / "_launcher"

_lock = threading.Lock()
_tasks: Tasks | None = None
# (class, method name, original attribute, the method autolog set there)
_patched: list[tuple[type, str, Any, Any]] = []


def _patch(cls: type, name: str, spec: ApiSpec, kind: str) -> None:
    original = cls.__dict__[name]

    if kind == "async":
        @functools.wraps(original)
        async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            tasks = _tasks
            if tasks is None or inside_wrapper():
                return await original(self, *args, **kwargs)
            return await tasks.arun(spec, functools.partial(original, self), args, kwargs)
    else:
        @functools.wraps(original)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            tasks = _tasks
            if tasks is None or inside_wrapper():
                return original(self, *args, **kwargs)
            bound = functools.partial(original, self)
            return tasks.run(spec, bound, args, kwargs, is_async=kind == "async manager")

    method.__tracer_wrap_original__ = original  # type: ignore[attr-defined]
    setattr(cls, name, method)
    _patched.append((cls, name, original, method))


def _targets() -> list[tuple[type, str, ApiSpec, str]]:
    from openai.resources.chat.completions import AsyncCompletions, Completions
    from openai.resources.responses import AsyncResponses, Responses

    from . import _openai as o

    # stream() of both OpenAI APIs sends its request through create(stream=True), and each
    # with_raw_response / with_streaming_response method through the (patched) method it wraps.
    found: list[tuple[type, str, ApiSpec, str]] = [
        (Completions, "create", o.CHAT_CREATE, "sync"),
        (Completions, "parse", o.CHAT_PARSE, "sync"),
        (AsyncCompletions, "create", o.ASYNC_CHAT_CREATE, "async"),
        (AsyncCompletions, "parse", o.CHAT_PARSE, "async"),
        (Responses, "create", o.RESPONSES_CREATE, "sync"),
        (Responses, "parse", o.RESPONSES_PARSE, "sync"),
        (AsyncResponses, "create", o.ASYNC_RESPONSES_CREATE, "async"),
        (AsyncResponses, "parse", o.RESPONSES_PARSE, "async"),
    ]
    try:
        from anthropic.resources.messages import AsyncMessages, Messages

        from . import _anthropic as a
    except ImportError:
        return found  # anthropic is an optional extra: nothing of it to patch
    found += [
        (Messages, "create", a.MESSAGES_CREATE, "sync"),
        (Messages, "parse", a.MESSAGES_PARSE, "sync"),
        (Messages, "stream", a.MESSAGES_STREAM, "manager"),
        (AsyncMessages, "create", a.ASYNC_MESSAGES_CREATE, "async"),
        (AsyncMessages, "parse", a.MESSAGES_PARSE, "async"),
        (AsyncMessages, "stream", a.ASYNC_MESSAGES_STREAM, "async manager"),
    ]
    return found


def autolog(**options: Unpack[TaskKwargs]) -> Tasks:
    """Trace every chat call of the openai (and anthropic, if installed) SDK; return the tasks.

    Patches the SDK classes once per process: a second call changes nothing and returns the same
    :class:`~tracer_wrap.integrations.Tasks` (call :func:`disable` first to change options).
    Calls are grouped into tasks by prompt template and logged to the store. ``routing`` is the
    default of every task's routing switch: with False nothing is answered locally until the
    task's switch is on (``tracer-wrap routing TASK on``). ``options`` are the task options of
    every task (:class:`~tracer_wrap.options.TaskOptions`; unset ones come from ``TRACER_WRAP_*``
    and ``tracer_wrap.toml``). Calls made through a client wrapped with
    ``wrap_openai``/``wrap_anthropic`` are traced once, by the wrapper. Thread-safe; raises
    ConfigError on a bad option.
    """
    global _tasks
    with _lock:
        if _tasks is not None:
            return _tasks
        options.setdefault("routing", False)
        tasks = Tasks(**options)
        for cls, name, spec, kind in _targets():
            _patch(cls, name, spec, kind)
        _tasks = tasks
        return tasks


def disable() -> None:
    """Undo :func:`autolog`: restore the SDK methods. A method another instrumentation
    (OpenTelemetry, an observability SDK) replaced after autolog patched it is left as it is,
    keeping that instrumentation: autolog's method beneath it passes every call through while
    autolog is off. Does nothing when autolog is off."""
    global _tasks
    with _lock:
        while _patched:
            cls, name, original, method = _patched.pop()
            if cls.__dict__.get(name) is method:
                setattr(cls, name, original)
        _tasks = None


def enabled() -> bool:
    """Whether :func:`autolog` is active in this process."""
    return _tasks is not None


autolog.disable = disable  # type: ignore[attr-defined]
autolog.enabled = enabled  # type: ignore[attr-defined]


# -- the launcher ---------------------------------------------------------------------------------


def launch_env(env: dict[str, str] | None = None, *, store: str | None = None,
               routing: bool = False) -> dict[str, str]:
    """The environment of a program launched by ``tracer-wrap run``: ``PYTHONPATH`` starts with
    the launcher directory and :data:`~tracer_wrap.names.ENV_AUTOLOG` is set; ``store`` sets
    ``$TRACER_WRAP_STORE`` (a directory is made absolute, a URL is kept)."""
    env = dict(os.environ if env is None else env)
    paths = [str(LAUNCHER_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                   if p and p != str(LAUNCHER_DIR)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env[names.ENV_AUTOLOG] = "1"
    if routing:
        env[names.ENV_AUTOLOG_ROUTING] = "1"
    if store is not None:
        from ..store import REDIS_SCHEMES

        env[names.ENV_STORE] = store if store.startswith(REDIS_SCHEMES) \
            else str(Path(store).resolve())
    return env


# -- task discovery -------------------------------------------------------------------------------

#: A task looks like classification with at most this many distinct outputs...
MAX_CLASSES = 50
#: ... that are at most this share of its calls, over at least MIN_CALLS calls.
MAX_DISTINCT_SHARE = 0.2
MIN_CALLS = 20


def task_summaries(store: Store | str | None = None) -> list[dict[str, Any]]:
    """One row per task of the store: calls, distinct inputs and outputs, whether it looks like
    classification (few distinct outputs over many calls), whether routing is on, and the
    coverage its current router certifies at its served target (None without a router)."""
    from ..versions import certified_coverage

    store = open_store(store)
    rows = []
    for task in store.tasks():
        outputs: Counter[str] = Counter()
        calls = invalid = 0
        for trace in store.iter_traces(task):
            calls += trace.count
            if trace.valid:
                outputs.update(trace.labels or {trace.teacher: trace.count})
            else:
                invalid += trace.count
        counters = store.counters(task)
        calls = (max(calls, counters.get(names.COUNTER_LLM, 0))
                 + counters.get(names.COUNTER_LOCAL, 0))
        version = store.current_version(task)
        manifest = store.manifest(task, version) if version is not None else None
        coverage = None
        if manifest is not None:
            coverage = certified_coverage(manifest, float(manifest.get("target", 0.95)))
        rows.append({
            "task": task, "calls": calls, "inputs": store.count(task),
            "distinct_outputs": len(outputs),
            "invalid": invalid,
            "classification": (calls >= MIN_CALLS and 0 < len(outputs) <= MAX_CLASSES
                               and len(outputs) <= MAX_DISTINCT_SHARE * calls),
            "routing": store.get_setting(task, names.SETTING_ROUTING),
            "version": version, "coverage": coverage,
            "top_outputs": [label for label, _ in outputs.most_common(3)],
        })
    return rows


def _launched() -> None:
    """Called by the launcher's sitecustomize: start autolog, never break the program."""
    if os.environ.get(names.ENV_AUTOLOG, "").strip().lower() not in names.TRUE_WORDS:
        return
    routing = os.environ.get(names.ENV_AUTOLOG_ROUTING, "").strip().lower() in names.TRUE_WORDS
    try:
        autolog(routing=routing)
    except Exception as exc:  # a broken install must not stop the user's program
        from .._log import fault

        fault("autolog start-up", exc)


def _chain_sitecustomize(launcher_file: str) -> None:
    """Run the ``sitecustomize`` that the launcher's own shadows on ``sys.path``, if any."""
    here = os.path.dirname(os.path.abspath(launcher_file))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin is None:
        return
    if os.path.abspath(spec.origin) == os.path.abspath(launcher_file):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

