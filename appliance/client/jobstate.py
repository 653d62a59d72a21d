"""The node client's job state machine (client-knife.md §A.4), shaped like h11.

Handlers take an incoming message (or a report from the runner) and return a list of
actions; they never start processes, take locks or read the clock themselves. The checks a
commit needs from the outside world (whitelist, user, dir, lock) are passed in as callables.

Fixes to the original (client-knife.md appendix), decided here:

* a refused commit never touches the committed job (#2): options are read only once the
  commit has passed every check;
* a commit with a job id but no command is nacked WITH that id (the original sent null);
* a whitelist lock that is taken gives ``ack_commit`` (#3). ``lock_free`` is expected to try
  to take the lock without blocking and say whether we now hold it; the machine emits
  ``ReleaseLock`` when the job leaves ``committed`` (to ``running`` just before the start,
  so that e.g. chef-client can take its own lock, or to ``idle`` on abort). The lock is
  checked last, so a commit refused for another reason never takes it;
* nacks carry no reason on the wire; the reason is logged (#4);
* an ``env`` that is not an object of strings is refused at commit (the original crashed
  at run time and stayed ``running``), and so is one the kernel would refuse at exec: an
  empty name, ``=`` or NUL in a name, an entry over ``MAX_ENV_ENTRY_BYTES`` or a whole over
  ``MAX_ENV_BYTES`` (issue 7: refused clearly, nothing runs). A NUL in a *value* is left
  to exec, which refuses it: the job ends ``failed`` with the reason, nothing runs;
* ``dir`` must be an absolute path (a relative one would depend on the client's own working
  directory) naming an existing directory; symlinks and ``..`` are resolved by the kernel as
  ``cd`` would (the original's rule), so a symlink to a file or nowhere is refused too;
* a regex whitelist entry whose capture would put shell syntax into the command line is
  refused (``whitelist.UnsafeCapture``);
* the command and other job-supplied text are logged with ``repr`` quoting, so a newline in
  them cannot forge lines in the client's log;
* a process that cannot be started ends ``failed`` (#5), with the reason as stderr when
  capture is on, and is preceded by ``ack_run`` so the server records a failure rather
  than a crash (server-protocol.md §5.5: ``failed`` from a ``ready`` node is ``crashed``).
  The same holds for any result that arrives before ``on_started``;
* abort while running: the state stays ``running`` (heartbeats say so, commits and runs are
  refused) until the runner reports the process gone; then ``aborted`` with the job id and
  ``idle``. Further aborts meanwhile only log: the one ``aborted`` answers them all;
* captured output that would make the message larger than ``max_body_size`` is cut, each
  cut stream ending with a visible marker, instead of being dropped.

Size of a message: the machine does not know the envelope (node, org, sequence, ...). The
caller may pass ``encoded_size(reply) -> int`` (the JSON byte size of the message it would
send for that reply); by default the size of ``{"type", "job_id", **extra}`` plus
``ENVELOPE_ALLOWANCE`` bytes, which covers node, org and host names of up to 255 bytes each.
JSON strings add their sizes, so the fit is computed once and checked once at the end.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from appliance.client.whitelist import Resolved, UnsafeCapture

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "ENVELOPE_ALLOWANCE",
    "MAX_ENV_BYTES",
    "MAX_ENV_ENTRY_BYTES",
    "Action",
    "Job",
    "JobState",
    "KillProcess",
    "Log",
    "ReleaseLock",
    "Reply",
    "StartProcess",
    "file_ok",
]

DEFAULT_MAX_BODY_SIZE = 63000
ENVELOPE_ALLOWANCE = 1024
# Linux refuses (E2BIG) one environment string over 128 KiB; leave room for the
# CHEF_PUSH_ENV_ prefix. The whole job env stays far below the usual 2 MiB ARG_MAX.
MAX_ENV_ENTRY_BYTES = 128 * 1024 - 64
MAX_ENV_BYTES = 1024 * 1024

State = Literal["idle", "committed", "running"]


@dataclass(frozen=True)
class Job:
    id: str
    command: str
    command_line: str
    lock: bool | str | None
    user: str | None
    dir: str | None
    env: dict[str, str] | None
    file: str | None
    capture: bool


@dataclass(frozen=True)
class Reply:
    """A message to send: ``type`` and ``job_id``; ``extra`` holds stdout/stderr if captured."""

    type: str
    job_id: str | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StartProcess:
    """Start the job; report back with ``on_started`` then ``on_finished``."""

    job: Job


@dataclass(frozen=True)
class KillProcess:
    """TERM the job's process group, KILL after 3 s; then report ``on_finished``."""

    job_id: str


