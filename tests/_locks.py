"""Another process holding a disk store's SQLite lock, for tests of calls that must not wait."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Holds ``BEGIN EXCLUSIVE`` on every database named until a line arrives on stdin, or on its own
#: after ``argv[1]`` seconds: a test that forgets to release it cannot hang the suite.
_HOLD = """
import select, sqlite3, sys
connections = []
for path in sys.argv[2:]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # no other connection may read or write until COMMIT
    connections.append(db)
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[1]))
for db in connections:
    db.execute("COMMIT")
"""


class LockHolder:
    """A process holding both databases of the disk store at ``path`` locked, from construction
    until :meth:`release` or ``seconds``, whichever comes first."""

    def __init__(self, path: Path, seconds: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(seconds), str(path / "traces/cache.db"),
             str(path / "meta/cache.db")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "locked\n"

    @property
    def holding(self) -> bool:
        return self.process.poll() is None

    def release(self) -> int:
        """Let go of the lock (if still held); the holder's exit code."""
        if self.holding:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        return self.process.wait(60)
