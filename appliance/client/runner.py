"""Starting, watching and killing a job's process; the whitelist lock (client-knife.md §A.4).

How a job runs, and where it differs from the original (Mixlib::ShellOut):

* the command line always runs as ``/bin/sh -c LINE`` (the original did so for any line with
  shell syntax and split plain lines on spaces: the same program runs either way);
* the child gets its own session and process group (``start_new_session``), stdin is
  /dev/null; stdout/stderr are pipes read to the end when capturing, /dev/null otherwise;
* ``user``: the uid, the gid and the supplementary groups (``initgroups``) all change, and
  HOME/USER/LOGNAME come from the password entry, overriding the given environment (appendix
  #6; the original changed only the uid). This uses Popen's ``user=``/``group=``/
  ``extra_groups=``, applied in the child between fork and exec, so no Python code runs in
  the forked child. A client that is not root can only run jobs as itself. Popen changes
  directory *before* it drops privileges, so with both ``user`` and ``dir`` a short probe
  (``cd`` as that user) runs first: a dir the user cannot enter is a start error, as it was
  for the original (which changed directory after becoming the user);
* abort (``kill_event``) or cancellation (client shutdown): TERM to the process group, wait
  up to ``kill_grace`` (3 s) for the group to die, then KILL the group. Zombies count as
  dead: an init that is slow to reap orphans does not delay the result;
* a process that cannot be started (missing dir, unknown user, exec failure) gives an
  Outcome with ``start_error`` instead of raising (appendix #5: the original stayed
  ``running`` until the server aborted it);
* captured output is kept up to ``max_capture`` bytes per stream; the rest is read, counted
  and dropped, so a runaway job cannot exhaust the client's memory. With ``on_output`` (live
  output) nothing is kept here: each read goes to it as it arrives, and a slow ``on_output``
  slows the reading (the command blocks on a full pipe, it is never buffered without bound);
* when the main process exits on its own, processes it left in the background keep running
  (as with the original); if they still hold the output pipes, reading stops
  ``_PIPE_LINGER_SECONDS`` later instead of waiting for them;
* the original's 86400 s no-output timeout is not copied: the server's ``run_timeout``
  aborts a job that runs too long.

The lock: an exclusive, non-blocking ``flock`` on the file chef-client itself locks, opened
without truncation (appendix #3: the original emptied it). Closing the descriptor releases it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import signal
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

__all__ = [
    "KILL_GRACE_SECONDS",
    "MAX_CAPTURE_BYTES",
    "SHELL",
    "Lock",
    "Outcome",
    "group_alive",
    "run_job",
]

log = logging.getLogger(__name__)
#: live output: (stream name, bytes just read)
OnOutput = Callable[[str, bytes], Awaitable[None]]

SHELL = "/bin/sh"
KILL_GRACE_SECONDS = 3.0
MAX_CAPTURE_BYTES = 16 * 1024 * 1024
_PIPE_LINGER_SECONDS = 1.0  # after the main process exits, for output still in the pipes
_REAP_SECONDS = 5.0  # after KILL, for the kernel to tear the group down
_POLL_SECONDS = 0.05
_MAX_POLLS = 100_000  # far beyond any deadline above; the deadlines end the polls
_READ_CHUNK = 65536
_MAX_READS = 2**40  # a bound on paper: reading ends at EOF or when the caller cancels


@dataclass(frozen=True)
class Outcome:
    """How a job ended. ``exit_code`` is None when a signal (``signal``) ended it or when it
    never started (``start_error``). ``killed``: it was aborted or shut down by us."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    killed: bool
    start_error: str | None
    stdout_dropped: int = 0  # bytes read beyond max_capture and thrown away
    stderr_dropped: int = 0

    @property
    def succeeded(self) -> bool:
        return self.start_error is None and not self.killed and self.exit_code == 0


class Lock:
    """A whitelist ``:lock``: exclusive ``flock`` on ``path``, shared with chef-client."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @staticmethod
    def path_for(lock: bool | str, *, lockfile: str | None, file_cache_path: str) -> str:
        """``true`` → chef's ``lockfile`` or ``{file_cache_path}/chef-client-running.pid``;
        a string → that path."""
        if isinstance(lock, str):
            return lock
        if lockfile:
            return lockfile
        return os.path.join(file_cache_path, "chef-client-running.pid")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock without blocking. False when someone holds it or the file cannot be
        opened (for example a missing directory); the reason is logged."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.warning("Cannot open the lock file %r: %s", self.path, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                log.info("The lock file %r is held by another process", self.path)
            else:
                log.warning("Cannot lock %r: %s", self.path, exc)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Drop the lock (closing the file releases the flock). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _Sink:
    """The first ``limit`` bytes of a stream; the rest is only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0
        self.eof = trio.Event()

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))


