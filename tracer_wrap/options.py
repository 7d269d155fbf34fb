"""Task options: one object, validated once, whichever source each value comes from.

:class:`TaskOptions` holds every option of a task. :meth:`TaskOptions.resolve` fills the options a
caller did not give from, strongest first:

1. **Arguments** (``@traced_classifier(...)``, ``TracedTask(...)``, ``wrap_openai(...)``);
   ``None`` counts as not given, except for ``refit_every``, where ``None`` means "never".
2. **Environment variables** ``TRACER_WRAP_<OPTION>`` (:func:`tracer_wrap.names.option_env_var`),
   e.g. ``TRACER_WRAP_TARGET=0.97``; ``TRACER_WRAP_PRICE`` is a price per call, and
   ``TRACER_WRAP_PRICE_PER_CALL``, ``_PRICE_INPUT_PER_MTOK`` and ``_PRICE_OUTPUT_PER_MTOK`` set its
   fields (``TRACER_WRAP_PRICE`` and ``_PRICE_PER_CALL`` together are refused, as is any other
   ``TRACER_WRAP_PRICE_*``). ``labels``, ``retention`` and ``fit_options`` (lists and tables) are
   refused there: give them in code or in the file.
3. **The configuration file** in the working directory: ``tracer_wrap.toml`` if it exists, else
   the ``[tool.tracer_wrap]`` table of ``pyproject.toml``. A task's own table ``[tasks."name"]``
   beats the top-level keys.
4. **Defaults** (the field defaults of :class:`TaskOptions`).

Example ``tracer_wrap.toml``::

    store = "/var/lib/tracer_wrap"
    target = 0.95
    price = { per_call = 0.0004 }

    [tasks."support-intent"]
    target = 0.98
    min_traces = 500
    redact = "pii"

A misspelt key, a value of the wrong type or out of range raises :class:`ConfigError` naming the
source it came from; nothing is silently ignored. Options that only code can give (functions,
objects: ``refit_policy``, a callable ``audit_rate`` or ``redact``, an open store or embedder,
``rng``, ``clock``, ``monotonic``) are refused in the environment and the file.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from . import names
from .accounting import Price
from .errors import ConfigError
from .model.fit import DEFAULT_TARGETS, Guarantee
from .model.ood import DEFAULT_QUANTILE
from .privacy import Redactor, StoreInputs, check_retention, redact_pii
from .refit import ExecutorKind, RefitPolicy
from .versions import DEFAULT_KEEP

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .model.embedder import Embedder
    from .store import Store

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["BREAKER_OPTIONS", "TaskKwargs", "TaskOptions", "check_price", "load_file",
           "store_spec"]

#: Options a ``breaker`` mapping may set (see :class:`tracer_wrap.breaker.DriftBreaker`).
BREAKER_OPTIONS = frozenset({"margin", "alpha", "beta", "refresh_seconds"})
#: A refit holding its claim longer than this (seconds) is presumed dead and its claim lapses.
REFIT_CLAIM_SECONDS = 15 * 60.0

AuditRate = float | Callable[[int], float]


@dataclass(frozen=True)
class TaskOptions:
    """Every option of a task, validated (``ConfigError`` names the bad value and its source).

    ``labels``
        The label set; LLM outputs are matched against it (case, spaces, quotes). ``None``
        accepts any output.
    ``target``, ``delta``
        Agreement with the LLM that the router must certify on what it answers, and the allowed
        probability that the certificate is wrong (over the calibration draw).
    ``guarantee``
        ``"average"``: the agreement is certified over all local answers together;
        ``"per_label"``: over the local answers of every label on its own (each label needs
        ~150 calibration traces of its own at 0.95; see :mod:`tracer_wrap.model.gate`).
    ``targets``
        Targets certified at each fit (the frontier); ``target`` is always among them.
    ``store``
        A store, a directory or a ``redis://`` URL.
    ``embedder``
        An :class:`~tracer_wrap.model.embedder.Embedder` or the name of one
        (:func:`~tracer_wrap.model.embedder.make_embedder`: a sentence-transformers model or
        ``"hashing"``). A router is only served by an embedder of the name it was fitted with.
    ``min_traces``, ``refit_every``, ``refit_policy``, ``refit_executor``, ``refit_claim_ttl``
        No router before ``min_traces`` valid traces; refit at ``min_traces``, then each time the
        history doubles, then after every ``refit_every`` new valid traces (``None``: only on
        ``refit()``; see :mod:`tracer_wrap.refit`) unless a ``refit_policy`` says otherwise;
        where the fit runs (``"thread"``, ``"process"``, or ``"inline"``: embedding, trace
        writing and refits all in the calling thread without a bound, reproducible for
        simulations, never for serving); when a dead refit's claim lapses.
    ``keep_versions``
        Router versions kept in the store besides the current and the pinned one.
    ``routing``
        ``False`` is shadow mode (nothing answered locally; traces logged, the router scored).
        The store's routing switch (``tracer-wrap routing TASK on|off``) overrides it.
    ``audit_rate``
        Share of calls the router would answer that still go to the LLM (random audit samples).
        A number starts at that rate and falls as ``sqrt(1000 / n_calibration)`` of the served
        router, to a quarter of it; a callable maps ``n_calibration`` to the rate.
    ``breaker``
        Run the drift breaker on audit samples; a mapping passes its options
        (:data:`BREAKER_OPTIONS`).
    ``ood_quantile``
        Share of training traces the out-of-distribution check would defer; ``None``: no OOD
        check. With declared ``labels`` of which some have no trace yet, it also defers inputs
        nearer such a label's name than the answer's (:mod:`tracer_wrap.model.ood`).
    ``fit_options``
        Extra keyword arguments of :func:`tracer_wrap.model.fit.fit_router`: those of
        :func:`fit_option_names` (``folds``, ``C``, ``seed``, ...); one it does not take, or one
        every refit sets itself (``targets``, ``delta``, ...), raises ConfigError.
    ``refresh_seconds``
        How stale this process's view of the store's current version, routing switch and breaker
        may be: a background thread re-reads them this often. ``0`` reads the store on every call
        instead (for tests and diagnostics: the call then waits on the store).
    ``embed_timeout``, ``embed_budget``
        Longest a call waits for the embedding of its input, in seconds; past it the call goes to
        the LLM (and its trace is still logged). Once this process has seen the LLM answer a few
        calls, the wait is also at most ``embed_budget`` times the median of its recent LLM
        latencies (default 0.25), so a call wrapped by tracer_wrap never takes much longer than
        the LLM alone would, however busy the machine; ``None``: always ``embed_timeout``.
    ``buffer_size``
        LLM answers held in memory while their traces wait to be written (a slow or unreachable
        store); beyond it the newest are dropped and counted.
    ``redact``, ``store_inputs``, ``retention``
        Privacy (:mod:`tracer_wrap.privacy`): a function applied to inputs before they are stored
        (``"pii"``: :func:`~tracer_wrap.privacy.redact_pii`); ``"hash"`` stores only input hashes;
        ``{"max_traces", "max_age_seconds"}`` pruned after each refit.
    ``price``
        What one LLM call of the task costs: a :class:`~tracer_wrap.accounting.Price`, a mapping
        of its fields, or a number (per call). Savings are counted at this price.
    ``rng``, ``clock``, ``monotonic``
        Audit sampling and clocks, injectable for tests.
    """

    labels: tuple[str, ...] | None = None
    target: float = 0.95
    delta: float = 0.05
    guarantee: Guarantee = "average"
    targets: tuple[float, ...] = DEFAULT_TARGETS
    store: Store | str | None = None
    embedder: Embedder | str | None = None
    min_traces: int = 200
    refit_every: int | None = 500
    refit_policy: RefitPolicy | None = None
    refit_executor: ExecutorKind = "thread"
    refit_claim_ttl: float = REFIT_CLAIM_SECONDS
    keep_versions: int = DEFAULT_KEEP
    routing: bool = True
    audit_rate: AuditRate = 0.02
    breaker: bool | Mapping[str, float] = True
    ood_quantile: float | None = DEFAULT_QUANTILE
    fit_options: Mapping[str, Any] = field(default_factory=dict)
    refresh_seconds: float = 1.0
    embed_timeout: float = 1.0
    embed_budget: float | None = 0.25
    buffer_size: int = 10_000
    redact: Redactor | None = None
    store_inputs: StoreInputs = "raw"
    retention: Mapping[str, float] | None = None
    price: Price | None = None
    rng: random.Random | None = None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    #: Where each value came from, for error messages (not an option).
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for spec in _SPECS.values():
            value = getattr(self, spec.name)
            if value is None and spec.nullable:
                continue
            where = self.sources.get(spec.name, f"argument {spec.name}")
            object.__setattr__(self, spec.name, spec.check(value, where))
        if self.target not in self.targets:
            object.__setattr__(self, "targets", tuple(sorted({*self.targets, self.target})))

    @classmethod
    def resolve(cls, task: str, explicit: Mapping[str, Any] | None = None, *,
                environ: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> TaskOptions:
        """The options of ``task``: ``explicit`` arguments, then the environment, then the
        configuration file, then the defaults (see the module docstring).

        ``environ`` defaults to ``os.environ`` and ``cwd`` to the working directory. Raises
        ConfigError on an unknown option or key, or an invalid value (naming its source).
        """
        environ = os.environ if environ is None else environ
        explicit = dict(explicit or {})
        unknown = set(explicit) - set(_SPECS)
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_SPECS)}")
        layers = _file_layers(task, cwd)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for spec in _SPECS.values():
            if spec.name in explicit and (explicit[spec.name] is not None
                                          or spec.name == "refit_every"):
                values[spec.name], sources[spec.name] = explicit[spec.name], f"argument {spec.name}"
                continue
            from_env = spec.from_env(environ)
            if from_env is not None:
                values[spec.name], sources[spec.name] = from_env
                continue
            for layer, where in reversed(layers):
                if spec.name in layer:
                    if not spec.in_file:
                        raise ConfigError(f"{where}: {spec.name} can only be set in code")
                    values[spec.name] = spec.from_file(layer[spec.name], f"{where}: {spec.name}")
                    sources[spec.name] = f"{where}: {spec.name}"
                    break
        return cls(**values, sources=sources)

    def replace(self, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` applied and validated."""
        sources = {**self.sources, **{k: f"argument {k}" for k in changes}}
        return dataclasses.replace(self, **changes, sources=sources)


