"""appliance.sdnotify against a real AF_UNIX datagram socket (a file in tmp_path or an abstract
name): what systemd would receive, and the no-op / never-raise cases."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from appliance import sdnotify


class Listener:
    """A stand-in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as written in $NOTIFY_SOCKET

    def recv(self, timeout: float = 2.0) -> list[str]:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> bool:
        self.sock.settimeout(0)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def path_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    name = f"pushy-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield Listener(sock, "@" + name)


def test_ready_with_status_is_one_datagram(path_listener: Listener) -> None:
    assert sdnotify.ready("serving 2 orgs") is True
    assert path_listener.recv() == ["READY=1", "STATUS=serving 2 orgs"]


def test_notify_sends_the_lines_given(path_listener: Listener) -> None:
    assert sdnotify.notify("STATUS=a", "ERRNO=0") is True
    assert path_listener.recv() == ["STATUS=a", "ERRNO=0"]


def test_status_stays_on_one_line(path_listener: Listener) -> None:
    assert sdnotify.status("first\nsecond")
    assert path_listener.recv() == ["STATUS=first second"]


def test_helpers_send_what_systemd_expects(path_listener: Listener) -> None:
    sdnotify.stopping()
    assert path_listener.recv() == ["STOPPING=1"]
    sdnotify.watchdog()
    assert path_listener.recv() == ["WATCHDOG=1"]
    sdnotify.extend_timeout(30)
    assert path_listener.recv() == ["EXTEND_TIMEOUT_USEC=30000000"]
    sdnotify.reloading()
    lines = path_listener.recv()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0


def test_abstract_socket_name(abstract_listener: Listener) -> None:
    assert sdnotify.ready() is True
    assert abstract_listener.recv() == ["READY=1"]


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready("x") is False


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_address_is_a_no_op(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_missing_socket_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.ready("x") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + uuid.uuid4().hex)
    assert sdnotify.watchdog() is False


def test_a_stream_socket_is_not_a_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready() is False


# ---- watchdog_interval ----


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("500000", "self", 0.5),
        ("30000000", "other", None),
        ("30000000", "junk", None),
        (None, None, None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, value)
    assert sdnotify.watchdog_interval() == expected


def test_watchdog_pid_of_a_onefile_bootloader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frozen (PyInstaller), the parent's pid is the unit's main pid: accepted; not otherwise."""
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getppid()))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert sdnotify.watchdog_interval() == 2.0


# ---- the watchdog task ----


async def test_watchdog_task_pings_every_half_interval(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sdnotify.watchdog_task)
        await trio.sleep(0.25)  # virtual time: pings at 0, 0.1 and 0.2
        nursery.cancel_scope.cancel()
    received = []
    for _ in range(10):
        if not path_listener.pending():
            break
        received.append(path_listener.recv())
    assert received == [["WATCHDOG=1"]] * 3


async def test_watchdog_task_without_a_watchdog_returns(
    path_listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with trio.fail_after(5):
        await sdnotify.watchdog_task()
    assert not path_listener.pending()
