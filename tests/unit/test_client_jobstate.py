"""The client job state machine against client-knife.md §A.4 (with the appendix fixes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.client.jobstate import (
    Job,
    JobState,
    KillProcess,
    Log,
    ReleaseLock,
    Reply,
    StartProcess,
    file_ok,
)
from appliance.client.whitelist import resolve
from appliance.core import wire

J = "0123456789abcdef0123456789abcdef"
K = "fedcba9876543210fedcba9876543210"


@dataclass(frozen=True)
class Entry:
    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None = None


WHITELIST = [
    Entry("chef-client", "chef-client -l info", lock=True),
    Entry("hello", "echo hello"),
    Entry(re.compile(r"echo (\w+)"), r"echo \1 world"),
]


class Checks:
    """The outside world a commit asks about, recording the calls."""

    def __init__(self, *, users=("alice", "bob"), dirs=("/tmp", "/srv"), lock_free=True):
        self.users, self.dirs, self.free = set(users), set(dirs), lock_free
        self.calls: list[tuple[str, object]] = []

    def kwargs(self):
        return {
            "resolve": lambda c: self._call("resolve", c, resolve(WHITELIST, c)),
            "user_exists": lambda u: self._call("user", u, u in self.users),
            "dir_exists": lambda d: self._call("dir", d, d in self.dirs),
            "lock_free": lambda lock: self._call("lock", lock, self.free),
        }

    def _call(self, name, arg, result):
        self.calls.append((name, arg))
        return result


def commit_msg(job_id=J, command="hello", **options):
    msg = {"sequence": 1, "timestamp": "x", "type": "commit", "server": "s", "capture": False}
    if job_id is not None:
        msg["job_id"] = job_id
    if command is not None:
        msg["command"] = command
    return msg | options


def run_msg(job_id=J):
    return {"type": "run"} | ({"job_id": job_id} if job_id is not None else {})


def replies(actions):
    return [(a.type, a.job_id) for a in actions if isinstance(a, Reply)]


def logs(actions, level=None):
    return [a.text for a in actions if isinstance(a, Log) and level in (None, a.level)]


def make(state, job_id=J, command="hello", checks=None, **options) -> JobState:
    js = JobState()
    if state in ("committed", "running"):
        acts = js.on_commit(commit_msg(job_id, command, **options), **(checks or Checks()).kwargs())
        assert replies(acts) == [("ack_commit", job_id)]
    if state == "running":
        acts = js.on_run(run_msg(job_id))
        assert any(isinstance(a, StartProcess) for a in acts)
        assert replies(js.on_started(job_id)) == [("ack_run", job_id)]
    assert js.state == state
    return js


# One case per row of the §A.4 table (the "null" bug of row 2 fixed) ----------------------------
COMMIT_ROWS = [
    ("idle", commit_msg(job_id=None), {}, [("nack_commit", None)], "idle"),
    ("idle", commit_msg(command=None), {}, [("nack_commit", J)], "idle"),
    ("committed", commit_msg(), {}, [("nack_commit", J)], "committed"),
    ("committed", commit_msg(K), {}, [("nack_commit", K)], "committed"),
    ("running", commit_msg(K), {}, [("nack_commit", K)], "running"),
    ("idle", commit_msg(command="rm -rf /"), {}, [("nack_commit", J)], "idle"),
    ("idle", commit_msg(command="chef-client"), {"lock_free": False}, [("nack_commit", J)], "idle"),
    ("idle", commit_msg(command="chef-client"), {}, [("ack_commit", J)], "committed"),
    ("idle", commit_msg(user="mallory"), {}, [("nack_commit", J)], "idle"),
    ("idle", commit_msg(dir="/nonexistent"), {}, [("nack_commit", J)], "idle"),
    ("idle", commit_msg(file="plain text"), {}, [("nack_commit", J)], "idle"),
    (
        "idle",
        commit_msg(user="alice", dir="/srv", file="raw:x"),
        {},
        [("ack_commit", J)],
        "committed",
    ),
    ("idle", commit_msg(), {}, [("ack_commit", J)], "committed"),
]


@pytest.mark.parametrize(("state", "msg", "checks", "expected", "after"), COMMIT_ROWS)
def test_commit_rows(state, msg, checks, expected, after):
    js = make(state)
    before = js.job
    acts = js.on_commit(msg, **Checks(**checks).kwargs())
    assert replies(acts) == expected
    assert js.state == after
    if after == state:
        assert js.job is before  # refused: the current job is untouched
    else:
        assert js.job.id == J
    if expected[0][0] == "nack_commit":
        assert logs(acts, "warning") or logs(acts, "error")  # the reason is logged


RUN_ROWS = [
    ("idle", None, [("nack_run", None)], "idle"),
    ("committed", J, [], "running"),  # ack_run follows on_started
    ("committed", K, [("nack_run", K)], "committed"),
    ("idle", J, [("nack_run", J)], "idle"),
    ("running", J, [("nack_run", J)], "running"),
    ("running", K, [("nack_run", K)], "running"),
]


@pytest.mark.parametrize(("state", "job_id", "expected", "after"), RUN_ROWS)
def test_run_rows(state, job_id, expected, after):
    js = make(state)
    acts = js.on_run(run_msg(job_id))
    assert replies(acts) == expected
    assert js.state == after
    assert any(isinstance(a, StartProcess) for a in acts) == (after != state)


@pytest.mark.parametrize(
    ("state", "expected"), [("idle", [("aborted", None)]), ("committed", [("aborted", J)])]
)
@pytest.mark.parametrize("msg_job_id", [None, K, J])
def test_abort_rows_idle_and_committed(state, expected, msg_job_id):
    js = make(state)
    acts = js.on_abort({"type": "abort", "job_id": msg_job_id})
    assert replies(acts) == expected
    assert js.state == "idle" and js.job is None
    assert "Received abort" in logs(acts)


@pytest.mark.parametrize(
    ("exit_code", "kind"), [(0, "succeeded"), (1, "failed"), (255, "failed"), (None, "failed")]
)
def test_process_end_rows(exit_code, kind):
    js = make("running")
    acts = js.on_finished(J, exit_code, b"out", b"err")
    assert replies(acts) == [(kind, J)]
    # no capture: only how it ended (our client's addition: the job's node_details)
    ended = {} if exit_code is None else {"exit_status": exit_code}
    assert [a.extra for a in acts if isinstance(a, Reply)] == [ended]
    assert f"Job {J} completed with exit code {exit_code}" in logs(acts)
    assert js.state == "idle" and js.heartbeat_fields() == ("idle", None)


# Commit details ------------------------------------------------------------------------------
def test_run_starts_the_committed_job_then_acks_after_start():
    js = make("committed", command="echo hi", user="alice", dir="/tmp", env={"A": "1"})
    acts = js.on_run(run_msg(J))
    assert replies(acts) == []
    (start,) = [a for a in acts if isinstance(a, StartProcess)]
    assert start.job == Job(
        J, "echo hi", "echo hi world", None, "alice", "/tmp", {"A": "1"}, None, False
    )
    assert js.heartbeat_fields() == ("running", J)
    assert replies(js.on_started(J)) == [("ack_run", J)]
    assert js.on_started(J) == []  # once only
    assert js.on_started(K) == []


def test_a_refused_commit_never_replaces_the_committed_jobs_options():
    js = make("committed", user="alice", dir="/tmp", env={"A": "1"}, capture=True, file="raw:1")
    original = js.job
    for msg in (
        commit_msg(J, user="bob", dir="/srv", env={"B": "2"}, capture=False, file="raw:2"),
        commit_msg(K, command="echo other", user="bob", dir="/srv", env={"B": "2"}),
    ):
        assert replies(js.on_commit(msg, **Checks().kwargs())) == [("nack_commit", msg["job_id"])]
    assert js.job is original
    (start,) = [a for a in js.on_run(run_msg(J)) if isinstance(a, StartProcess)]
    assert (start.job.user, start.job.dir, start.job.env, start.job.file, start.job.capture) == (
        "alice",
        "/tmp",
        {"A": "1"},
        "raw:1",
        True,
    )


def test_all_three_checks_run_and_each_reason_is_logged():
    checks = Checks(lock_free=False)
    js = JobState()
    msg = commit_msg(command="chef-client", user="mallory", dir="/nope", file="base64:!!")
    acts = js.on_commit(msg, **checks.kwargs())
    assert replies(acts) == [("nack_commit", J)]
    errors = logs(acts, "error")
    assert len(errors) == 3
    assert any("mallory" in e for e in errors) and any("/nope" in e for e in errors)
    assert any("file" in e for e in errors)
    assert ("lock", True) not in checks.calls  # a refused commit never takes the lock
    assert js.state == "idle"


def test_falsy_options_are_as_good_as_absent():
    js = JobState()
    msg = commit_msg(user="", dir=None, env={}, file="", capture=False)
    checks = Checks()
    assert replies(js.on_commit(msg, **checks.kwargs())) == [("ack_commit", J)]
    assert [c for c, _ in checks.calls] == ["resolve"]
    job = js.job
    assert (job.user, job.dir, job.env, job.file, job.capture) == (None, None, None, None, False)


@pytest.mark.parametrize("env", [{"A": 1}, ["A"], "A=1", {"A": None}])
def test_env_that_is_not_strings_is_refused(env):
    js = JobState()
    acts = js.on_commit(commit_msg(env=env), **Checks().kwargs())
    assert replies(acts) == [("nack_commit", J)]
    assert any("env" in text for text in logs(acts, "error"))


@pytest.mark.parametrize("user", [7, ["alice"]])
def test_user_that_is_not_a_string_is_refused(user):
    js = JobState()
    assert replies(js.on_commit(commit_msg(user=user), **Checks().kwargs())) == [("nack_commit", J)]


def test_commit_logs_the_original_lines():
    acts = JobState().on_commit(commit_msg(command="echo hi"), **Checks().kwargs())
    assert logs(acts)[0] == f"Received commit {J}"
    assert f"Job {J}: whitelist 'echo hi' to 'echo hi world'" in logs(acts)


# Locks ---------------------------------------------------------------------------------------
def test_lock_taken_acks_and_is_released_just_before_the_start():
    checks = Checks()
    js = JobState()
    acts = js.on_commit(commit_msg(command="chef-client"), **checks.kwargs())
    assert replies(acts) == [("ack_commit", J)]  # the original sent nothing at all
    assert checks.calls[-1] == ("lock", True)
    assert js.job.lock is True
    acts = js.on_run(run_msg(J))
    kinds = [type(a) for a in acts if not isinstance(a, Log)]
    assert kinds == [ReleaseLock, StartProcess]
    assert acts[-2] == ReleaseLock(True)


def test_lock_held_nacks_and_stays_idle():
    js = JobState()
    acts = js.on_commit(commit_msg(command="chef-client"), **Checks(lock_free=False).kwargs())
    assert replies(acts) == [("nack_commit", J)]
    assert any("lock" in text for text in logs(acts, "warning"))
    assert js.state == "idle" and not any(isinstance(a, ReleaseLock) for a in acts)


def test_abort_while_committed_releases_the_lock():
    js = make("committed", command="chef-client")
    acts = js.on_abort({"type": "abort"})
    assert ReleaseLock(True) in acts
    assert replies(acts) == [("aborted", J)]


def test_no_lock_no_release():
    js = make("committed")
    assert not any(isinstance(a, ReleaseLock) for a in js.on_run(run_msg(J)))


# Abort while running -------------------------------------------------------------------------
def test_abort_while_running_kills_then_answers_aborted_once_the_process_is_gone():
    js = make("running")
    acts = js.on_abort({"type": "abort", "job_id": K})
    assert KillProcess(J) in acts and replies(acts) == []
    # While the process dies, the client is still busy with J.
    assert js.heartbeat_fields() == ("running", J)
    assert replies(js.on_commit(commit_msg(K), **Checks().kwargs())) == [("nack_commit", K)]
    assert replies(js.on_run(run_msg(J))) == [("nack_run", J)]
    again = js.on_abort({"type": "abort"})
    assert replies(again) == [] and not any(isinstance(a, KillProcess) for a in again)
    # Killed by TERM: aborted, not failed.
    acts = js.on_finished(J, None, b"partial", b"")
    assert replies(acts) == [("aborted", J)]
    assert js.state == "idle"
    assert replies(js.on_abort({"type": "abort"})) == [("aborted", None)]


def test_abort_before_the_start_is_reported_sends_no_ack_run():
    js = make("committed")
    js.on_run(run_msg(J))
    assert KillProcess(J) in js.on_abort({"type": "abort"})
    assert js.on_started(J) == []
    assert replies(js.on_finished(J, 0, b"", b"")) == [("aborted", J)]


def test_late_finish_for_a_job_no_longer_current_sends_nothing():
    js = make("running")
    js.on_abort({"type": "abort"})
    js.on_finished(J, None, b"", b"")
    make_commit = js.on_commit(commit_msg(K), **Checks().kwargs())
    assert replies(make_commit) == [("ack_commit", K)]
    assert replies(js.on_finished(J, 0, b"", b"")) == []
    assert js.state == "committed" and js.job.id == K
    js.on_run(run_msg(K))
    assert replies(js.on_finished(J, 1, b"", b"")) == []
    assert js.heartbeat_fields() == ("running", K)


# Start failures ------------------------------------------------------------------------------
def test_start_failure_ends_failed_with_the_reason_as_stderr():
    js = make("committed", capture=True)
    js.on_run(run_msg(J))
    acts = js.on_finished(J, None, b"", b"", start_failed="No such file or directory: 'nope'")
    assert replies(acts) == [("ack_run", J), ("failed", J)]
    assert acts[-1].extra == {
        "stdout": "",
        "stderr": "No such file or directory: 'nope'",
        "reason": "could not start: No such file or directory: 'nope'",
    }
    assert any("could not be started" in text for text in logs(acts, "error"))
    assert js.state == "idle"


def test_start_failure_without_capture_has_no_output_fields():
    js = make("running")  # already acked: no second ack_run
    acts = js.on_finished(J, None, b"", b"", start_failed="boom")
    assert replies(acts) == [("failed", J)]
    assert acts[-1].extra == {"reason": "could not start: boom"}  # no output fields


def test_result_before_on_started_is_preceded_by_ack_run():
    js = make("committed")
    js.on_run(run_msg(J))
    assert replies(js.on_finished(J, 0, b"", b"")) == [("ack_run", J), ("succeeded", J)]


# Capture -------------------------------------------------------------------------------------
def test_capture_sends_both_streams_as_strings():
    js = make("running", capture=True)
    acts = js.on_finished(J, 0, b"hello\n", b"")
    assert acts[-1] == Reply("succeeded", J, {"stdout": "hello\n", "stderr": "", "exit_status": 0})


def test_capture_non_utf8_output_is_decoded_with_replacement_characters():
    js = make("running", capture=True)
    acts = js.on_finished(J, 2, b"ok \xff\xfe caf\xc3\xa9", b"\xc3")
    assert acts[-1] == Reply(
        "failed", J, {"stdout": "ok \ufffd\ufffd caf\u00e9", "stderr": "\ufffd", "exit_status": 2}
    )
    wire.encode_body(acts[-1].extra)  # encodable


def _exact_size(reply: Reply) -> int:
    body = wire.node_message(
        node="node-" + "n" * 40,
        client="host",
        org="acme",
        type=reply.type,
        sequence=10**12,
        t=1_700_000_000.0,
        incarnation="12345678-1234-4234-8234-123456789012",
        job_id=reply.job_id,
        **reply.extra,
    )
    return len(wire.encode_body(body))


MARKER = re.compile(r"\n\[\.\.\. output truncated by pushy: (\d+) bytes not sent \.\.\.\]\Z")


def _finish(out: bytes, err: bytes, limit: int = 63000, encoded_size=_exact_size):
    js = JobState(max_body_size=limit, encoded_size=encoded_size)
    js.on_commit(commit_msg(capture=True), **Checks().kwargs())
    js.on_run(run_msg(J))
    js.on_started(J)
    acts = js.on_finished(J, 0, out, err)
    return acts, acts[-1]


def _kept_prefix(text: str, raw: bytes) -> int:
    """Check the text is the decoded prefix plus the marker; return the dropped byte count."""
    match = MARKER.search(text)
    assert match, text[-100:]
    dropped = int(match.group(1))
    assert text[: match.start()] == raw[: len(raw) - dropped].decode("utf-8", "replace")
    return dropped


def test_truncation_fits_and_both_streams_carry_the_marker():
    # Escapes (\n, \x01 -> 6 bytes), multi-byte characters and invalid bytes all grow in JSON.
    out = (b"line\n\x01" + "\u00e9\u4e2d".encode() + b"\xff") * 8000
    err = b"e" * 40000
    acts, reply = _finish(out, err)
    assert _exact_size(reply) <= 63000
    assert _exact_size(reply) > 63000 - 200  # cut to fit, not dropped wholesale
    assert 0 < _kept_prefix(reply.extra["stdout"], out) < len(out)
    assert 0 < _kept_prefix(reply.extra["stderr"], err) < len(err)
    assert "truncated" in reply.extra["stdout"] and "truncated" in reply.extra["stderr"]
    total = len(out) + len(err)
    assert f"Command output {total} is larger than the Client MAX_BODY_SIZE of 63000" in logs(
        acts, "warning"
    )


def test_truncation_cuts_only_the_big_stream():
    out, err = b"x" * 200000, b"small error\n"
    _, reply = _finish(out, err)
    assert reply.extra["stderr"] == "small error\n"
    assert _kept_prefix(reply.extra["stdout"], out) > 0
    assert _exact_size(reply) <= 63000


@pytest.mark.parametrize("limit", range(63000, 63004))  # every budget modulo 4
def test_truncation_never_splits_a_utf8_character(limit):
    out = "\U0001f600".encode() * 20000  # 4 bytes each; a cut one would decode to U+FFFD
    _, reply = _finish(out, b"", limit=limit)
    dropped = _kept_prefix(reply.extra["stdout"], out)
    assert dropped % 4 == 0 and "\ufffd" not in reply.extra["stdout"]


def test_small_output_is_untouched():
    out, err = b"a" * 30000, b"b" * 30000
    acts, reply = _finish(out, err)
    assert reply.extra == {"stdout": "a" * 30000, "stderr": "b" * 30000, "exit_status": 0}
    assert logs(acts, "warning") == []


def test_default_size_estimate_keeps_room_for_the_envelope():
    _, reply = _finish(b"o" * 70000, b"", encoded_size=None)
    assert "truncated" in reply.extra["stdout"]
    assert _exact_size(reply) <= 63000 - 500


def test_limit_too_small_for_any_output_sends_none():
    acts, reply = _finish(b"o" * 1000, b"e" * 1000, limit=300)
    assert reply == Reply("succeeded", J, {"exit_status": 0})  # how it ended still goes
    assert any("does not fit" in text for text in logs(acts, "warning"))


@settings(max_examples=60, deadline=None)
@given(
    out=st.binary(max_size=3000),
    err=st.binary(max_size=3000),
    limit=st.integers(min_value=400, max_value=5000),
)
def test_result_never_exceeds_the_limit(out, err, limit):
    _, reply = _finish(out, err, limit=limit)
    assert _exact_size(reply) <= limit  # the exit status included
    assert reply.extra["exit_status"] == 0
    if "stdout" in reply.extra:
        for key, raw in (("stdout", out), ("stderr", err)):
            text = reply.extra[key]
            if text != raw.decode("utf-8", "replace"):
                _kept_prefix(text, raw)


# Heartbeats and files ------------------------------------------------------------------------
def test_heartbeat_fields_follow_the_state():
    assert make("idle").heartbeat_fields() == ("idle", None)
    assert make("committed").heartbeat_fields() == ("committed", J)
    assert make("running").heartbeat_fields() == ("running", J)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("raw:", True),
        ("raw:a:b:c", True),
        ("base64:aGVsbG8=", True),
        ("base64:aGVs\nbG8=\n", True),  # Ruby's encode64 line breaks
        ("base64:aGVsbG8", True),  # missing padding
        ("base64:", True),
        ("base64:a", False),
        ("base64:aGVs*bG8=", False),
        ("plain", False),
        ("RAW:x", False),
        ("", False),
    ],
)
def test_file_ok(value, ok):
    assert file_ok(value) is ok