class TaskKwargs(TypedDict, total=False):
    """The task options as keyword arguments (``**options: Unpack[TaskKwargs]``), for type
    checkers. ``tests/test_options.py`` checks that it lists exactly the fields of
    :class:`TaskOptions`."""

    labels: Iterable[str] | None
    target: float
    delta: float
    guarantee: Guarantee
    targets: Sequence[float]
    store: Store | str | os.PathLike[str] | None
    embedder: Embedder | str | None
    min_traces: int
    refit_every: int | None
    refit_policy: RefitPolicy | None
    refit_executor: ExecutorKind
    refit_claim_ttl: float
    keep_versions: int
    routing: bool
    audit_rate: AuditRate
    breaker: bool | Mapping[str, float]
    ood_quantile: float | None
    fit_options: Mapping[str, Any]
    refresh_seconds: float
    embed_timeout: float
    embed_budget: float | None
    buffer_size: int
    redact: Redactor | Literal["pii"] | None
    store_inputs: StoreInputs
    retention: Mapping[str, float] | None
    price: Price | Mapping[str, float] | float | None
    rng: random.Random | None
    clock: Callable[[], float]
    monotonic: Callable[[], float]


def options_of(task: str, **explicit: Unpack[TaskKwargs]) -> TaskOptions:
    """:meth:`TaskOptions.resolve` with keyword arguments, typed."""
    return TaskOptions.resolve(task, explicit)