@dataclass(frozen=True)
class ReleaseLock:
    """Release the whitelist lock taken by ``lock_free`` for this job."""

    lock: bool | str


@dataclass(frozen=True)
class Log:
    level: str  # "debug" | "info" | "warning" | "error"
    text: str


Action = Reply | StartProcess | KillProcess | ReleaseLock | Log


class JobState:
    def __init__(
        self,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        encoded_size: Callable[[Reply], int] | None = None,
    ) -> None:
        self.state: State = "idle"
        self.job: Job | None = None
        self.max_body_size = max_body_size
        self._encoded_size = encoded_size or _default_encoded_size
        self._acked_run = False
        self._aborting = False

    # Heartbeats ------------------------------------------------------------------------------
    def heartbeat_fields(self) -> tuple[str, str | None]:
        """``(job_state, job_id)`` for the next heartbeat."""
        return self.state, self.job.id if self.job is not None else None

    # Server messages -------------------------------------------------------------------------
    def on_commit(
        self,
        msg: dict[str, Any],
        *,
        resolve: Callable[[str], Resolved | None],
        user_exists: Callable[[str], bool],
        dir_exists: Callable[[str], bool],
        lock_free: Callable[[bool | str], bool],
    ) -> list[Action]:
        job_id = _job_id(msg)
        if job_id is None:
            return _nack("nack_commit", None, "Commit without a job id")
        actions: list[Action] = [Log("info", f"Received commit {job_id}")]
        command = msg.get("command")
        if not isinstance(command, str) or not command:
            return [*actions, *_nack("nack_commit", job_id, f"Commit {job_id} has no command")]
        if self.state != "idle":
            assert self.job is not None
            reason = f"Commit {job_id} refused: job {self.job.id} is {self.state}"
            return [*actions, *_nack("nack_commit", job_id, reason)]
        try:
            resolved = resolve(command)
        except UnsafeCapture as exc:
            reason = f"Commit {job_id} refused: command {command!r} is unsafe: {exc}"
            return [*actions, *_nack("nack_commit", job_id, reason)]
        if resolved is None:
            reason = f"Commit {job_id} refused: command {command!r} is not in the whitelist"
            return [*actions, *_nack("nack_commit", job_id, reason)]
        actions.append(
            Log("info", f"Job {job_id}: whitelist {command!r} to {resolved.command_line!r}")
        )

        user, dir_, env, file = (_truthy(msg, k) for k in ("user", "dir", "env", "file"))
        problems: list[str] = []
        if user is not None and not (isinstance(user, str) and user_exists(user)):
            problems.append(f"user {user!r} does not exist")
        if dir_ is not None:
            if not isinstance(dir_, str) or "\0" in dir_:
                problems.append(f"dir {dir_!r} is not a path")
            elif not dir_.startswith("/"):
                problems.append(f"dir {dir_!r} is not an absolute path")
            elif not dir_exists(dir_):
                problems.append(f"dir {dir_!r} does not exist or is not a directory")
        if file is not None and not (isinstance(file, str) and file_ok(file)):
            problems.append("file is not 'raw:...' or valid 'base64:...'")
        env_problem = None if env is None else _env_problem(env)
        if env_problem is not None:
            problems.append(env_problem)
        if problems:
            actions += [Log("error", f"Commit {job_id} refused: {p}") for p in problems]
            return [*actions, Reply("nack_commit", job_id, {"reason": "; ".join(problems)})]
        if resolved.lock and not lock_free(resolved.lock):
            reason = f"Commit {job_id} refused: lock {resolved.lock!r} is held by another process"
            return [*actions, *_nack("nack_commit", job_id, reason)]

        self.job = Job(
            id=job_id,
            command=command,
            command_line=resolved.command_line,
            lock=resolved.lock,
            user=user,
            dir=dir_,
            env=dict(env) if env is not None else None,
            file=file,
            capture=msg.get("capture") not in (None, False),  # Ruby truthiness
        )
        self.state = "committed"
        return [*actions, Reply("ack_commit", job_id)]

    def on_run(self, msg: dict[str, Any]) -> list[Action]:
        job_id = _job_id(msg)
        if job_id is None:
            return _nack("nack_run", None, "Run without a job id")
        actions: list[Action] = [Log("info", f"Received run {job_id}")]
        if self.state != "committed" or self.job is None or self.job.id != job_id:
            current = f"{self.state} {self.job.id}" if self.job is not None else self.state
            reason = f"Run {job_id} refused: the client is {current}"
            return [*actions, *_nack("nack_run", job_id, reason)]
        self.state = "running"
        self._acked_run = False
        self._aborting = False
        if self.job.lock:
            actions.append(ReleaseLock(self.job.lock))
        return [*actions, StartProcess(self.job)]

    def on_abort(self, msg: dict[str, Any]) -> list[Action]:
        """Any state; the message's job id is ignored (the server's abort carries none)."""
        actions: list[Action] = [Log("info", "Received abort")]
        if self.state == "idle" or self.job is None:
            return [*actions, Reply("aborted", None)]
        job = self.job
        if self.state == "committed":
            self._to_idle()
            if job.lock:
                actions.append(ReleaseLock(job.lock))
            return [*actions, Reply("aborted", job.id)]
        if self._aborting:
            return [*actions, Log("info", f"Job {job.id} is already being killed")]
        self._aborting = True
        return [*actions, Log("info", f"Killing job {job.id}"), KillProcess(job.id)]

    # Runner reports --------------------------------------------------------------------------
    def on_started(self, job_id: str) -> list[Action]:
        """The child process exists: now ``ack_run`` (the original's order)."""
        if not self._is_current(job_id) or self._aborting or self._acked_run:
            return []
        self._acked_run = True
        return [Reply("ack_run", job_id)]

    def on_finished(
        self,
        job_id: str,
        exit_code: int | None,
        stdout: bytes,
        stderr: bytes,
        *,
        start_failed: str | None = None,
        signal: str | None = None,
        streamed: bool = False,
    ) -> list[Action]:
        """The process is gone (``exit_code`` None: killed by ``signal``), or never started.
        The result says how it ended (``exit_status``, ``signal`` or the start's ``reason``:
        new in this client, shown in the job's ``node_details``). ``streamed``: the output
        went out live (``liveoutput``), so the result carries none (but a start's error)."""
        if not self._is_current(job_id):
            return [Log("debug", f"Ignoring the end of job {job_id}: it is no longer current")]
        assert self.job is not None
        job = self.job
        aborting, acked = self._aborting, self._acked_run
        self._to_idle()
        if aborting:
            return [Log("info", f"Job {job_id} aborted"), Reply("aborted", job_id)]
        actions: list[Action] = [] if acked else [Reply("ack_run", job_id)]
        details: dict[str, Any]
        if start_failed is not None:
            actions.append(Log("error", f"Job {job_id} could not be started: {start_failed}"))
            kind, stdout, stderr = "failed", b"", start_failed.encode("utf-8", "replace")
            details = {"reason": f"could not start: {start_failed}"}
        else:
            actions.append(Log("info", f"Job {job_id} completed with exit code {exit_code}"))
            kind = "succeeded" if exit_code == 0 else "failed"
            details = (
                {"signal": signal}
                if signal is not None
                else {"exit_status": exit_code}
                if exit_code is not None
                else {}
            )
        extra: dict[str, Any] = {}
        if job.capture and (not streamed or start_failed is not None):  # no process: no stream
            extra, logs = self._output(kind, job_id, stdout, stderr, details)
            actions += logs
        return [*actions, Reply(kind, job_id, {**extra, **details})]

    # Helpers ---------------------------------------------------------------------------------
    def _is_current(self, job_id: str) -> bool:
        return self.state == "running" and self.job is not None and self.job.id == job_id

    def _to_idle(self) -> None:
        self.state = "idle"
        self.job = None
        self._acked_run = False
        self._aborting = False

    def _output(
        self, kind: str, job_id: str, out_raw: bytes, err_raw: bytes, details: dict[str, Any]
    ) -> tuple[dict[str, str], list[Action]]:
        """stdout/stderr as strings, cut (with a marker) so the message, ``details`` included,
        fits max_body_size."""
        encoded = self._encoded_size
        limit = self.max_body_size - (
            encoded(Reply(kind, job_id, details)) - encoded(Reply(kind, job_id))
        )
        room = limit - self._encoded_size(Reply(kind, job_id, {"stdout": "", "stderr": ""}))
        # A JSON string is at least as long as the bytes it came from, so raw sizes over the
        # room mean cutting without decoding everything first.
        if len(out_raw) + len(err_raw) <= room:
            extra = {"stdout": _decode(out_raw), "stderr": _decode(err_raw)}
            if self._encoded_size(Reply(kind, job_id, extra)) <= limit:
                return extra, []
        total = len(out_raw) + len(err_raw)
        logs: list[Action] = [
            Log(
                "warning",
                f"Command output {total} is larger than the Client MAX_BODY_SIZE of "
                f"{self.max_body_size}",
            )
        ]
        need = [_json_len(_decode(r)) if len(r) <= room else room + 1 for r in (out_raw, err_raw)]
        half = room // 2
        if need[0] <= half:
            shares = [need[0], room - need[0]]
        elif need[1] <= half:
            shares = [room - need[1], need[1]]
        else:
            shares = [half, room - half]
        parts: list[str] = []
        for raw, size, share in zip((out_raw, err_raw), need, shares, strict=True):
            if size <= share:
                parts.append(_decode(raw))
                continue
            budget = share - _json_len(_marker(len(raw)))
            if budget < 0:
                parts = []
                break
            text, kept = _cut(raw, budget)
            parts.append(text + _marker(len(raw) - kept))
        if parts:
            extra = {"stdout": parts[0], "stderr": parts[1]}
            if self._encoded_size(Reply(kind, job_id, extra)) <= limit:
                return extra, logs
        logs.append(Log("warning", f"Output of job {job_id} does not fit at all: not sent"))
        return {}, logs


