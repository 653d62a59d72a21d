"""sd_notify(3) in a few lines: tell systemd we are ready, what we are doing, that we live.

Our own code, no dependency (libsystemd bindings need its headers; the PyPI ``sdnotify`` is
unmaintained). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op returning False,
and no call ever raises: a service must not die because its supervisor's socket went away
(the failure is logged at debug level). ``vsock:`` addresses (newer systemd in VMs) are not
handled: treated as unset.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

import trio

__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
    "watchdog_task",
]

log = logging.getLogger("pushy.sdnotify")

# A datagram to a wedged service manager must not stall the event loop for long.
SEND_TIMEOUT_SECONDS = 1.0


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    if addr.startswith("/"):
        return addr
    if addr:
        log.debug("NOTIFY_SOCKET %r is not a path or an abstract name: ignored", addr)
    return None


def notify(*lines: str) -> bool:
    """Send ``lines`` (``KEY=VALUE`` each) as one datagram; True if it was sent."""
    addr = _address()
    if addr is None:
        return False
    payload = "\n".join(lines).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.connect(addr)
            sock.sendall(payload)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.splitlines())  # one datagram line per field


def ready(status: str | None = None) -> bool:
    """Start-up (or a reload) is complete."""
    return notify("READY=1", *([_status_line(status)] if status is not None else []))


def status(text: str) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify(_status_line(text))


def stopping(status: str | None = None) -> bool:
    """We are shutting down."""
    return notify("STOPPING=1", *([_status_line(status)] if status is not None else []))


def reloading(status: str | None = None) -> bool:
    """A reload began; ``ready`` ends it. MONOTONIC_USEC is what Type=notify-reload wants."""
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    extra = [_status_line(status)] if status is not None else []
    return notify("RELOADING=1", f"MONOTONIC_USEC={now_usec}", *extra)


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before the current start/stop timeout fires."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog() -> bool:
    """Still alive."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog period in seconds (``$WATCHDOG_USEC``), or None when no watchdog is set
    or it is meant for another process (``$WATCHDOG_PID`` is not ours).

    A PyInstaller ``--onefile`` program runs as the child of its unpacking bootloader, which
    is the unit's main process: there the bootloader's pid counts as ours (the unit then
    needs ``NotifyAccess=all``, see systemd/README.md)."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        ours = {os.getpid(), os.getppid()} if getattr(sys, "frozen", False) else {os.getpid()}
        try:
            if int(pid) not in ours:
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def watchdog_task() -> None:
    """Send ``WATCHDOG=1`` every half period while the event loop runs this task (returns at
    once when no watchdog is set). A wedged loop stops the pings and systemd restarts us."""
    interval = watchdog_interval()
    if interval is None or _address() is None:
        return
    log.debug("systemd watchdog: pinging every %.3f s", interval / 2)
    while True:  # ends when the owning nursery is cancelled
        watchdog()
        await trio.sleep(interval / 2)
