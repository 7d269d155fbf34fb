"""Thread counts of native libraries, held by overlapping fits and embeddings.

BLAS's thread count (OpenBLAS, MKL) and torch's default belong to the process, not to a thread. A
fit or an embedding that lowers one and restores the old value after breaks when two of them
overlap in different threads: the first to finish restores the count while the other still runs,
and the last restores the *lowered* count it found, which then stays for the life of the process
(two embedders running at once left torch on one thread for good, in every thread started
after). A :class:`SharedSetting` is held,
not set: the first holder applies the value, later holders of the same value join it, and the
last to leave restores what the first found. OpenMP's count, by contrast, is kept per thread, so
:func:`single_threaded` limits it in the calling thread only, the plain way.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["BLAS_THREADS", "TORCH_THREADS", "SharedSetting", "single_threaded"]


class SharedSetting:
    """One process-wide integer setting, held by any number of threads at one value at a time.

    ``apply(value)`` sets it and returns a function that restores what was there before.
    :meth:`held` is atomic with respect to other holders: while it is held at one value, a thread
    asking for another waits until every holder has left (then the old value is restored before
    the new one is applied), so no holder ever runs under a value it did not ask for. Nothing on a
    caller's request path holds a setting (fits and model calls run in background threads or the
    embedding worker). A child forked while the setting was held gets it restored, with no
    holders. Errors of ``apply`` or of the restore function propagate.
    """

    def __init__(self, apply: Callable[[int], Callable[[], object]]) -> None:
        self._apply = apply
        self._changed = threading.Condition()
        self._value: int | None = None
        self._holders = 0
        self._restore: Callable[[], object] | None = None
        _SETTINGS.add(self)

    def _after_fork_in_child(self) -> None:
        # The holders were threads of the parent, which the child does not have: it would never
        # restore, and a lock a parent thread held at the fork would never be released.
        self._changed = threading.Condition()
        restore, self._restore, self._value, self._holders = self._restore, None, None, 0
        if restore is not None:
            restore()

    @contextmanager
    def held(self, value: int) -> Iterator[None]:
        with self._changed:
            while self._holders and self._value != value:
                self._changed.wait()
            if not self._holders:
                self._restore = self._apply(value)
                self._value = value
            self._holders += 1
        try:
            yield
        finally:
            with self._changed:
                self._holders -= 1
                if not self._holders:
                    restore, self._restore, self._value = self._restore, None, None
                    self._changed.notify_all()
                    if restore is not None:
                        restore()

    @property
    def holders(self) -> int:
        """How many threads hold the setting now."""
        with self._changed:
            return self._holders


_SETTINGS: weakref.WeakSet[SharedSetting] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for setting in list(_SETTINGS):
        setting._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas(value: int) -> Callable[[], object]:
    # Fit time only: serving never needs scikit-learn, which brings threadpoolctl.
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(value, user_api="blas")
    restore: Callable[[], object] = limits.restore_original_limits
    return restore


def _torch(value: int) -> Callable[[], object]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(value)
    return lambda: torch.set_num_threads(previous)


#: BLAS threads of the libraries threadpoolctl knows (numpy's and scipy's OpenBLAS, MKL).
BLAS_THREADS = SharedSetting(_blas)
#: torch's intra-op threads (sentence-transformers models).
TORCH_THREADS = SharedSetting(_torch)


@contextmanager
def single_threaded() -> Iterator[None]:
    """One BLAS thread in the process (held, :data:`BLAS_THREADS`) and one OpenMP thread in the
    calling thread (scikit-learn's k-means), both restored on exit."""
    from threadpoolctl import threadpool_limits

    with BLAS_THREADS.held(1), threadpool_limits(1, user_api="openmp"):
        yield
