"""The background worker: what tracer_wrap does off the request path, on one thread per process.

Each :class:`~tracer_wrap.engine.TracedTask` registers a :class:`Job`; the worker calls every job's
:meth:`Job.step` at least every :data:`TICK` seconds, and at once after :func:`wake` (a call that
queues a trace into an empty buffer wakes it). A step writes the task's buffered traces and
counters to the store, refreshes the version it serves, and schedules refits: store reads and
writes, model loads and waits on locks all happen here, never in a caller's thread.

A step that raises is logged with its task's name (once per storm) and the worker goes on with
the other jobs. The worker is a daemon
thread started on first use; a forked child starts its own (the parent's does not exist in it).
Every job gets a last :meth:`Job.drain`, bounded by :data:`EXIT_SECONDS` in all (an unreachable
store cannot hang the exit), at interpreter exit and at the exit of a ``multiprocessing`` child,
which ends with ``os._exit`` and so skips ``atexit``, or by SIGTERM (``Pool.terminate()``; where
SIGTERM did the default, the child drains and then ends by it); and before a fork, bounded by
:data:`FORK_SECONDS`, since the child does not inherit what the parent has buffered. Steps of a
fork that the drain's writes would wait on (a store's guard that no SQLite operation runs across
the fork) are registered with :func:`at_fork`, which runs them after the drain: ``os``'s own
at-fork hooks run in the reverse order of their registration, that is of module imports.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from ._log import fault

__all__ = ["EXIT_SECONDS", "FORK_SECONDS", "TICK", "Job", "adopt", "at_fork", "exiting",
           "flush", "register", "unregister", "wake"]

#: Longest the worker sleeps between two steps of every job.
TICK = 0.1
#: Longest the last drain at interpreter exit may take, over every job.
EXIT_SECONDS = 5.0
#: Longest a fork waits for buffered traces to be written first (the child does not inherit them).
FORK_SECONDS = 1.0


class Job(Protocol):
    """What the worker runs for one task."""

    def step(self) -> None:
        """Do the background work that is due (write buffers, refresh, refit). May raise."""

    def drain(self, timeout: float) -> bool:
        """Write everything buffered within ``timeout`` seconds; True when nothing is left."""


_jobs: weakref.WeakSet[Job] = weakref.WeakSet()
#: Jobs collected with work still buffered (see :func:`adopt`), held until drained; one thread
#: drains them at a time (the worker, or a flush).
_orphans: list[Job] = []
_orphans_draining = threading.Lock()
_lock = threading.Lock()
_wake = threading.Event()
_pid: int | None = None
#: Held by the worker while it runs one job's step: :func:`unregister` waits on it.
_stepping = threading.Lock()


def register(job: Job) -> None:
    """Run ``job`` on this process's worker from now on (as long as ``job`` is alive)."""
    with _lock:
        _jobs.add(job)
    _ensure_thread()
    wake()


def unregister(job: Job, timeout: float = 5.0) -> bool:
    """Run ``job`` no more; wait up to ``timeout`` seconds for a step of it the worker is running
    now. True when no step of ``job`` runs any longer."""
    with _lock:
        _jobs.discard(job)
    if not _stepping.acquire(timeout=timeout):
        return False
    _stepping.release()
    return True


def adopt(job: Job) -> None:
    """Hold ``job``, which is being collected with work still buffered (a decorated function
    rebound, a wrapped client dropped: its ``__del__`` calls this), until the worker has drained
    it, then let it go. Takes no lock: a collection runs in any thread, at any point."""
    _orphans.append(job)


def wake() -> None:
    """Have the worker run its jobs now rather than at the next tick."""
    if _pid != os.getpid():
        _ensure_thread()
    if not _sigterm_armed:
        _arm_sigterm()
    _wake.set()


def _ensure_thread() -> None:
    global _pid
    if _pid == os.getpid():
        return
    with _lock:
        if _pid == os.getpid():
            return
        _pid = os.getpid()
        threading.Thread(target=_run, name="tracer_wrap-background", daemon=True).start()


def _run() -> None:
    while True:
        _wake.wait(TICK)
        _wake.clear()
        # A function of its own, so its list of jobs does not outlive the pass: a job dropped
        # meanwhile must be collectable (and adopted, if it holds work).
        _step_all()
        _drain_orphans()


def _step_all() -> None:
    with _lock:
        jobs = list(_jobs)
    for job in jobs:
        with _stepping:
            if job not in _jobs:
                continue  # unregistered meanwhile
            try:
                job.step()
            except Exception as exc:  # the worker and the other jobs outlive any job's fault
                # A task's name, when the job is one task (the SDK's Tasks has a method there).
                name = getattr(job, "task", None)
                fault("background work", exc, task=name if isinstance(name, str) else None)


def _drain_orphans(wait: float = 0.0) -> None:
    """Try once to drain every adopted job, and let go of each one drained; waits up to
    ``wait`` seconds for another thread draining them, never on a store: one whose store cannot
    be written now is tried again at the next tick (and at exit), so a task the application
    dropped can neither hold a flush nor decide its result."""
    if not _orphans_draining.acquire(timeout=wait):
        return
    try:
        for job in list(_orphans):
            try:
                drained = job.drain(0.0)
            except Exception as exc:
                fault("background work", exc)
                drained = False
            if drained:
                _orphans.remove(job)
    finally:
        _orphans_draining.release()


