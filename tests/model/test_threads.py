"""Process-wide thread counts held by overlapping fits and embeddings (model.threads)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest

from tracer_wrap.model.threads import TORCH_THREADS, SharedSetting


class _Knob:
    """A stand-in for a process-wide setting: one value, and every value any holder ran under."""

    def __init__(self, value: int) -> None:
        self.value = value

    def apply(self, value: int) -> Callable[[], None]:
        previous, self.value = self.value, value

        def restore() -> None:
            self.value = previous

        return restore


def _interleave(setting: SharedSetting, value: int, read: Callable[[], int]) -> list[int]:
    """A holds, B holds, A leaves, B leaves (in that order, by events); what B read after A left."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def a() -> None:
        with setting.held(value):
            a_in.set()
            b_in.wait()
        a_out.set()

    def b() -> None:
        a_in.wait()
        with setting.held(value):
            b_in.set()
            a_out.wait()
            seen.append(read())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def test_overlapping_holders_keep_the_value_and_the_last_restores_the_original() -> None:
    knob = _Knob(4)
    setting = SharedSetting(knob.apply)
    assert _interleave(setting, 1, lambda: knob.value) == [1]
    assert knob.value == 4 and setting.holders == 0


def test_a_holder_of_another_value_waits_until_the_others_leave() -> None:
    knob = _Knob(4)
    setting = SharedSetting(knob.apply)
    waiting = threading.Event()

    class _Noticed(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waiting.set()
            return super().wait(timeout)

    setting._changed = _Noticed()
    seen: list[int] = []

    def other() -> None:
        with setting.held(2):
            seen.append(knob.value)

    with setting.held(1):
        thread = threading.Thread(target=other)
        thread.start()
        while not waiting.is_set() and thread.is_alive():  # it blocks, or it ran under us
            waiting.wait(0.01)
        assert waiting.is_set() and knob.value == 1 and not seen
    thread.join()
    assert seen == [2] and knob.value == 4


def _in_a_new_thread(read: Callable[[], int]) -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(read()))
    thread.start()
    thread.join()
    return seen[0]


def test_two_embedders_at_once_leave_torch_as_they_found_it() -> None:
    # torch's count is a process default that each new thread starts from (a thread that set it
    # keeps its own): read it where a user's next thread would.
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert _interleave(TORCH_THREADS, 1, torch.get_num_threads) == [1]
        assert _in_a_new_thread(torch.get_num_threads) == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_setting_is_held_gets_it_back_with_no_holders() -> None:
    knob = _Knob(4)
    setting = SharedSetting(knob.apply)
    with setting.held(1):
        pid = os.fork()
        if pid == 0:  # the parent's holder is not a thread of the child: nothing would restore
            os._exit(0 if setting.holders == 0 and knob.value == 4 else 1)
        assert knob.value == 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert knob.value == 4