# -- where the default store is ------------------------------------------------------------------


def store_spec(explicit: Store | str | os.PathLike[str] | None = None, *,
               environ: Mapping[str, str] | None = None,
               cwd: str | os.PathLike[str] | None = None) -> Store | str:
    """The store every command and task uses when it names none: ``explicit``, else
    ``$TRACER_WRAP_STORE``, else the ``store`` key of the configuration file, else
    ``./.tracer_wrap``. Raises ConfigError on an invalid file, and for a URL whose scheme is not
    a store's (only ``redis://``, ``rediss://`` and ``unix://`` are: ``http://host/x`` is not a
    directory named ``http:``)."""
    if explicit is not None:
        if isinstance(explicit, os.PathLike):
            return os.fspath(explicit)
        return _check_scheme(explicit, "store") if isinstance(explicit, str) else explicit
    environ = os.environ if environ is None else environ
    from_env = environ.get(names.ENV_STORE, "").strip()
    if from_env:
        return _check_scheme(from_env, f"${names.ENV_STORE}")
    for layer, where in reversed(_file_layers(None, cwd)):
        if "store" in layer:
            return str(_check_store(layer["store"], f"{where}: store"))
    return names.DEFAULT_STORE


# -- the configuration file ----------------------------------------------------------------------

_file_cache: dict[tuple[str, float], tuple[dict[str, Any], str | None]] = {}
_file_lock = threading.Lock()


