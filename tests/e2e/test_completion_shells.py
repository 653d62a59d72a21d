"""``pushy completion zsh`` and ``fish`` loaded the way their help says, in a real zsh (TAB
pressed on a pseudo-terminal, the line read back through a terminal emulator) and a real fish
(``complete -C``, fish's own completion query). bash: test_cli.py."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyte
import pytest

from tests.support import REPO

COLUMNS, LINES = 120, 30


def script(shell: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


class Zsh:
    """An interactive ``zsh -f`` (no start-up files: nothing loads compinit for us) on a pty."""

    def __init__(self, home: Path) -> None:
        self.master, slave = pty.openpty()
        os.set_blocking(self.master, False)
        env = {"HOME": str(home), "TERM": "xterm", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update({"COLUMNS": str(COLUMNS), "LINES": str(LINES), "PS1": "zsh$ "})
        self.proc = subprocess.Popen(
            ["zsh", "-f", "-i"], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=home
        )
        os.close(slave)
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait_for(self, predicate, seconds: float = 20) -> str:
        """Feed the emulator until ``predicate(the screen's text)`` holds; the cursor's line."""
        deadline = time.monotonic() + seconds
        while True:
            if predicate("\n".join(line.rstrip() for line in self.screen.display)):
                return self.screen.display[self.screen.cursor.y].rstrip()
            if time.monotonic() > deadline:
                raise AssertionError("zsh's screen:\n" + "\n".join(self.screen.display).rstrip())
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.stream.feed(os.read(self.master, 65536))
                except OSError:  # EIO: zsh is gone
                    pass

    def line(self) -> str:
        return self.screen.display[self.screen.cursor.y].rstrip().removeprefix("zsh$ ")

    def complete(self, line: str) -> str:
        """The command line after typing ``line`` and one TAB (the line is cleared first)."""
        self.type("\x15" + line)  # Ctrl-U: an empty line
        self.wait_for(lambda _: self.line() == line)
        self.type("\t")
        self.wait_for(lambda _: self.line() != line)
        time.sleep(0.3)  # the rest of the redraw, if any
        self.wait_for(lambda _: True, 0)
        return self.line()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (scripts/test installs it)"
)
def test_zsh_completes_commands_and_options_in_a_shell_without_compinit(tmp_path):
    (tmp_path / "pushy.zsh").write_text(script("zsh"))
    zsh = Zsh(tmp_path)
    try:
        zsh.wait_for(lambda screen: "zsh$" in screen)
        zsh.type('eval "$(cat pushy.zsh)"; echo LOADED-$?\n')
        zsh.wait_for(lambda screen: "LOADED-" in screen and screen.rstrip().endswith("zsh$"))
        screen = "\n".join(zsh.screen.display)
        assert "LOADED-0" in screen and "not found" not in screen, screen
        assert zsh.complete("pushy jo") == "pushy job"
        assert zsh.complete("pushy job st") == "pushy job sta"  # start, status
        assert zsh.complete("pushy job start --allow") == "pushy job start --allow-unknown-nodes"
        assert zsh.complete("pushy raw --pro") == "pushy raw --profile"
    finally:
        zsh.close()


@pytest.mark.skipif(
    shutil.which("fish") is None, reason="fish is not installed (scripts/test installs it)"
)
def test_fish_completes_commands_and_options(tmp_path):
    (tmp_path / "pushy.fish").write_text(script("fish"))

    def complete(line: str) -> list[str]:
        r = subprocess.run(
            ["fish", "--no-config", "-c", f"source pushy.fish; complete -C '{line}'"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("pushy jo") == ["job"]
    assert complete("pushy job s") == ["start", "status"]  # fish sorts them
    assert complete("pushy job start --allow") == ["--allow-unknown-nodes"]
    assert complete("pushy -h node ") == ["list", "status"]  # no file names
    assert complete("pushy job start -k pushy.f") == ["pushy.fish"]  # a file name
    assert complete("pushy admin user add") == ["add-to-org"]
