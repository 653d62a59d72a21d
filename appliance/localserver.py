"""A ``pushy server`` child process on 127.0.0.1, for the demo and the end-to-end tests.

It writes a settings TOML next to the state directory, starts the server with ``--ready-file``
and waits (bounded) for that file, which holds the ports the server bound; an early exit or a
timeout is reported with the tail of the server log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

LOCAL_SETTINGS: dict[str, Any] = {
    "api_listen_address": "127.0.0.1",
    "zeromq_listen_address": "tcp://127.0.0.1",
    "server_name": "127.0.0.1",
    "api_port": 0,
    "command_port": 0,
    "server_heartbeat_port": 0,
}


def pushy_command() -> list[str]:
    """How to start this program again: the frozen binary itself, or ``python -m appliance``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "appliance"]


class ManagedProcess:
    """A child process with its log file: the shared stop/kill/log of servers and clients."""

    proc: subprocess.Popen | None = None
    log_path: Path

    def log(self) -> str:
        """The tail of the process's log (stdout and stderr)."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-20000:]

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait for the exit status; killed (and re-raised) after ``timeout``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class LocalServer(ManagedProcess):
    """One server process: free ports by default, settings overridable by keyword.

    ``env`` adds to the environment of the process (e.g. ``TZ``); as a context manager it is
    started on entry and killed on exit (call ``stop()`` first for a graceful end).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        startup_seconds: float = 60,
        **settings: Any,
    ) -> None:
        self.state_dir = state_dir
        self.settings: dict[str, Any] = {
            **LOCAL_SETTINGS,
            "state_dir": str(state_dir),
            **settings,
        }
        self.cwd = cwd
        self.env = env or {}
        self.startup_seconds = startup_seconds
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, Any] = {}
        self.config_path = state_dir.parent / f"{state_dir.name}.toml"
        self.ready_path = state_dir.parent / f"{state_dir.name}.ready"
        self.log_path = state_dir.parent / f"{state_dir.name}-server.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.get("api_tls_cert") else "http"
        return f"{scheme}://127.0.0.1:{self.ports['api_port']}"

    @property
    def pivotal_key(self) -> Path:
        return self.state_dir / "pivotal.pem"

    def launch(self, *extra: str) -> None:
        """Start the process (its settings written to its config file) without waiting."""
        self._write_config()
        self.ready_path.unlink(missing_ok=True)
        command = [*pushy_command(), "server", "--config", str(self.config_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--ready-file", str(self.ready_path), *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
            )

    def reload(self, **settings: Any) -> None:
        """Change settings in the config file and tell the running server (SIGHUP)."""
        assert self.proc is not None
        self.settings.update(settings)
        self._write_config()
        self.proc.send_signal(signal.SIGHUP)

    def _write_config(self) -> None:
        self.config_path.write_text(
            "".join(f"{k} = {json.dumps(v)}\n" for k, v in self.settings.items())
        )

    def start(self, *extra: str) -> LocalServer:
        """Start and wait until ready; raises RuntimeError (with the log) if it is not."""
        self.launch(*extra)
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_seconds
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server not ready in {self.startup_seconds} s:\n{self.log()}")
            time.sleep(0.05)
        self.ports = json.loads(self.ready_path.read_text())
        return self

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
