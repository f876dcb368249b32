"""Run a plugin for a test: in-process on a thread, or as a real ``dockplug serve`` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dockplug.client import PluginClient
from dockplug.protocol.base import Driver
from dockplug.server.runner import PluginServer, ServeOptions, new_runner


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Polls CONDITION until it holds (True) or TIMEOUT seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


class ThreadedPlugin:
    """Serves drivers on a background thread with its own event loop.

    ``with ThreadedPlugin(MyDriver(), socket=path) as plugin: plugin.client().call(...)``
    """

    def __init__(
        self, drivers: Driver | Sequence[Driver], opts: ServeOptions | None = None, **kw: Any
    ) -> None:
        self.opts = opts or ServeOptions(**{"name": "test-plugin", **kw})
        self.server = PluginServer(drivers, self.opts)
        self._thread = threading.Thread(target=self._run, name="dockplug-test-server", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with new_runner() as runner:
                runner.run(self.server.serve())
        except BaseException as exc:
            self._error = exc

    def start(self, timeout: float = 10.0) -> ThreadedPlugin:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.ready.is_set():
            if self._error is not None:
                raise self._error
            if time.monotonic() > deadline:
                raise TimeoutError("plugin server did not start")
            time.sleep(0.005)
        return self

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, timeout: float = 30.0) -> PluginClient:
        return PluginClient(self.url, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.stop()
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ThreadedPlugin:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class SubprocessPlugin:
    """``python -m dockplug ARGS`` in its own process; stop() sends SIGTERM like systemd/dockerd."""

    def __init__(
        self,
        args: Sequence[str],
        wait_for: Path | str | None = None,
        env: dict[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        cmd: Sequence[str] | None = None,
    ) -> None:
        self.args = list(args)
        self.wait_for = wait_for
        self.env = {**os.environ, **(env or {})}
        self.pass_fds = tuple(pass_fds)
        self.cmd = list(cmd) if cmd is not None else [sys.executable, "-m", "dockplug"]
        self.proc: subprocess.Popen[bytes] | None = None
        # a file, not a pipe: a plugin that logs more than a pipe holds must never block
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the plugin
        self.started_in = 0.0

    @property
    def output(self) -> str:
        """Everything the plugin printed so far (stdout and stderr)."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def start(self, timeout: float = 15.0) -> SubprocessPlugin:
        began = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd + self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            pass_fds=self.pass_fds,
        )
        if self.wait_for is not None:
            target = str(self.wait_for)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"plugin exited with {self.proc.returncode}: {self.output}")
                if time.monotonic() - began > timeout:
                    self.kill()
                    raise TimeoutError(f"plugin did not answer on {target}")
                try:
                    with PluginClient(target, timeout=1.0) as c:
                        if c.call("Plugin.Activate").status == 200:
                            break
                except OSError:
                    time.sleep(0.01)
        self.started_in = time.monotonic() - began
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> SubprocessPlugin:
        return self.start()

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
