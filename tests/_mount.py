"""Bind mounts for tests of read-only stores: chmod does not stop root, a read-only mount does."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def bind_mount(source: Path, target: Path, *options: str) -> bool:
    """Mount ``source`` at ``target`` (with mount ``options``); False where this machine or user
    cannot."""
    if shutil.which("mount") is None:
        return False
    opts = ["-o", ",".join(options)] if options else []
    return subprocess.run(["mount", "--bind", *opts, str(source), str(target)],
                          capture_output=True).returncode == 0


def unmount_all(target: Path) -> None:
    """Lazily unmount everything mounted at ``target``: an open file must not leave a mount
    behind for the next test run."""
    while subprocess.run(["umount", "-l", str(target)], capture_output=True).returncode == 0:
        pass


@contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """``source`` mounted read-only at ``target`` for the block; skips the test where bind
    mounts are not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    if not bind_mount(source, target, "ro"):
        pytest.skip("cannot bind-mount here")
    try:
        yield target
    finally:
        unmount_all(target)
