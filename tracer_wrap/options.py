"""tracer_wrap's configuration, in one place.

Order of precedence, strongest first (a source only sets the options it names):

1. **Constructor arguments** — the ``explicit`` mapping given to :func:`task_options` (keys whose
   value is ``None`` count as not given, except ``refit_every``, where ``None`` means "never").
2. **Environment variables** ``TRACER_WRAP_*`` (:data:`ENV_VARS`), e.g. ``TRACER_WRAP_TARGET=0.97``.
3. **The configuration file** in the working directory: ``tracer_wrap.toml`` if it exists, else
   the ``[tool.tracer_wrap]`` table of ``pyproject.toml``. Inside it, a task's own table
   ``[tasks."name"]`` (``[tool.tracer_wrap.tasks."name"]``) beats the top-level keys.
4. **Defaults** (:data:`DEFAULTS`), the same as :class:`tracer_wrap.TracedTask`'s.

Example ``tracer_wrap.toml``::

    store = "/var/lib/tracer_wrap"
    target = 0.95
    audit_rate = 0.02

    [tasks."support-intent"]
    target = 0.98
    min_traces = 500

A misspelt key, a value of the wrong type or out of range raises :class:`ConfigError` naming where
it came from; nothing is silently ignored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from . import names
from .model.embedder import Embedder
from .errors import ConfigError
from .store import Store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["DEFAULTS", "ENV_VARS", "FILE_NAME", "load_file", "make_embedder", "task_options"]

#: Name of the configuration file looked up in the working directory.
FILE_NAME = "tracer_wrap.toml"

#: Options :func:`task_options` resolves and their defaults (those of ``TracedTask``).
DEFAULTS: dict[str, Any] = {
    "target": 0.95,
    "delta": 0.05,
    "min_traces": 200,
    "refit_every": 500,
    "routing": True,
    "audit_rate": 0.02,
    "store": None,  # TracedTask then uses $TRACER_WRAP_STORE or ./.tracer_wrap
}

#: Environment variable of each option.
ENV_VARS: dict[str, str] = {
    "target": "TRACER_WRAP_TARGET",
    "delta": "TRACER_WRAP_DELTA",
    "min_traces": "TRACER_WRAP_MIN_TRACES",
    "refit_every": "TRACER_WRAP_REFIT_EVERY",
    "routing": "TRACER_WRAP_ROUTING",
    "audit_rate": "TRACER_WRAP_AUDIT_RATE",
    "store": names.ENV_STORE,
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _fraction(value: Any, where: str, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    low_ok = value >= 0.0 if zero_ok else value > 0.0
    if not (low_ok and value <= 1.0):
        raise ConfigError(f"{where}: must be in {'[0' if zero_ok else '(0'}, 1], got {value!r}")
    return float(value)


def _count(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _refit_every(value: Any, where: str) -> int | None:
    if value is None or value == 0:
        return None
    return _count(value, where, minimum=1)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _path(value: Any, where: str) -> str | Store:
    if isinstance(value, Store):  # a constructor may be handed an open store
        return value
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ConfigError(f"{where}: expected a directory path, got {value!r}")
    return str(value)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "target": _fraction,
    "delta": _fraction,
    "audit_rate": lambda v, w: _fraction(v, w, zero_ok=True),
    "min_traces": lambda v, w: _count(v, w, minimum=10),
    "refit_every": _refit_every,
    "routing": _bool,
    "store": _path,
}


def _from_env_text(name: str, raw: str, where: str) -> Any:
    """Parse an environment variable's text into the option's type."""
    text = raw.strip()
    if name == "store":
        return text
    if name == "routing":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if name == "refit_every" and text.lower() in {"", "none", "never", "0"}:
        return None
    try:
        return int(text) if name in {"min_traces", "refit_every"} else float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {raw!r}") from None


def load_file(cwd: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], str | None]:
    """The tracer_wrap table of the configuration file in ``cwd`` and the file's path.

    ``tracer_wrap.toml`` wins over ``pyproject.toml``'s ``[tool.tracer_wrap]``; ``({}, None)``
    when neither exists. Raises ConfigError on invalid TOML.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    own, pyproject = base / FILE_NAME, base / "pyproject.toml"
    for path, inner in ((own, ()), (pyproject, ("tool", "tracer_wrap"))):
        if not path.is_file():
            continue
        if tomllib is None:
            raise ConfigError(f"reading {path} needs tomli on Python 3.10: pip install tomli")
        try:
            data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        for key in inner:
            data = data.get(key, {}) if isinstance(data, dict) else {}
        if path == pyproject and not data:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the tracer_wrap table is not a table")
        return data, str(path)
    return {}, None


def task_options(
    task: str,
    explicit: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :class:`tracer_wrap.TracedTask` of ``task``, every source merged.

    Returns a value for each key of :data:`DEFAULTS`, taken from the strongest source that sets
    it (see the module docstring). ``environ`` defaults to ``os.environ`` and ``cwd`` to the
    working directory. Raises ConfigError on an unknown key or an invalid value.
    """
    environ = os.environ if environ is None else environ
    explicit = dict(explicit or {})
    unknown = set(explicit) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    table, path = load_file(cwd)
    tasks_table = table.get("tasks", {})
    if not isinstance(tasks_table, dict):
        raise ConfigError(f"{path}: 'tasks' must be a table of per-task tables")
    file_layers = [(table, f"{path}"), (tasks_table.get(task, {}), f'{path} [tasks."{task}"]')]
    for layer, where in file_layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(layer) - set(DEFAULTS) - ({"tasks"} if layer is table else set())
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(DEFAULTS)}")

    options: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        value, where, found = default, "default", False
        if name in explicit and (explicit[name] is not None or name == "refit_every"):
            value, where, found = explicit[name], f"argument {name}", True
        elif environ.get(ENV_VARS[name], "").strip():
            where = f"${ENV_VARS[name]}"
            value, found = _from_env_text(name, environ[ENV_VARS[name]], where), True
        else:
            for layer, layer_where in reversed(file_layers):
                if name in layer:
                    value, where, found = layer[name], f"{layer_where}: {name}", True
                    break
        if found:
            value = _CHECKS[name](value, where)
        options[name] = value
    return options


def make_embedder(name: str | None = None) -> Embedder:
    """The embedder called ``name`` (default ``$TRACER_WRAP_EMBEDDER``, else all-MiniLM-L6-v2).

    ``hashing`` selects the tiny deterministic embedder of :mod:`tracer_wrap.model.hashing`
    (for tests and quick trials); any other name is a sentence-transformers model, loaded on
    first use.
    """
    from .model.hashing import HASHING, hashing_embedder

    name = name or os.environ.get(names.ENV_EMBEDDER) or names.DEFAULT_EMBEDDER
    if name.strip().lower() == HASHING:
        return hashing_embedder()
    return Embedder.default(name)
