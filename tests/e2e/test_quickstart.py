"""docs/quickstart.md, run as written: every ```sh block, in order, the way a reader runs it.

How the page is run:

- The blocks are the page's fenced ```sh blocks. An HTML comment ``<!-- quickstart: ... -->``
  right before a block says how to run it:
  ``skip (...)`` — not run (the install step and the systemd path);
  ``background; ready when the output shows "TEXT"`` — the doc's "another terminal": started
  in its own process group and waited for (bounded) until its output shows TEXT; stopped at
  the end of the test;
  ``retry until the output matches "REGEX"`` — the doc's "run it again": re-run (bounded) until
  its standard output matches;
  no comment — run once, and it must exit 0.
- Each block runs as one ``bash -euo pipefail`` script: its lines run in order, the first one
  that fails fails the test, heredocs work as written.
- Two ways in, as step 1 gives them; the PATH starts as this machine's without any directory
  that holds a ``pushy`` (so only what the page puts there is found):
  ``source`` — the block marked ``source checkout (...)`` runs as written at the top of this
  checkout (``scripts/bootstrap``, a no-op when ``.venv`` is up to date, then ``export
  PATH="$PWD/.venv/bin:$PATH"``), and the PATH it leaves is the one every later block (and
  "another terminal") gets: ``pushy`` and ``pushy-client`` are the virtualenv's console
  scripts;
  ``binary`` — the sudo install block is done in a temporary directory instead of
  /usr/local/bin (``pushy`` → the binary, ``pushy-client`` → ``pushy``), and that directory is
  put first on the PATH; the source checkout block is skipped. The binary is
  ``$PUSHY_QUICKSTART_BINARY`` (.ci/run sets it after packaging/build-binary, so CI runs this
  mode; ``skip`` skips it: .ci/run's test suite, while the binary is still being built) or else
  ``dist/pushy`` when built and newer than every file under appliance/; else the mode is
  skipped.
- A fresh machine: HOME is an empty temporary directory, the working directory another one, and
  ``PUSHY_*``, ``CHEF_*`` and ``KNIFE_HOME`` are removed from the environment.
- Ports: the page shows the defaults 10003 (API), 10002 (command channel) and 10000 (server
  heartbeat). The test rewrites each of those numbers, wherever it appears as a whole number in
  a block (commands and heredoc contents alike), to a free port on 127.0.0.1, the same port
  everywhere. Before a block starts ``pushy server``, the test checks that the settings file it
  names binds 127.0.0.1 only.
- The last block reads the job's output: it must show ``hello from <this machine's name>``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"
DEFAULT_PORTS = ("10003", "10002", "10000")
BLOCK_SECONDS = 120
READY_SECONDS = 60
RETRY_SECONDS = 60
STOP_SECONDS = 15

_DIRECTIVE = re.compile(r"<!--\s*quickstart:\s*(.*?)\s*-->")
_READY = re.compile(r'^background; ready when the output shows "(.+)"$')
_SOURCE = "source checkout"
_RETRY = re.compile(r'^retry until the output matches "(.+)"$')


@dataclass
class Block:
    line: int  # where the block starts in the page (1-based), for messages
    text: str
    directive: str  # "" when the block has no comment


@dataclass
class Background:
    block: Block
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def parse_blocks(markdown: str) -> list[Block]:
    """The ```sh blocks, each with the quickstart comment on the last non-blank line before it."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        line = lines[i]
        if line.strip() == "```sh":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            assert end < len(lines), f"quickstart.md:{i + 1}: unterminated ```sh block"
            match = _DIRECTIVE.search(previous)
            text = "\n".join(lines[start:end]) + "\n"
            blocks.append(Block(i + 1, text, match.group(1) if match else ""))
            previous = ""
            i = end + 1
            continue
        if line.strip():
            previous = line
        i += 1
    return blocks


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def rewrite_ports(text: str, ports: dict[str, int]) -> str:
    return re.sub(r"(?<!\d)(1000[023])(?!\d)", lambda m: str(ports[m.group(1)]), text)


def the_binary() -> Path:
    """The single binary to follow the page with (see the module docstring), else skip."""
    explicit = os.environ.get("PUSHY_QUICKSTART_BINARY")
    if explicit == "skip":
        pytest.skip("PUSHY_QUICKSTART_BINARY=skip (.ci/run runs this mode after its build)")
    if explicit:
        binary = Path(explicit).resolve()
        assert os.access(binary, os.X_OK), f"PUSHY_QUICKSTART_BINARY={explicit}: not executable"
        return binary
    built = REPO / "dist" / "pushy"
    if not built.exists():
        pytest.skip("no dist/pushy (packaging/build-binary; CI runs this mode after building)")
    newest = max(p.stat().st_mtime for p in (REPO / "appliance").rglob("*.py"))
    if built.stat().st_mtime < newest:
        pytest.skip("dist/pushy is older than appliance/: rebuild it (packaging/build-binary)")
    return built


def install_binary(binary: Path, directory: Path) -> None:
    """What the page's sudo install block does, in ``directory`` instead of /usr/local/bin."""
    directory.mkdir()
    (directory / "pushy").symlink_to(binary)
    (directory / "pushy-client").symlink_to("pushy")


def machine_path() -> str:
    """This machine's PATH without the directories that hold a ``pushy``."""
    dirs = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not os.path.exists(os.path.join(d, "pushy")))


def fresh_env(home: Path, path: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PUSHY_", "CHEF_", "PYTHON"))
        and k not in ("KNIFE_HOME", "VIRTUAL_ENV")
    }
    env.update(HOME=str(home), PATH=path, LC_ALL="C.UTF-8")
    return env


def run_source_block(block: Block, env: dict[str, str], tmp: Path) -> str:
    """Run the source checkout block at the top of the checkout; the PATH it leaves."""
    path_file = tmp / "path-after-step-1"
    text = f"{block.text}printf '%s' \"$PATH\" > {shlex.quote(str(path_file))}\n"
    rc, out, err = run_block(block, text, REPO, env)
    assert rc == 0, f"quickstart.md:{block.line}: exit status {rc}\n{block.text}\n{out}\n{err}"
    return path_file.read_text()


def stop_group(proc: subprocess.Popen, grace: float = STOP_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL it if still there after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def run_block(block: Block, text: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        stop_group(proc, grace=1)
        out, err = proc.communicate()
        pytest.fail(f"quickstart.md:{block.line}: still running after {BLOCK_SECONDS} s\n{text}")
    return proc.returncode, out, err


def check_local_only(text: str, home: Path) -> None:
    """A ``pushy server`` block must use a settings file that binds 127.0.0.1 only."""
    if "pushy server" not in text:
        return
    match = re.search(r"--config\s+(\S+)", text)
    assert match, f"the server command names no --config file:\n{text}"
    path = Path(match.group(1).replace("~", str(home), 1))
    settings = tomllib.loads(path.read_text())
    assert settings.get("api_listen_address") == "127.0.0.1", settings
    assert settings.get("zeromq_listen_address") == "tcp://127.0.0.1", settings


def start_background(
    block: Block, text: str, ready: str, cwd: Path, env: dict[str, str], logs: Path
) -> Background:
    log_path = logs / f"background-{block.line}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    bg = Background(block, proc, log_path)
    deadline = time.monotonic() + READY_SECONDS
    for _ in range(int(READY_SECONDS / 0.1) + 1):
        if ready in bg.log():
            return bg
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    state = f"exited with {proc.returncode}" if proc.poll() is not None else "never got ready"
    raise AssertionError(
        f"quickstart.md:{block.line}: {state} (waited for {ready!r})\n{text}\n--- output:\n"
        + bg.log()
    )


@pytest.mark.parametrize("mode", ["source", "binary"])
def test_quickstart_runs_as_written(mode, tmp_path):
    blocks = parse_blocks(QUICKSTART.read_text(encoding="utf-8"))
    assert blocks, "docs/quickstart.md has no ```sh blocks"
    sources = [b for b in blocks if b.directive.startswith(_SOURCE)]
    assert len(sources) == 1, "docs/quickstart.md: expected one 'source checkout' block"
    home, work, bin_dir, logs = (tmp_path / n for n in ("home", "work", "bin", "logs"))
    for d in (home, work, logs):
        d.mkdir()
    if mode == "binary":
        install_binary(the_binary(), bin_dir)
        env = fresh_env(home, f"{bin_dir}{os.pathsep}{machine_path()}")
    else:
        env = fresh_env(home, machine_path())
        env["PATH"] = run_source_block(sources[0], env, tmp_path)
        assert shutil.which("pushy-client", path=env["PATH"]) == str(
            REPO / ".venv" / "bin" / "pushy-client"
        ), env["PATH"]
    ports = dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True))

    background: list[Background] = []
    last_out = ""
    ran = 0

    def context() -> str:
        return "".join(f"\n--- {b.block.text.strip()}:\n{b.log()}" for b in background)

    try:
        for block in blocks:
            if block.directive.startswith(("skip", _SOURCE)):
                continue  # the source checkout block ran above (source mode only)
            text = rewrite_ports(block.text, ports)
            ready, retry = _READY.match(block.directive), _RETRY.match(block.directive)
            if block.directive and not (ready or retry):
                pytest.fail(f"quickstart.md:{block.line}: unknown directive {block.directive!r}")
            if ready:
                check_local_only(text, home)
                background.append(start_background(block, text, ready.group(1), work, env, logs))
                continue
            attempts = int(RETRY_SECONDS) if retry else 1
            deadline = time.monotonic() + RETRY_SECONDS
            for attempt in range(attempts):
                rc, out, err = run_block(block, text, work, env)
                if not retry or (rc == 0 and re.search(retry.group(1), out, re.M)):
                    break
                if attempt + 1 == attempts or time.monotonic() > deadline:
                    pytest.fail(
                        f"quickstart.md:{block.line}: output never matched "
                        f"{retry.group(1)!r}\n{text}\n--- stdout:\n{out}\n--- stderr:\n{err}"
                        + context()
                    )
                time.sleep(1)
            assert rc == 0, (
                f"quickstart.md:{block.line}: exit status {rc}\n{text}\n--- stdout:\n{out}"
                f"\n--- stderr:\n{err}" + context()
            )
            ran += 1
            last_out = out
        assert len(background) == 2, "expected the server and the client in the background"
        assert ran >= 8, f"only {ran} blocks ran"
        assert f"hello from {os.uname().nodename}" in last_out, last_out + context()
    finally:
        for bg in reversed(background):
            stop_group(bg.proc)