def load_file(cwd: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], str | None]:
    """The tracer_wrap table of the configuration file in ``cwd`` and the file's path.

    ``tracer_wrap.toml`` wins over ``pyproject.toml``'s ``[tool.tracer_wrap]``; ``({}, None)``
    when neither exists. A file is parsed once per modification time. Raises ConfigError on
    invalid TOML.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    for path, inner in ((base / names.CONFIG_FILE, ()), (base / "pyproject.toml",
                                                        ("tool", "tracer_wrap"))):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        key = (str(path), mtime)
        with _file_lock:
            cached = _file_cache.get(key)
        if cached is None:
            cached = _parse(path, inner)
            with _file_lock:
                _file_cache[key] = cached
        if cached[1] is not None:
            return cached
    return {}, None


def _parse(path: Path, inner: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    if tomllib is None:
        raise ConfigError(f"reading {path} needs tomli on Python 3.10: pip install tomli")
    try:
        data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for key in inner:
        data = data.get(key, {}) if isinstance(data, dict) else {}
    if inner and not data:
        return {}, None  # a pyproject.toml without a tracer_wrap table
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the tracer_wrap table is not a table")
    return data, str(path)


def _file_layers(task: str | None, cwd: str | os.PathLike[str] | None
                 ) -> list[tuple[Mapping[str, Any], str]]:
    """The file's top-level table and ``task``'s own table, weakest first; unknown keys raise."""
    table, path = load_file(cwd)
    if path is None:
        return []
    tasks_table = table.get("tasks", {})
    if not isinstance(tasks_table, dict):
        raise ConfigError(f"{path}: 'tasks' must be a table of per-task tables")
    layers: list[tuple[Mapping[str, Any], str]] = [(table, path)]
    if task is not None and task in tasks_table:
        layers.append((tasks_table[task], f'{path} [tasks."{task}"]'))
    for layer, where in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{where}: must be a table")
        extra = set(layer) - set(_SPECS) - ({"tasks"} if layer is table else set())
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}; known: {sorted(_SPECS)}")
    return layers


# -- one spec per option: how it is checked and read from text ---------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    check: Callable[[Any, str], Any]
    #: Parses the option's environment variable; None: not settable from the environment.
    env: Callable[[str, str], Any] | None = None
    in_file: bool = True
    nullable: bool = False

    def from_env(self, environ: Mapping[str, str]) -> tuple[Any, str] | None:
        if self.name == "price":
            return _price_from_env(environ)
        var = names.option_env_var(self.name)
        raw = environ.get(var, "")
        if not raw.strip():
            return None
        where = f"${var}"
        if self.env is None:
            raise ConfigError(f"{where}: {self.name} cannot be set from the environment")
        return self.env(raw.strip(), where), where

    def from_file(self, value: Any, where: str) -> Any:
        return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _fraction(value: Any, where: str, *, zero_ok: bool = False) -> float:
    number = _number(value, where)
    low_ok = number >= 0.0 if zero_ok else number > 0.0
    if not (low_ok and number <= 1.0):
        raise ConfigError(f"{where}: must be in {'[0' if zero_ok else '(0'}, 1], got {value!r}")
    return number


def _delta(value: Any, where: str) -> float:
    number = _number(value, where)
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{where}: must be in (0, 1), got {value!r}")
    return number


def _positive(value: Any, where: str, *, zero_ok: bool = False) -> float:
    number = _number(value, where)
    if not (number >= 0 if zero_ok else number > 0):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{where}: must be a number {bound}, got {value!r}")
    return number


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


def _bool_text(raw: str, where: str) -> bool:
    if raw.lower() in names.TRUE_WORDS:
        return True
    if raw.lower() in names.FALSE_WORDS:
        return False
    raise ConfigError(f"{where}: expected true or false, got {raw!r}")


def _float_text(raw: str, where: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {raw!r}") from None


def _int_text(raw: str, where: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None


def _none_or(parse: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    def parse_or_none(raw: str, where: str) -> Any:
        return None if raw.lower() in {"none", "never", "off", "0"} else parse(raw, where)
    return parse_or_none


def _labels(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{where}: labels must be a collection of strings, got {value!r}")
    labels = tuple(value)
    if not labels or not all(isinstance(v, str) and v.strip() for v in labels):
        raise ConfigError(f"{where}: labels must be non-empty strings, got {list(labels)!r}")
    return labels


def _targets(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigError(f"{where}: expected a list of targets, got {value!r}")
    targets = tuple(sorted({_fraction(v, where) for v in value}))
    if not targets:
        raise ConfigError(f"{where}: targets must not be empty")
    return targets


#: ``scheme://`` at the start of a store spec (two letters at least: ``C://x`` is a Windows path).
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")


def _check_scheme(spec: str, where: str) -> str:
    """``spec`` unless it starts with a URL scheme other than a Redis store's: such a spec is not
    a directory (it would become one named ``http:``), so it is refused, naming the scheme only
    (the rest may hold a password)."""
    from .store.base import REDIS_SCHEMES

    found = _SCHEME.match(spec.strip())
    if found and not spec.strip().startswith(REDIS_SCHEMES):
        supported = f"{', '.join(REDIS_SCHEMES[:-1])} or {REDIS_SCHEMES[-1]}"
        raise ConfigError(f"{where}: {found.group(1)}:// is not a store's URL scheme (a store is"
                          f" a directory or a {supported} URL)")
    return spec


def _check_store(value: Any, where: str) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError(f"{where}: expected a directory or a redis:// URL, got {value!r}")
        return _check_scheme(value, where)
    if hasattr(value, "append") and hasattr(value, "current_version"):  # an open store
        return value
    raise ConfigError(f"{where}: expected a store, a directory or a redis:// URL, got {value!r}")


def _check_embedder(value: Any, where: str) -> Any:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if hasattr(value, "embed") and hasattr(value, "name"):  # an Embedder
        return value
    raise ConfigError(f"{where}: expected an Embedder or an embedder name, got {value!r}")


def _executor(value: Any, where: str) -> ExecutorKind:
    if value not in ("thread", "process", "inline"):
        raise ConfigError(f"{where}: must be 'thread', 'process' or 'inline', got {value!r}")
    return value  # type: ignore[no-any-return]


def _audit_rate(value: Any, where: str) -> AuditRate:
    if callable(value):
        return value  # type: ignore[no-any-return]
    return _fraction(value, where, zero_ok=True)


def _breaker(value: Any, where: str) -> bool | Mapping[str, float]:
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: breaker must be true, false or a table of options,"
                          f" got {value!r}")
    unknown = set(value) - BREAKER_OPTIONS
    if unknown:
        raise ConfigError(f"{where}: unknown breaker option(s) {sorted(map(str, unknown))};"
                          f" use {sorted(BREAKER_OPTIONS)}")
    return {name: _positive(v, f"{where}.{name}", zero_ok=True) for name, v in value.items()}


def _ood(value: Any, where: str) -> float:
    number = _number(value, where)
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{where}: must be in [0, 1) or None, got {value!r}")
    return number


#: Arguments of :func:`~tracer_wrap.model.fit.fit_router` a refit gives itself
#: (:meth:`tracer_wrap.refit.Refitter.run`), which ``fit_options`` must not set.
REFIT_FIT_ARGUMENTS = frozenset({
    "vectors", "labels", "texts", "targets", "serve_target", "delta", "guarantee",
    "calibration_fraction", "calibration_coins", "incumbent", "incumbent_fresh", "info"})


def fit_option_names() -> frozenset[str]:
    """The keyword arguments of :func:`~tracer_wrap.model.fit.fit_router` that ``fit_options``
    may set: all but those a refit gives itself (:data:`REFIT_FIT_ARGUMENTS`)."""
    from .model.fit import fit_router

    keywords = {p.name for p in inspect.signature(fit_router).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return frozenset(keywords - REFIT_FIT_ARGUMENTS)


def _fit_options(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table of options, got {value!r}")
    allowed = fit_option_names()
    reserved = set(value) & REFIT_FIT_ARGUMENTS
    if reserved:
        raise ConfigError(f"{where}: {sorted(map(str, reserved))} set by every refit itself"
                          f" (use the task options); fit options: {sorted(allowed)}")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown fit option(s) {sorted(map(str, unknown))};"
                          f" known: {sorted(allowed)}")
    return dict(value)


def _redact(value: Any, where: str) -> Redactor:
    if value == "pii":
        return redact_pii
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise ConfigError(f"{where}: redact must be a function str -> str or 'pii', got {value!r}")


def _guarantee(value: Any, where: str) -> Guarantee:
    if value not in ("average", "per_label"):
        raise ConfigError(f"{where}: must be 'average' or 'per_label', got {value!r}")
    return value  # type: ignore[no-any-return]


def _store_inputs(value: Any, where: str) -> StoreInputs:
    if value not in ("raw", "hash"):
        raise ConfigError(f"{where}: store_inputs must be 'raw' or 'hash', got {value!r}")
    return value  # type: ignore[no-any-return]


def _retention(value: Any, where: str) -> Mapping[str, float] | None:
    try:
        return check_retention(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_price(value: Any, where: str) -> Price:
    """``value`` as a :class:`~tracer_wrap.accounting.Price`: a Price, a number (per call) or a
    mapping of its fields, each a finite number >= 0. The one check of a price from code, the
    environment, the configuration file and ``tracer-wrap price``. Raises ConfigError naming
    ``where`` (and the field)."""
    if isinstance(value, Price):  # built in code: its fields are checked like any others
        value = value.as_dict()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = {"per_call": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: price must be a number (per call) or a table of per_call,"
                          f" input_per_mtok, output_per_mtok; got {value!r}")
    unknown = set(value) - set(Price.FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown price field(s) {sorted(map(str, unknown))};"
                          f" use {list(Price.FIELDS)}")
    return Price(**{k: _positive(v, f"{where}.{k}", zero_ok=True) for k, v in value.items()})


def _price_from_env(environ: Mapping[str, str]) -> tuple[Price, str] | None:
    """The price from ``TRACER_WRAP_PRICE`` (per call) and ``TRACER_WRAP_PRICE_<FIELD>``; a
    ``TRACER_WRAP_PRICE_*`` variable that names no field is refused, not ignored."""
    found: dict[str, float] = {}
    where = []
    fields = {names.option_env_var(f"price_{name}"): name for name in Price.FIELDS}
    unknown = sorted(var for var in environ
                     if var.startswith(names.option_env_var("price_")) and var not in fields)
    if unknown:
        raise ConfigError(f"${unknown[0]}: not a price variable; use $"
                          f"{names.option_env_var('price')} (per call) or"
                          f" {', '.join('$' + var for var in fields)}")
    whole = names.option_env_var("price")
    raw = environ.get(whole, "").strip()
    if raw:
        found["per_call"] = _positive(_float_text(raw, f"${whole}"), f"${whole}", zero_ok=True)
        where.append(f"${whole}")
    for var, name in fields.items():
        raw = environ.get(var, "").strip()
        if raw:
            if name in found:
                raise ConfigError(f"${var} and ${whole} both set the price per call; set one")
            found[name] = _positive(_float_text(raw, f"${var}"), f"${var}", zero_ok=True)
            where.append(f"${var}")
    return (Price(**found), ", ".join(where)) if found else None


def _callable(value: Any, where: str) -> Any:
    if not callable(value):
        raise ConfigError(f"{where}: expected a function, got {value!r}")
    return value


def _policy(value: Any, where: str) -> RefitPolicy:
    if not isinstance(value, RefitPolicy):
        raise ConfigError(f"{where}: expected a refit policy (tracer_wrap.refit_after_traces,"
                          f" ...), got {value!r}")
    return value


def _rng(value: Any, where: str) -> random.Random:
    if not isinstance(value, random.Random):
        raise ConfigError(f"{where}: expected a random.Random, got {value!r}")
    return value


_SPECS: dict[str, _Spec] = {spec.name: spec for spec in (
    _Spec("labels", _labels, nullable=True),
    _Spec("target", _fraction, _float_text),
    _Spec("delta", _delta, _float_text),
    _Spec("guarantee", _guarantee, lambda raw, where: raw),
    _Spec("targets", _targets,
          lambda raw, where: tuple(_float_text(p.strip(), where) for p in raw.split(","))),
    _Spec("store", _check_store, lambda raw, where: raw, nullable=True),
    _Spec("embedder", _check_embedder, lambda raw, where: raw, nullable=True),
    _Spec("min_traces", lambda v, w: _count(v, w, minimum=10), _int_text),
    _Spec("refit_every", _refit_every, _none_or(_int_text), nullable=True),
    _Spec("refit_policy", _policy, in_file=False, nullable=True),
    _Spec("refit_executor", _executor, lambda raw, where: raw),
    _Spec("refit_claim_ttl", _positive, _float_text),
    _Spec("keep_versions", lambda v, w: _count(v, w, minimum=1), _int_text),
    _Spec("routing", _bool, _bool_text),
    _Spec("audit_rate", _audit_rate, _float_text),
    _Spec("breaker", _breaker, _bool_text),
    _Spec("ood_quantile", _ood, _none_or(_float_text), nullable=True),
    _Spec("fit_options", _fit_options),
    _Spec("refresh_seconds", lambda v, w: _positive(v, w, zero_ok=True), _float_text),
    _Spec("embed_timeout", _positive, _float_text),
    _Spec("embed_budget", _positive, _none_or(_float_text), nullable=True),
    _Spec("buffer_size", lambda v, w: _count(v, w, minimum=1), _int_text),
    _Spec("redact", _redact, lambda raw, where: raw, nullable=True),
    _Spec("store_inputs", _store_inputs, lambda raw, where: raw),
    _Spec("retention", _retention, nullable=True),
    _Spec("price", check_price, nullable=True),
    _Spec("rng", _rng, in_file=False, nullable=True),
    _Spec("clock", _callable, in_file=False),
    _Spec("monotonic", _callable, in_file=False),
)}