async def _drain(
    stream: trio.abc.ReceiveStream, sink: _Sink, name: str, on_output: OnOutput | None
) -> None:
    for _ in range(_MAX_READS):
        chunk = await stream.receive_some(_READ_CHUNK)
        if not chunk:
            break
        if on_output is None:
            sink.add(chunk)
        else:
            await on_output(name, chunk)
    sink.eof.set()


def _start_options(
    env: dict[str, str], user: str | None, dir: str | None, capture: bool
) -> dict[str, Any]:
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    child_env = dict(env)
    options: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": output,
        "stderr": output,
        "start_new_session": True,
        "cwd": dir or None,
        "env": child_env,
    }
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except (KeyError, ValueError, TypeError):
            raise LookupError(f"no such user {user!r}") from None
        child_env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
        if os.geteuid() == 0:
            options.update(
                user=entry.pw_uid,
                group=entry.pw_gid,
                extra_groups=os.getgrouplist(entry.pw_name, entry.pw_gid),
            )
        elif entry.pw_uid != os.geteuid():
            raise PermissionError(f"cannot run as {user!r}: the client is not running as root")
    return options


async def _probe_dir_as_user(dir: str, user: str | None, options: dict[str, Any]) -> None:
    """Raise PermissionError unless ``user`` (uid/gid/groups of ``options``) can enter ``dir``."""
    ids = {k: options[k] for k in ("user", "group", "extra_groups")}
    probe = await trio.run_process(
        [SHELL, "-c", 'cd -- "$1"', "pushy-dir-probe", dir],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin"},
        **ids,
    )
    if probe.returncode != 0:
        raise PermissionError(f"user {user!r} cannot enter dir {dir!r}")


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running. Zombies do not count: on
    Linux, members ``killpg(pgid, 0)`` still finds are checked in /proc."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:
        log.warning("Cannot send %s to process group %d: %s", signum, pgid, exc)


async def _until_dead(process: trio.Process, pgid: int) -> None:
    await process.wait()
    for _ in range(_MAX_POLLS):
        if not group_alive(pgid):
            return
        await trio.sleep(_POLL_SECONDS)


async def _terminate(process: trio.Process, pgid: int, grace: float) -> None:
    """TERM the group, KILL it after ``grace`` seconds if anything of it still runs."""
    _signal_group(pgid, signal.SIGTERM)
    with trio.move_on_after(grace):
        await _until_dead(process, pgid)
        return
    _signal_group(pgid, signal.SIGKILL)
    with trio.move_on_after(_REAP_SECONDS):
        await _until_dead(process, pgid)
        return
    log.error("Process group %d survived SIGKILL for %s s", pgid, _REAP_SECONDS)


async def _exit_or_kill(process: trio.Process, kill_event: trio.Event) -> bool:
    """Wait until the process exits (False) or ``kill_event`` fires first (True)."""
    async with trio.open_nursery() as race:

        async def watch() -> None:
            await kill_event.wait()
            race.cancel_scope.cancel()

        race.start_soon(watch)
        await process.wait()
        race.cancel_scope.cancel()
    return process.returncode is None


async def run_job(
    command_line: str,
    *,
    env: dict[str, str],
    user: str | None,
    dir: str | None,
    capture: bool,
    kill_event: trio.Event,
    kill_grace: float = KILL_GRACE_SECONDS,
    max_capture: int = MAX_CAPTURE_BYTES,
    on_started: Callable[[], None] | None = None,
    on_output: OnOutput | None = None,
) -> Outcome:
    """Run ``/bin/sh -c command_line`` to its end (see the module docstring). Never raises for
    a job that cannot start; on cancellation the process group is killed, then Cancelled
    propagates. ``on_started`` runs once the child exists (the client then sends ack_run)."""
    try:
        options = _start_options(env, user, dir, capture)
        if dir and "user" in options:
            await _probe_dir_as_user(dir, user, options)
        process = await trio.lowlevel.open_process([SHELL, "-c", command_line], **options)
    except Exception as exc:
        return Outcome(None, None, b"", b"", False, f"cannot start the job: {exc}")
    if on_started is not None:
        on_started()
    pgid = process.pid  # setsid made it the leader of its own group
    out, err = _Sink(max_capture), _Sink(max_capture)
    killed = False
    try:
        async with trio.open_nursery() as readers:
            if capture:
                assert process.stdout is not None and process.stderr is not None
                readers.start_soon(_drain, process.stdout, out, "stdout", on_output)
                readers.start_soon(_drain, process.stderr, err, "stderr", on_output)
            if await _exit_or_kill(process, kill_event):
                killed = True
                await _terminate(process, pgid, kill_grace)
            if capture:
                with trio.move_on_after(_PIPE_LINGER_SECONDS):
                    await out.eof.wait()
                    await err.eof.wait()
            readers.cancel_scope.cancel()
    except BaseException:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await _terminate(process, pgid, kill_grace)
        raise
    finally:
        with trio.CancelScope(shield=True):
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
    code = process.returncode
    return Outcome(
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        killed=killed,
        start_error=None,
        stdout_dropped=out.dropped,
        stderr_dropped=err.dropped,
    )
