"""Issue 7, client side: what a node refuses to act on.

* Server messages reach the agent's real receive loops (``Agent._receive_commands`` and
  ``_receive_heartbeats``) as frames made by the server's own signing code
  (``wire.hmac_frames(key, wire.server_message(...))`` as the reactor sends commands,
  ``wire.rsa_frames(key, wire.server_heartbeat(...))`` as it publishes heartbeats). A bad
  signature, or a timestamp more than ``max_message_skew`` away in either direction, is
  ignored: no reply, no job state change, no process, no reconfigure.
* The whitelist cannot be escaped: a regex capture that would put shell syntax into the
  command line is refused (and the characters it may hold are shown to be inert in every
  quoting context by running them through /bin/sh).
* Commit checks: ``env`` names/values the kernel would refuse, and ``dir`` path tricks.
* Job files stay inside ``file_dir`` (ids with ``../``, absolute ids, planted symlinks), and
  the clean-up never follows a symlink the job left behind.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.client import agent as agent_module
from appliance.client import jobfile, runner
from appliance.client.agent import Agent
from appliance.client.channel import Connection
from appliance.client.config import WhitelistEntry
from appliance.client.jobstate import MAX_ENV_ENTRY_BYTES, JobState, Log, Reply
from appliance.client.serverwatch import ServerWatch
from appliance.client.whitelist import UnsafeCapture, resolve
from appliance.core import wire
from appliance.core.keys import generate_rsa
from tests.support import make_agent

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
SESSION_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))  # e.g. another node's session key
JOB = "0123456789abcdef0123456789abcdef"
SKEW = 300
HANG_GUARD = 20


@pytest.fixture(scope="module")
def rsa_keys():
    """(node key, server key, a stranger's key): RSA generation is slow, once per module."""
    return generate_rsa(2048), generate_rsa(2048), generate_rsa(2048)


class FakeSocket:
    """A connected socket as the agent sees it: frames in through a channel, sends recorded."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self.inbox, self._out = trio.open_memory_channel[list[bytes]](1000)

    async def recv_multipart(self) -> list[bytes]:
        return await self._out.receive()  # EndOfChannel once the test closed the inbox

    def send_nowait(self, frames: list[bytes]) -> bool:
        self.sent.append(frames)
        return True

    def close(self) -> None:
        pass

    def bodies(self) -> list[dict]:
        return [orjson.loads(frames[1]) for frames in self.sent]


@pytest.fixture
def node(tmp_path, rsa_keys):
    node_key, server_key, _ = rsa_keys
    agent = make_agent(
        tmp_path,
        node_key,
        file_dir=str(tmp_path / "files"),
        whitelist=(
            WhitelistEntry("mark", f"touch {tmp_path}/ran"),
            WhitelistEntry(re.compile(r"echo (.*)"), r"echo \1 > " + str(tmp_path / "echoed")),
        ),
    )
    conn = Connection(
        config={"max_message_skew": SKEW, "push_jobs": {"heartbeat": {"online_threshold": 2}}},
        session_key=SESSION_KEY,
        server_key=server_key.public_key(),
        incarnation="server-incarnation-1",
        interval=1.0,
        legacy=False,
        dealer=FakeSocket(),
        sub=FakeSocket(),
    )
    agent.conn = conn
    agent.watch = ServerWatch(online_threshold=2, offline_counter=3)
    yield agent, conn, tmp_path
    agent.ctx.destroy(linger=0)


def command(body: dict, *, t: float | None = None, key: bytes = SESSION_KEY) -> list[bytes]:
    """A command-channel message exactly as the server's reactor signs it."""
    return wire.hmac_frames(key, wire.server_message(7, time.time() if t is None else t, body))


def heartbeat(server_key, *, t: float | None = None, incarnation="server-incarnation-1"):
    body = wire.server_heartbeat(3, time.time() if t is None else t, "srv", incarnation)
    return wire.rsa_frames(server_key, body)


async def deliver(agent: Agent, conn: Connection, *messages: list[bytes]) -> None:
    """Feed ``messages`` to the agent's real command loop, then let started jobs finish."""
    async with trio.open_nursery() as nursery:
        agent._nursery = nursery
        for frames in messages:
            conn.dealer.inbox.send_nowait(frames)
        await conn.dealer.inbox.aclose()
        with trio.fail_after(HANG_GUARD), pytest.raises(trio.EndOfChannel):
            await agent._receive_commands(conn)
        with trio.fail_after(HANG_GUARD):
            while agent.jobs.state == "running":
                await trio.sleep(0.01)


async def deliver_heartbeats(agent: Agent, conn: Connection, *messages: list[bytes]) -> None:
    for frames in messages:
        conn.sub.inbox.send_nowait(frames)
    await conn.sub.inbox.aclose()
    with trio.fail_after(HANG_GUARD), pytest.raises(trio.EndOfChannel):
        await agent._receive_heartbeats(conn)


def sent_types(conn: Connection) -> list[tuple[str, str | None]]:
    return [(b["type"], b["job_id"]) for b in conn.dealer.bodies()]


COMMIT = {"type": "commit", "job_id": JOB, "server": "srv", "command": "mark"}
RUN = {"type": "run", "job_id": JOB}


def tampered(frames: list[bytes]) -> list[bytes]:
    """The body changed after signing (the command swapped)."""
    return [frames[0], frames[1].replace(b'"mark"', b'"echo x"')]


def bad_commits(rsa_keys) -> dict[str, list[bytes]]:
    node_key, server_key, stranger = rsa_keys
    good = command(COMMIT)
    raw = good[1]
    return {
        "other-nodes-key": command(COMMIT, key=OTHER_KEY),
        "tampered-body": tampered(good),
        "no-signature": [b"Version:2.0;SigningMethod:hmac_sha256", raw],
        "empty-signature": [b"Version:2.0;SigningMethod:hmac_sha256;Signature:", raw],
        "unknown-method": [good[0].replace(b"hmac_sha256", b"none"), raw],
        "rsa-by-a-stranger": wire.rsa_frames(stranger, orjson.loads(raw)),
        "rsa-by-the-node-itself": wire.rsa_frames(node_key, orjson.loads(raw)),
        "hmac-labelled-rsa": [good[0].replace(b"hmac_sha256", b"rsa2048_sha1"), raw],
        "stale": command(COMMIT, t=time.time() - SKEW - 60),
        "future": command(COMMIT, t=time.time() + SKEW + 60),
        "replayed-a-day-later": command(COMMIT, t=time.time() - 86400),
        "garbage-header": [b"\xff\x00;;::", raw],
    }


# ---------------------------------------------------------------------------------------------
# Server messages on the command channel


async def test_a_valid_commit_and_run_execute(node):
    """The control: the same messages, correctly signed and timed, do run the job."""
    agent, conn, tmp = node
    await deliver(agent, conn, command(COMMIT), command(RUN))
    assert sent_types(conn) == [
        ("ack_commit", JOB),
        ("ack_run", JOB),
        ("succeeded", JOB),
    ]
    assert (tmp / "ran").exists()


@pytest.mark.parametrize(
    "case",
    [
        "other-nodes-key",
        "tampered-body",
        "no-signature",
        "empty-signature",
        "unknown-method",
        "rsa-by-a-stranger",
        "rsa-by-the-node-itself",
        "hmac-labelled-rsa",
        "stale",
        "future",
        "replayed-a-day-later",
        "garbage-header",
    ],
)
async def test_a_bad_commit_is_ignored(node, rsa_keys, case, caplog):
    agent, conn, tmp = node
    frames = bad_commits(rsa_keys)[case]
    await deliver(agent, conn, frames, command(RUN))
    # no ack_commit: the commit never happened, so the valid run is refused
    assert sent_types(conn) == [("nack_run", JOB)]
    assert agent.jobs.state == "idle" and agent.jobs.job is None
    assert not (tmp / "ran").exists() and not (tmp / "echoed").exists()
    assert "Received invalid message" in caplog.text


@pytest.mark.parametrize(
    "case", ["other-nodes-key", "tampered-run", "stale", "future", "no-signature"]
)
async def test_a_run_with_a_bad_signature_or_time_is_not_executed(node, case):
    agent, conn, tmp = node
    good = command(RUN)
    bad = {
        "other-nodes-key": command(RUN, key=OTHER_KEY),
        "tampered-run": [command({"type": "run", "job_id": "f" * 32})[0], good[1]],
        "stale": command(RUN, t=time.time() - SKEW - 5),
        "future": command(RUN, t=time.time() + SKEW + 5),
        "no-signature": [b"Version:2.0;SigningMethod:hmac_sha256", good[1]],
    }[case]
    await deliver(agent, conn, command(COMMIT), bad)
    assert sent_types(conn) == [("ack_commit", JOB)]
    assert agent.jobs.state == "committed" and not agent.kill_events
    assert not (tmp / "ran").exists()
    # the genuine run still works afterwards: the bad one changed nothing
    conn.dealer = FakeSocket()
    await deliver(agent, conn, good)
    assert sent_types(conn) == [("ack_run", JOB), ("succeeded", JOB)]
    assert (tmp / "ran").exists()


async def test_a_forged_abort_does_not_kill_a_running_job(node):
    agent, conn, tmp = node
    agent.config = replace(
        agent.config,
        whitelist=(WhitelistEntry("wait", f"while [ ! -e {tmp}/go ]; do sleep 0.02; done"),),
    )
    async with trio.open_nursery() as nursery:
        agent._nursery = nursery
        for frames in (
            command({**COMMIT, "command": "wait"}),
            command(RUN),
            command({"type": "abort"}, key=OTHER_KEY),
            command({"type": "abort"}, t=time.time() - 3600),
        ):
            conn.dealer.inbox.send_nowait(frames)
        await conn.dealer.inbox.aclose()
        with trio.fail_after(HANG_GUARD), pytest.raises(trio.EndOfChannel):
            await agent._receive_commands(conn)
        assert agent.jobs.state == "running"
        assert not agent.kill_events[JOB].is_set()
        (tmp / "go").touch()
        with trio.fail_after(HANG_GUARD):
            while agent.jobs.state == "running":
                await trio.sleep(0.01)
    assert sent_types(conn) == [("ack_commit", JOB), ("ack_run", JOB), ("succeeded", JOB)]


async def test_the_skew_window_is_the_configs_max_message_skew(node):
    agent, conn, tmp = node
    conn.config["max_message_skew"] = 30
    await deliver(agent, conn, command(COMMIT, t=time.time() - 120))
    assert sent_types(conn) == []  # 120 s old: fine for 300, stale for 30
    conn.dealer = FakeSocket()
    await deliver(agent, conn, command(COMMIT, t=time.time() - 10))
    assert sent_types(conn) == [("ack_commit", JOB)]


# ---------------------------------------------------------------------------------------------
# Server heartbeats on the SUB socket (plain TCP: anyone on the network can publish to it)


async def test_a_valid_server_heartbeat_counts(node, rsa_keys):
    agent, conn, _ = node
    await deliver_heartbeats(agent, conn, heartbeat(rsa_keys[1]))
    assert agent.watch.offline_counter == 0 and agent.reconfigure_due is None


@pytest.mark.parametrize("case", ["stranger", "tampered", "hmac-other", "stale", "future"])
async def test_a_bad_server_heartbeat_is_ignored(node, rsa_keys, case):
    """A forged or replayed heartbeat of another incarnation would force a reconfigure (and
    keep a dead server "online"); it must change nothing."""
    agent, conn, _ = node
    _, server_key, stranger = rsa_keys
    other = "server-incarnation-0"
    good = heartbeat(server_key, incarnation=other)
    frames = {
        "stranger": heartbeat(stranger, incarnation=other),
        "tampered": [good[0], good[1].replace(b"incarnation-0", b"incarnation-9")],
        "hmac-other": wire.hmac_frames(OTHER_KEY, orjson.loads(good[1])),
        "stale": heartbeat(server_key, t=time.time() - SKEW - 60, incarnation=other),
        "future": heartbeat(server_key, t=time.time() + SKEW + 60, incarnation=other),
    }[case]
    await deliver_heartbeats(agent, conn, frames)
    assert agent.watch.offline_counter == 3  # not reset: the server is not proven alive
    assert agent.reconfigure_due is None  # no restart "detected"


async def test_a_genuine_restart_heartbeat_triggers_a_reconfigure(node, rsa_keys):
    agent, conn, _ = node
    await deliver_heartbeats(agent, conn, heartbeat(rsa_keys[1], incarnation="new"))
    assert agent.reconfigure_due is not None


def test_agent_passes_the_configs_skew_both_ways(node, monkeypatch):
    """``Agent._check`` is what both loops use; pinned clock, both edges of the window."""
    agent, conn, _ = node
    now = 1_700_000_000.0
    monkeypatch.setattr(agent_module.time, "time", lambda: now)
    for offset, accepted in ((-SKEW, True), (SKEW, True), (-SKEW - 1, False), (SKEW + 1, False)):
        body = agent._check(conn, command({"type": "ack"}, t=now + offset))
        assert (body is not None) == accepted, offset


# ---------------------------------------------------------------------------------------------
# The whitelist: captures cannot inject shell syntax


ENTRIES = [
    WhitelistEntry(re.compile(r"echo (.*)", re.DOTALL), r"echo \1"),
    WhitelistEntry(re.compile(r"dq (.*)", re.DOTALL), r'echo "\1"'),
    WhitelistEntry(re.compile(r"sq (.*)", re.DOTALL), r"echo '\1'"),
    WhitelistEntry(re.compile(r"whole.*", re.DOTALL), r"echo \0"),
    WhitelistEntry(re.compile(r"named (?P<x>.*)", re.DOTALL), r"echo \k<x>"),
    WhitelistEntry(re.compile(r"unused (.*)", re.DOTALL), "echo fixed"),
    WhitelistEntry("exact; rm -rf /", "echo exact"),
]

PAYLOADS = [
    "x; touch /tmp/pwned",
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "x && touch /tmp/pwned",
    "x || touch /tmp/pwned",
    "x | tee /tmp/pwned",
    "x > /tmp/pwned",
    "x < /etc/shadow",
    "x\ntouch /tmp/pwned",
    "x\rtouch /tmp/pwned",
    "x\x00touch",
    "x & touch /tmp/pwned",
    "' ; touch /tmp/pwned ; '",
    '" ; touch /tmp/pwned ; "',
    "${IFS}touch${IFS}/tmp/pwned",
    "x\\",
    "/etc/*",
    "~root",
    "{a,b}",
    "x\ttab",
    "#comment",
    "!x",
]


@pytest.mark.parametrize("prefix", ["echo ", "dq ", "sq ", "whole ", "named "])
@pytest.mark.parametrize("payload", PAYLOADS, ids=range(len(PAYLOADS)))
def test_a_capture_with_shell_syntax_is_refused(prefix, payload):
    with pytest.raises(UnsafeCapture, match="characters the shell would interpret"):
        resolve(ENTRIES, prefix + payload)


def test_only_substituted_captures_are_checked_and_exact_keys_are_literal():
    assert resolve(ENTRIES, "unused x; rm -rf /").command_line == "echo fixed"
    assert resolve(ENTRIES, "exact; rm -rf /").command_line == "echo exact"
    assert resolve(ENTRIES, "echo hello big world").command_line == "echo hello big world"
    assert resolve(ENTRIES, "echo a-b_c.d/e:f,g=h+i@j%k").command_line == (
        "echo a-b_c.d/e:f,g=h+i@j%k"
    )
    assert resolve(ENTRIES, "echo café").command_line == "echo café"  # non-ASCII letters


def test_a_refused_capture_nacks_the_commit_with_the_reason_logged():
    js = JobState()
    msg = {"type": "commit", "job_id": JOB, "command": "echo x; touch /tmp/pwned"}
    actions = js.on_commit(msg, **_checks())
    (reply,) = [a for a in actions if isinstance(a, Reply)]
    assert (reply.type, reply.job_id) == ("nack_commit", JOB)
    assert "unsafe" in reply.extra["reason"] and "touch" in reply.extra["reason"]
    assert any("unsafe" in a.text and "touch" in a.text for a in actions if isinstance(a, Log))
    assert js.state == "idle"


@pytest.mark.parametrize(
    "options",
    [
        {"command": "nope\n[2026-01-01] INFO: forged line"},
        {"command": "echo x\r\n[forged]"},
        {"command": "run", "user": "nobody\n[forged]"},
        {"command": "run", "dir": "/nope\n[forged]"},
        {"command": "run", "env": {"A=\n[forged]": "x"}},
    ],
)
def test_job_supplied_text_cannot_forge_client_log_lines(options):
    """Regression: the command was logged raw, so a newline in it wrote a fake log line."""
    js = JobState()
    actions = js.on_commit({"type": "commit", "job_id": JOB, **options}, **_checks())
    texts = [a.text for a in actions if isinstance(a, Log)]
    assert any("forged" in t for t in texts), texts
    assert not any("\n" in t or "\r" in t for t in texts), texts


SAFE_TEXT = st.text(
    alphabet=st.sampled_from(list("aZ09_ @%+=:,./-") + ["é", "ж"]), min_size=1, max_size=30
)


@settings(max_examples=40, deadline=None)
@given(text=SAFE_TEXT)
def test_what_a_capture_may_hold_is_inert_in_every_quoting_context(text):
    """The allowed characters mean nothing to /bin/sh: quoted, the text comes back as is;
    unquoted, it is only split into words on spaces."""
    for prefix, quoted in (("dq ", True), ("sq ", True), ("echo ", False)):
        line = resolve(ENTRIES, prefix + text).command_line
        line = line.replace("echo", "printf '%s\\n'", 1)
        out = subprocess.run(
            ["/bin/sh", "-c", line], capture_output=True, timeout=10, env={}, cwd="/"
        )
        assert out.returncode == 0 and out.stderr == b"", (line, out)
        expected = [text] if quoted else text.split()
        assert out.stdout.decode().splitlines() == (expected or [""]), line


# ---------------------------------------------------------------------------------------------
# Commit checks: env and dir


def _checks(**overrides):
    checks = {
        "resolve": lambda c: resolve(ENTRIES + [WhitelistEntry("run", "true")], c),
        "user_exists": jobfile.user_exists,
        "dir_exists": jobfile.dir_exists,
        "lock_free": lambda lock: True,
    }
    checks.update(overrides)
    return checks


def _commit(**options) -> tuple[list, JobState]:
    js = JobState()
    actions = js.on_commit(
        {"type": "commit", "job_id": JOB, "command": "run", **options}, **_checks()
    )
    return actions, js


def _refused(actions, js, needle: str) -> None:
    (reply,) = [a for a in actions if isinstance(a, Reply)]
    assert (reply.type, reply.job_id) == ("nack_commit", JOB)
    assert needle in reply.extra["reason"]  # the server is told why (node_details)
    errors = [a.text for a in actions if isinstance(a, Log) and a.level == "error"]
    assert any(needle in e for e in errors), errors
    assert js.state == "idle" and js.job is None


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"A=B": "x"}, "contains '=' or NUL"),
        ({"=x": "x"}, "contains '=' or NUL"),
        ({"A\x00B": "x"}, "contains '=' or NUL"),
        ({"": "x"}, "empty variable name"),
        ({"A": 1}, "not an object of strings"),
        ({"A": None}, "not an object of strings"),
        ({"A": ["x"]}, "not an object of strings"),
        (["A=1"], "not an object of strings"),
        ({"A": "\ud800"}, "not encodable"),
        ({"HUGE": "x" * (MAX_ENV_ENTRY_BYTES + 1)}, "bytes (at most"),
        ({f"V{i}": "x" * 100_000 for i in range(11)}, "bytes (at most"),
    ],
    ids=[
        "equals-in-name",
        "name-starts-with-equals",
        "nul-in-name",
        "empty-name",
        "int-value",
        "null-value",
        "list-value",
        "not-an-object",
        "lone-surrogate",
        "huge-entry",
        "huge-total",
    ],
)
def test_an_env_the_kernel_would_refuse_is_refused_at_commit(env, needle):
    actions, js = _commit(env=env)
    _refused(actions, js, needle)


