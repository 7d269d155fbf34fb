"""A throwaway redis-server on 127.0.0.1 in a temporary directory, for the store tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

from _http import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """Start with :meth:`start`, stop with :meth:`stop`; restartable on the same port, keeping its
    data (append-only file in ``workdir``, written on the clean shutdown ``stop`` asks for)."""

    def __init__(self, workdir: Path, *, fsync_always: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.started_once = False
        # Every acknowledged write reaches the append-only file before the reply: a SIGKILL
        # then loses nothing Redis acknowledged (the default fsyncs once a second).
        self.fsync = "always" if fsync_always else "everysec"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers. The one answering must be this server:
        another process (a parallel job on the machine) may take the port between
        :func:`free_port` and the bind, and the tests would then share its data. A first start
        moves to another port then; a restart, whose clients know the port, raises."""
        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:  # not started, or lost the bind
                if self.proc is not None:
                    if self.started_once:
                        raise RuntimeError(f"redis-server cannot bind port {self.port} again")
                    self.port = free_port()
                self.proc = subprocess.Popen(
                    [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes", "--appendfsync", self.fsync,
                     "--dir", str(self.workdir)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                    pid = client.info("server")["process_id"]
            except redis.RedisError:
                time.sleep(0.02)
                continue
            if pid == self.proc.pid:
                self.started_once = True
                return
            time.sleep(0.02)  # another process's server: ours fails to bind and exits
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot shut down
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """End the server at once (SIGKILL): no clean shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """Hang the server (SIGSTOP): connections open, nothing answers, until :meth:`resume`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
