"""``@traced_classifier``: put tracer_wrap in front of an existing classify function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, SupportsIndex, TypeVar, overload

import wrapt

from .engine import Reply, Stats, TracedTask
from .errors import ConfigError
from .model.router import Router

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import TaskKwargs

__all__ = ["TracedClassifier", "traced_classifier"]

P = ParamSpec("P")
R = TypeVar("R")


class TracedClassifier(wrapt.FunctionWrapper, Generic[P, R]):  # type: ignore[type-arg]
    """The decorated function: call it like the original; it also exposes its task.

    ``router`` is the router being served (None before the first fit), ``stats`` this process's
    counts, ``refit()`` fits now, ``flush()`` writes buffered traces now, ``task`` the underlying
    :class:`TracedTask`. ``isinstance``, ``inspect.iscoroutinefunction``, the name and the
    signature are the original function's.

    It pickles by reference, as a plain function does (its module and qualified name), so
    ``Pool.map(classify, texts)`` and ``ProcessPoolExecutor.map`` work: a worker process uses
    the decorated function of its own import of the module (a spawned worker imports it, a
    forked one has it), with its own task, whose traces it writes to the same store. As for a
    plain function, one that is not reachable by that name (defined in a function, or bound to
    another name) raises ``pickle.PicklingError``.
    """

    def __init__(self, fn: Callable[P, R], wrapper: Callable[..., Any], task: TracedTask) -> None:
        super().__init__(fn, wrapper)
        self._self_task = task

    @property
    def task(self) -> TracedTask:
        return self._self_task

    @property
    def router(self) -> Router | None:
        return self._self_task.router

    @property
    def stats(self) -> Stats:
        return self._self_task.stats

    def refit(self) -> Router:
        """Fit on every trace now and publish the router (see :meth:`TracedTask.refit`)."""
        return self._self_task.refit()

    def flush(self, timeout: float = 30.0) -> bool:
        """Write the buffered traces and counters now (see :meth:`TracedTask.flush`)."""
        return self._self_task.flush(timeout)

    def __reduce_ex__(self, protocol: SupportsIndex) -> str:
        # A name: pickle saves a global (module and qualified name, the module read from the
        # proxied __module__) and checks that the name gives back this very object. wrapt's
        # proxy refuses to pickle by default; copy.copy and copy.deepcopy return it as is.
        return self.__qualname__


def _text_getter(fn: Callable[..., Any], text_arg: str | int
                 ) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], object]:
    """A function finding the text argument of a call; position 0 skips a method's ``self`` (or
    a class method's ``cls``), whatever its name. Raises ConfigError when ``text_arg`` is not a
    parameter name or position of ``fn``."""
    signature = inspect.signature(getattr(fn, "__func__", fn))  # a classmethod's function
    params = list(signature.parameters.values())
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    kinds = {p.kind for p in params}
    if isinstance(text_arg, bool) or not isinstance(text_arg, (str, int)):
        raise ConfigError(f"text_arg must be a parameter name or position, got {text_arg!r}")
    if isinstance(text_arg, str):
        if (text_arg not in signature.parameters
                and inspect.Parameter.VAR_KEYWORD not in kinds):
            raise ConfigError(f"text_arg {text_arg!r} is not a parameter of {fn!r}")
    elif text_arg < 0 or (text_arg >= sum(p.kind in plain for p in params)
                          and inspect.Parameter.VAR_POSITIONAL not in kinds):
        raise ConfigError(f"text_arg {text_arg} is not a positional parameter of {fn!r}")

    def text_of(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
        # wrapt passes the instance (or class) a method is bound to apart from ``args``; it is
        # the first parameter, whatever its name. A plain function or a static method has none.
        bound_self = instance is not None and bool(params)
        if isinstance(text_arg, int):
            # The common case, without binding the whole signature: the text passed by position.
            index = text_arg + (1 if bound_self else 0)
            if (text_arg < len(args) and index < len(params)
                    and all(p.kind in plain for p in params[:index + 1])):
                return args[text_arg]
        try:
            arguments = signature.bind_partial(*((instance,) if bound_self else ()), *args,
                                               **kwargs).arguments
        except TypeError:
            return None  # a malformed call: let the function raise its own error
        if isinstance(text_arg, str):
            return arguments.get(text_arg)
        position = text_arg + (1 if bound_self else 0)
        return arguments.get(params[position].name) if position < len(params) else None

    return text_of


@overload
def traced_classifier(fn: Callable[P, R], /) -> TracedClassifier[P, R]: ...


@overload
def traced_classifier(
    *,
    task: str | None = None,
    text_arg: str | int = 0,
    label_of: Callable[[Any], object] | None = None,
    answer: Callable[[str], Any] | None = None,
    **options: Unpack[TaskKwargs],
) -> Callable[[Callable[P, R]], TracedClassifier[P, R]]: ...


def traced_classifier(fn: Callable[..., Any] | None = None, /, *, task: str | None = None,
                      text_arg: str | int = 0, label_of: Callable[[Any], object] | None = None,
                      answer: Callable[[str], Any] | None = None, **options: Any) -> Any:
    """Trace a classify function and answer locally where the router is certified to agree.

    Use bare (``@traced_classifier``) or with options (``@traced_classifier(labels=[...],
    target=0.95)``); sync and async functions both work. The text to classify is the first
    argument (or ``text_arg``, a name or position). The function's return value is its label,
    unless ``label_of(result)`` extracts it; a local answer returns the label, or
    ``answer(label)`` to build the function's usual return type. The task name defaults to the
    function's qualified name. The other options are the task options
    (:class:`~tracer_wrap.options.TaskOptions`); those not given come from ``TRACER_WRAP_*``
    variables and ``tracer_wrap.toml``. A bad value raises ConfigError at decoration time.
    Inside calls tracer_wrap fails open; the function's own errors propagate unchanged.
    """

    def decorate(func: Callable[..., Any]) -> TracedClassifier[..., Any]:
        text_of = _text_getter(func, text_arg)
        # A classmethod / staticmethod object under the decorator: its function is the one.
        inner = getattr(func, "__func__", func)
        name = f"{inner.__module__}.{inner.__qualname__}" if task is None else task
        traced = TracedTask(name, **options)
        reply: Reply[Any] = Reply(label_of=label_of or (lambda result: result),
                                  build=answer or (lambda label: label))

        async def async_wrapper(wrapped: Callable[..., Any], instance: Any,
                                args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return await traced.acall(text_of(instance, args, kwargs),
                                      lambda: wrapped(*args, **kwargs), reply)

        def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return traced.call(text_of(instance, args, kwargs),
                               lambda: wrapped(*args, **kwargs), reply)

        chosen = async_wrapper if inspect.iscoroutinefunction(inner) else wrapper
        return TracedClassifier(func, chosen, traced)

    return decorate if fn is None else decorate(fn)