def flush(timeout: float = 30.0) -> bool:
    """Write everything every task of this process has buffered (traces and counters) now,
    waiting up to ``timeout`` seconds in all for an unreachable store; True when nothing is left.
    The worker does this within a fraction of a second anyway; call it before reading the store
    right after calls, or before a process ends by other means than a normal exit. Tasks
    collected with answers still buffered (see :func:`adopt`) are written too, one try each,
    never waited on; the result is about the tasks still alive.

    The writes run on a helper thread, so a store call that blocks past any timeout it was given
    (SQLite waiting on a lock another process holds) cannot hold the caller past ``timeout``."""
    done: list[bool] = []
    helper = threading.Thread(target=lambda: done.append(_drain_all(timeout)),
                              name="tracer_wrap-flush", daemon=True)
    try:
        helper.start()
    except RuntimeError:  # the interpreter is shutting down and starts no thread: write here
        return _drain_all(timeout)
    helper.join(timeout + 0.5)
    return done == [True]


def _drain_all(timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with _lock:
        jobs = list(_jobs)
    done = True
    for job in jobs:
        try:
            done = job.drain(max(0.0, deadline - time.monotonic())) and done
        except Exception as exc:
            fault("background work", exc)
            done = False
    _drain_orphans(max(0.0, deadline - time.monotonic()))
    return done


def _drain_at_exit() -> None:
    flush(EXIT_SECONDS)


def exiting() -> bool:
    """Whether the interpreter's exit began: its thread pools take no new work from then on (the
    ones tracer_wrap uses and the ones a library it calls uses, such as a model's loader)."""
    import concurrent.futures.thread as pools

    return (bool(getattr(pools, "_shutdown", False)) or not threading.main_thread().is_alive()
            or sys.is_finalizing())


_ForkStep = tuple[Callable[[], None], Callable[[], None], Callable[[], None]]
_FORK_STEPS: list[_ForkStep] = []


def at_fork(*, before: Callable[[], None], after_in_parent: Callable[[], None],
            after_in_child: Callable[[], None]) -> None:
    """Run ``before`` at each fork once the pre-fork drain is done (steps in registration
    order), and the after-steps once it is over (in reverse order), as
    :func:`os.register_at_fork` would, but after the drain whatever the order of imports."""
    _FORK_STEPS.append((before, after_in_parent, after_in_child))


def _before_fork() -> None:
    # What the parent buffered is the parent's to write: write it before the child copies it.
    # In this thread: a helper thread still writing at the fork would leave the child a store
    # locked by a thread it does not have. Then the other steps, which may block those writes.
    _drain_all(FORK_SECONDS)
    for before, _, _ in _FORK_STEPS:
        before()


def _after_fork_in_parent() -> None:
    for _, after, _ in reversed(_FORK_STEPS):
        after()


def _after_fork_in_child() -> None:
    # The parent's worker thread and any lock it held do not exist in the child.
    global _lock, _wake, _pid, _stepping, _sigterm_armed, _orphans_draining
    _lock, _wake, _pid, _stepping = threading.Lock(), threading.Event(), None, threading.Lock()
    _sigterm_armed = False  # a multiprocessing child, maybe
    _orphans_draining = threading.Lock()
    _orphans.clear()  # what they held is the parent's to write
    for _, _, after in reversed(_FORK_STEPS):
        after()


class _ExitHook:
    """Keeps the multiprocessing exit drain registered in every child (see below)."""

    def register(self) -> None:
        multiprocessing.util.Finalize(None, _drain_at_exit, exitpriority=10)
        _arm_sigterm()  # a forked child (a spawned one runs no after-fork hook: see wake())


#: Whether this process's SIGTERM was looked at (see :func:`_arm_sigterm`).
_sigterm_armed = False


def _arm_sigterm() -> None:
    # A multiprocessing child ended by SIGTERM runs neither atexit nor multiprocessing's
    # finalizers, and Pool.terminate(), which ``with Pool() as pool:`` calls at its end, ends
    # the workers so: 900 of 950 answers were lost in a measured run. Armed in a forked child by
    # multiprocessing's after-fork hook, and from wake() (a spawned child imports tracer_wrap
    # before it knows it is one, and runs no after-fork hook; its first call wakes the worker).
    # Only where SIGTERM does the default (never replacing the application's handler), and
    # only from the main thread (where Python runs handlers).
    global _sigterm_armed
    if (multiprocessing.parent_process() is None
            or threading.current_thread() is not threading.main_thread()):
        return  # not a child (yet), or not the thread that may set a handler: next time
    _sigterm_armed = True
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    """Drain (bounded by :data:`EXIT_SECONDS`), then end by SIGTERM as the default would."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        flush(EXIT_SECONDS)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


atexit.register(_drain_at_exit)
# A multiprocessing child (fork or spawn) ends with os._exit after running multiprocessing's
# finalizers, skipping atexit; and it clears the finalizers it inherited or registered while
# importing its target before it runs: register the drain again after that clearing.
_EXIT_HOOK = _ExitHook()
_EXIT_HOOK.register()
multiprocessing.util.register_after_fork(_EXIT_HOOK, _ExitHook.register)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