def test_unusual_but_valid_env_names_pass():
    env = {"a.b": "1", "my-var": "2", "ÜBER": "3", "X": "", "Y": "x" * 1000}
    actions, js = _commit(env=env)
    assert [a for a in actions if isinstance(a, Reply)] == [Reply("ack_commit", JOB)]
    assert js.job.env == env


def test_dir_path_tricks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "to-dir").symlink_to(real)
    (tmp_path / "to-file").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    refused = {
        "relative": ("real", "not an absolute path"),
        "dot": (".", "not an absolute path"),
        "dotdot": ("../etc", "not an absolute path"),
        "home": ("~root", "not an absolute path"),
        "nul": (f"{real}\x00/x", "is not a path"),
        "number": (7, "is not a path"),
        "a-file": (str(tmp_path / "file"), "does not exist or is not a directory"),
        "symlink-to-file": (str(tmp_path / "to-file"), "does not exist or is not a directory"),
        "dangling": (str(tmp_path / "dangling"), "does not exist or is not a directory"),
        "missing": (str(tmp_path / "nowhere"), "does not exist or is not a directory"),
    }
    for value, needle in refused.values():
        actions, js = _commit(dir=value)
        _refused(actions, js, needle)
    # accepted, as ``cd`` would take them: the kernel resolves ``..`` and symlinks
    for value in (str(real), f"{tmp_path}/real/../real", str(tmp_path / "to-dir")):
        actions, js = _commit(dir=value)
        assert js.state == "committed" and js.job.dir == value, value