def file_ok(value: str) -> bool:
    """``raw:<anything>`` or ``base64:<base64>`` (whitespace such as Ruby's line breaks and
    missing padding are allowed; other characters are not)."""
    if value.startswith("raw:"):
        return True
    if not value.startswith("base64:"):
        return False
    text = "".join(value[len("base64:") :].split())
    if len(text) % 4 == 1:
        return False
    try:
        base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _job_id(msg: dict[str, Any]) -> str | None:
    value = msg.get("job_id")
    return value if isinstance(value, str) and value else None


def _truthy(msg: dict[str, Any], key: str) -> Any:
    """Only truthy option values count (the original's rule): "" or {} is as good as absent."""
    value = msg.get(key)
    return value if value not in (None, False, "", {}) else None


def _env_problem(env: Any) -> str | None:
    """Why ``env`` cannot be a process environment, or None when it can."""
    if not isinstance(env, dict):
        return "env is not an object of strings"
    total = 0
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return f"env is not an object of strings ({str(key)[:100]!r})"
        if not key:
            return "env has an empty variable name"
        if "=" in key or "\0" in key:
            return f"env name {key[:100]!r} contains '=' or NUL"
        try:  # what os.fsencode does with a UTF-8 file system encoding
            size = len(key.encode("utf-8", "surrogateescape"))
            size += len(value.encode("utf-8", "surrogateescape")) + 2
        except UnicodeEncodeError:
            return f"env {key[:100]!r} is not encodable"
        if size > MAX_ENV_ENTRY_BYTES:
            return f"env {key[:100]!r} is {size} bytes (at most {MAX_ENV_ENTRY_BYTES})"
        total += size
    if total > MAX_ENV_BYTES:
        return f"env is {total} bytes (at most {MAX_ENV_BYTES})"
    return None


