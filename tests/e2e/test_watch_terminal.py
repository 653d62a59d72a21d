"""``pushy watch`` on a real terminal while its server restarts (issue 17): what the screen
shows afterwards, read through a terminal emulator (pyte), not from the escape codes."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import pyte

from tests.support import REPO, Server, setup_org

ORG = "watchtty"
COLUMNS, LINES = 100, 30


class Terminal:
    """A pseudo-terminal of COLUMNS x LINES with a process on it (stdout and stderr, as in a
    shell), and the screen it draws."""

    def __init__(self, command: list[str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        env = {**os.environ, "COLUMNS": str(COLUMNS), "LINES": str(LINES), "TERM": "xterm"}
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(command, stdout=slave, stderr=slave, cwd=REPO, env=env)
        os.close(slave)
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = b""

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the process closed its side
                return
            if not data:
                return
            self.raw += data
            self.stream.feed(data)

    def wait_for(self, check: Callable[[list[str]], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.2)
            if check(self.lines()):
                return
            assert self.proc.poll() is None, (self.proc.returncode, self.lines())
        raise AssertionError(f"no {what} on the screen:\n" + "\n".join(self.lines()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


def headers(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(f"pushy watch  {ORG}")]


def test_the_view_is_redrawn_whole_after_a_server_restart(tmp_path):
    server = Server(tmp_path / "state", keep_alive_time=1).start()
    terminal = None
    try:
        setup_org(server, ORG, ())
        url = f"{server.url}/organizations/{ORG}"
        command = [sys.executable, "-m", "appliance", "watch", "--server-url", url]
        terminal = Terminal([*command, "-u", "pivotal", "-k", str(server.pivotal_key)])
        terminal.wait_for(
            lambda lines: any(h.endswith("(connected)") for h in headers(lines)), 60, "view"
        )
        ports = {k: server.ports[k] for k in ("api_port", "command_port", "server_heartbeat_port")}
        assert server.stop() == 0, server.log()
        terminal.wait_for(
            lambda lines: any("reconnecting in" in line for line in lines), 60, "reconnect note"
        )
        server.settings.update(ports)
        server.start()
        terminal.wait_for(
            lambda lines: any(h.endswith("(connected)") for h in headers(lines)), 60, "new view"
        )
        terminal.pump(0.5)
        terminal.proc.send_signal(signal.SIGINT)
        assert terminal.proc.wait(30) == 0
        terminal.pump(2)
        lines = terminal.lines()
        shown = "\n".join(lines)
        # one view, connected, under the note about the lost connection: no stale header
        assert len(headers(lines)) == 1, shown
        assert headers(lines)[0].endswith("(connected)"), shown
        note = next(i for i, line in enumerate(lines) if "reconnecting in" in line)
        assert note < lines.index(headers(lines)[0]), shown
        assert sum(line.startswith("nodes: ") for line in lines) == 1, shown
        assert b"\x1b[?25h" in terminal.raw  # the cursor is shown again at the end
    finally:
        if terminal is not None:
            terminal.close()
        server.kill()