async def test_a_dir_that_vanished_after_the_commit_is_a_start_error(tmp_path):
    gone = tmp_path / "gone"
    outcome = await runner.run_job(
        "true", env={}, user=None, dir=str(gone), capture=True, kill_event=trio.Event()
    )
    assert outcome.start_error and "gone" in outcome.start_error


@ROOT_ONLY
async def test_a_dir_the_jobs_user_cannot_enter_is_a_start_error():
    """Popen changes directory before dropping privileges; the runner probes as the user so a
    job never starts inside a directory its user could not have entered (regression)."""
    base = Path(tempfile.mkdtemp(prefix="pushy-sec-"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        open_dir = base / "open"
        open_dir.mkdir(mode=0o755)
        marker = base / "ran"
        with trio.fail_after(HANG_GUARD):
            outcome = await runner.run_job(
                f"pwd > {marker}",
                env={"PATH": "/usr/bin:/bin"},
                user="nobody",
                dir=str(private),
                capture=True,
                kill_event=trio.Event(),
            )
        assert outcome.start_error == (
            f"cannot start the job: user 'nobody' cannot enter dir '{private}'"
        )
        assert not marker.exists()
        with trio.fail_after(HANG_GUARD):
            outcome = await runner.run_job(
                "pwd; id -un",
                env={"PATH": "/usr/bin:/bin"},
                user="nobody",
                dir=str(open_dir),
                capture=True,
                kill_event=trio.Event(),
            )
        assert outcome.start_error is None
        assert outcome.stdout == f"{open_dir}\nnobody\n".encode()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Job files stay inside file_dir


@pytest.mark.parametrize(
    "job_id",
    ["../../etc/x", "/etc/passwd", "..", ".", "a/../../b", "x\x00y", "\n", "é" * 100, "A" * 500],
)
def test_a_job_id_cannot_place_the_file_outside_file_dir(tmp_path, job_id):
    file_dir = tmp_path / "files"
    path = Path(jobfile.write_job_file(str(file_dir), job_id, b"1", uid=None, gid=None))
    assert path.name == "pushy_file"
    assert path.parent.parent == file_dir and path.resolve().parent.parent == file_dir.resolve()
    assert path.parent.name.startswith("pushy-") and len(path.parent.name) < 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files"]


def test_a_planted_symlink_is_never_written_through(tmp_path, monkeypatch):
    """Even if the fresh job directory already held a ``pushy_file`` symlink (a race), the
    write fails instead of following it, and the directory is cleaned up."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "files" / "pushy-planted"

    def mkdtemp(prefix: str, dir: str) -> str:
        planted.mkdir(parents=True, mode=0o700)
        (planted / "pushy_file").symlink_to(victim)
        return str(planted)

    (tmp_path / "files").mkdir(mode=0o755)
    monkeypatch.setattr(jobfile.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(OSError):
        jobfile.write_job_file(str(tmp_path / "files"), JOB, b"evil", uid=None, gid=None)
    assert victim.read_text() == "precious"
    assert not planted.exists()


def test_clean_up_does_not_follow_symlinks_the_job_left(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    path = Path(jobfile.write_job_file(str(tmp_path / "files"), JOB, b"1", uid=None, gid=None))
    # what a hostile job could do in its own directory
    path.unlink()
    path.symlink_to(outside / "precious")
    (path.parent / "dirlink").symlink_to(outside)
    (path.parent / "sub").mkdir()
    (path.parent / "sub" / "deep").symlink_to(outside)
    jobfile.remove_job_file(str(path))
    assert not path.parent.exists()
    assert (outside / "precious").read_text() == "keep"


@ROOT_ONLY
def test_file_dir_is_not_writable_by_the_jobs_user(tmp_path):
    """A job (as its user) cannot plant anything for the next job in file_dir."""
    base = Path(tempfile.mkdtemp(prefix="pushy-sec-"))
    try:
        base.chmod(0o755)
        path = jobfile.write_job_file(
            str(base / "files"),
            JOB,
            b"1",
            uid=pwd.getpwnam("nobody").pw_uid,
            gid=pwd.getpwnam("nobody").pw_gid,
        )
        probe = subprocess.run(
            ["/bin/sh", "-c", f"touch {base}/files/pushy-next; mv {os.path.dirname(path)} x"],
            user="nobody",
            group=pwd.getpwnam("nobody").pw_gid,
            extra_groups=[],
            capture_output=True,
            cwd="/",
            timeout=10,
        )
        assert probe.returncode != 0 and b"Permission denied" in probe.stderr
        assert sorted(os.listdir(base / "files")) == [os.path.basename(os.path.dirname(path))]
        jobfile.remove_job_file(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)