def _nack(kind: str, job_id: str | None, reason: str) -> list[Action]:
    """A refusal: the reason is logged, and sent with it (``reason``: new in this client, the
    server shows it in the job's ``node_details``; the original sent none, appendix #4)."""
    return [Log("warning", reason), Reply(kind, job_id, {"reason": reason})]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _json_len(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string (escapes included, quotes excluded)."""
    return len(orjson.dumps(text)) - 2


def _marker(dropped: int) -> str:
    return f"\n[... output truncated by pushy: {dropped} bytes not sent ...]"


def _cut(raw: bytes, budget: int) -> tuple[str, int]:
    """The longest prefix of ``raw`` (cut at a UTF-8 character boundary) whose decoded JSON
    form fits ``budget`` bytes; returns the text and how many raw bytes it keeps."""
    lo, hi = 0, min(len(raw), budget)  # a JSON string is never shorter than its bytes
    for _ in range(64):  # binary search: ~17 rounds for 63000 bytes
        if lo >= hi:
            break
        mid = (lo + hi + 1) // 2
        if _json_len(_decode(raw[: _boundary(raw, mid)])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept = _boundary(raw, lo)
    return _decode(raw[:kept]), kept


def _boundary(raw: bytes, n: int) -> int:
    """Move ``n`` back to the start of a UTF-8 sequence (at most 3 continuation bytes)."""
    for _ in range(3):
        if 0 < n < len(raw) and raw[n] & 0xC0 == 0x80:
            n -= 1
    return n


def _default_encoded_size(reply: Reply) -> int:
    body = {"type": reply.type, "job_id": reply.job_id, **reply.extra}
    return len(orjson.dumps(body)) + ENVELOPE_ALLOWANCE
