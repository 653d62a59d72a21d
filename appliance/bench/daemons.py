"""Daemons started as the leaders of their own process groups and stopped by group (salt
forks: the group is what must end), with the small waits and timings around them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_SECONDS = 15.0


def _die_with_parent() -> None:
    """In the child before exec: a new session, and SIGTERM when this benchmark dies."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Group:
    """A daemon started as the leader of its own process group (salt forks: the group is
    what must end)."""

    def __init__(self, name: str, command: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (no threads here)
                **popen,
            )
        self.pgid = self.proc.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def alive(self) -> bool:
        self.proc.poll()
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def stop_groups(groups: list[Group], seconds: float = STOP_SECONDS) -> None:
    """SIGTERM every group, wait (bounded), SIGKILL what is left, reap the leaders."""
    for group in groups:
        group.signal(signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(g.alive() for g in groups):
        time.sleep(0.1)
    for group in groups:
        if group.alive():
            group.signal(signal.SIGKILL)
    for group in groups:
        with contextlib.suppress(subprocess.TimeoutExpired):
            group.proc.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(g.alive() for g in groups):
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a daemon to bind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], seconds: float, what: str, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it is truthy (its value) or ``seconds`` pass (RuntimeError)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"{what}: not within {seconds:.0f} s")


def timed(
    command: list[str], timeout: float, **kw: Any
) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``command`` to its end: (wall seconds, the completed process with text output)."""
    t0 = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kw)
    return time.perf_counter() - t0, out
