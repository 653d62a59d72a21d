"""``pushy client`` jobs end to end (client-knife.md §D 10-17): real client processes, started
from config files in the push-jobs cookbook's format, run jobs posted to the real server.

Covered: the whitelist (exact beats regex, regex order, back-references, hash values, locks,
refusals, newline injection), the commit checks (user, dir, lock), env / dir / user / file /
capture (live output: test_live_output.py), exit statuses, abort of a running job (its whole process group is
gone afterwards) and commands that cannot start. One server and one set of clients serve the
whole module; each test uses its own client or leaves it available again.
"""

from __future__ import annotations

import base64
import fcntl
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import ClientFleet, Server, process_group_alive, wait_for

ORG = "jobs"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching users needs root (CI runs as root)"
)

# Ruby: single-quoted strings keep backslashes and `$` as written (only \\ and \' are escapes).
FILEINFO = (
    r'printf "%s\n" "$CHEF_PUSH_JOB_FILE"; '
    r'stat -c "%a %U" "${CHEF_PUSH_JOB_FILE%/*}" "$CHEF_PUSH_JOB_FILE"; '
    r'base64 -w0 "$CHEF_PUSH_JOB_FILE"'
)
IDS = (
    r'echo uid=$(id -u); echo gid=$(id -g); echo "groups=$(id -G)"; '
    r"echo home=$HOME; echo user=$USER; echo logname=$LOGNAME"
)


def whitelist(work: Path) -> str:
    entries = [
        r"/^ex.*$/=>'echo regex'",  # a regex listed before the exact key it also matches
        r"'exact'=>'echo exact'",
        r"/^greet (\w+)$/=>'echo hello \1'",
        r"/^gre+t \w+$/=>'echo second'",
        r"'hashy'=>{:command_line=>'echo from hash'}",
        r"'hello'=>'echo hello from $CHEF_PUSH_NODE_NAME'",
        r"'env'=>'env'",
        r"'pwd'=>'pwd'",
        f"'ids'=>'{IDS}'",
        f"'fileinfo'=>'{FILEINFO}'",
        r"'exit3'=>'echo out; echo err >&2; exit 3'",
        r"'selfkill'=>'kill -9 $$'",
        r"'silent'=>'true'",
        r"""'binary'=>'printf "ok\377\376end"; printf "\377" >&2'""",
        r"""/^big ([0-9]+)$/=>'printf "%0\1d" 0 | tr 0 x; printf "%0\1d" 0 | tr 0 e >&2'""",
        f"/^hold (\\w+)$/=>'echo $$ > {work}/\\1.pid; trap \"\" TERM; sleep 300 & sleep 300'",
        r"'nope'=>'no-such-program-pushy-test'",
        "'locked'=>{:lock=>true, :command_line=>'echo locked ran'}",
        f"'pathlock'=>{{:lock=>'{work}/other.lock', :command_line=>'echo path lock ran'}}",
    ]
    return "{" + ",\n  ".join(entries) + "}"


DAEMON_ENV = {
    "DAEMON_VAR": "from-daemon",
    "CHEF_PUSH_NODE_NAME": "spoofed",
    "CHEF_PUSH_JOB_ID": "spoofed",
    "CHEF_PUSH_JOB_FILE": "/spoofed",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clientjobs")


@pytest.fixture(scope="module")
def public_dir():
    """A directory other users can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pushy-e2e-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(work, public_dir):
    server = Server(work / "state").start()
    fleet = ClientFleet(server, ORG, work / "clients")
    wl = whitelist(work)
    common = f"lockfile '{work}/chef.lock'\n"
    try:
        fleet.add("j1", whitelist=wl, extra=common, env=DAEMON_ENV)
        fleet.add("j2", whitelist=wl, extra=common)
        fleet.add(
            "envr", whitelist=wl, extra=common + "allowed_overwritable_env_vars ['KEEP_ME']\n"
        )
        fleet.add("envnone", whitelist=wl, extra=common + "allowed_overwritable_env_vars []\n")
        fleet.add("badfd", whitelist=wl, extra=common)
        fleet.add("usr", whitelist=wl, extra=common + f"file_dir '{public_dir}/files'\n")
        fleet.wait_available(*fleet.clients)
        yield fleet
    finally:
        fleet.close()
        server.kill()


def captured(fleet: ClientFleet, job: dict, node: str) -> tuple[bytes, bytes]:
    out, err = (fleet.output(job["id"], node, channel) for channel in ("stdout", "stderr"))
    assert (out.status_code, err.status_code) == (200, 200), (out.text, err.text)
    return out.content, err.content


def run_captured(fleet: ClientFleet, command: str, node: str, **opts) -> tuple[dict, bytes]:
    job = fleet.run(command, [node], capture_output=True, **opts)
    return job, captured(fleet, job, node)[0]


def env_of(stdout: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.decode().splitlines() if "=" in line)


# ---------------------------------------------------------------------------------------------
# Whitelist and commit checks


def test_whitelist_exact_regex_order_backreference_and_hash(fleet):
    for command, expected in [
        ("exact", b"exact\n"),  # the exact key wins over the earlier regex
        ("example", b"regex\n"),
        ("greet bob", b"hello bob\n"),  # the first matching regex, with its back-reference
        ("greeet bob", b"second\n"),
        ("hashy", b"from hash\n"),
    ]:
        job, out = run_captured(fleet, command, "j1")
        assert (job["status"], job["nodes"]) == ("complete", {"succeeded": ["j1"]}), command
        assert out == expected, command


def test_two_clients_run_one_job(fleet):
    job = fleet.run("hello", ["j1", "j2"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["j1", "j2"]}
    assert captured(fleet, job, "j1")[0] == b"hello from j1\n"
    assert captured(fleet, job, "j2")[0] == b"hello from j2\n"


@pytest.mark.parametrize(
    "command, opts",
    [
        ("rm -rf /", {}),  # not in the whitelist
        ("greet bob; rm -rf /", {}),  # a regex must match the whole command
        ("greet bob\nrm -rf /", {}),  # ... also across lines (the original matched one line)
        ("hello", {"user": "no-such-user-pushy"}),
        ("hello", {"dir": "/no/such/dir/pushy"}),
    ],
    ids=["not-whitelisted", "regex-suffix", "newline-injection", "missing-user", "missing-dir"],
)
def test_commit_refused(fleet, command, opts):
    job = fleet.run(command, ["j2"], **opts)
    assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": ["j2"]})
    detail = job["node_details"]["j2"]  # our client says why (issue 15)
    assert detail["exit_status"] is None and detail["signal"] is None
    assert isinstance(detail["reason"], str) and detail["reason"], detail
    fleet.wait_available("j2")


def test_whitelist_locks(fleet, work):
    lockfile, other = work / "chef.lock", work / "other.lock"
    lockfile.write_text("4242\n")  # chef-client's pid file: taking the lock must not empty it
    fd = os.open(lockfile, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process (chef-client) runs
        job = fleet.run("locked", ["j2"])
        assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": ["j2"]})
        job, out = run_captured(fleet, "pathlock", "j2")  # its own lock file is free
        assert job["nodes"] == {"succeeded": ["j2"]} and out == b"path lock ran\n"
    finally:
        os.close(fd)
    job, out = run_captured(fleet, "locked", "j2")
    assert job["nodes"] == {"succeeded": ["j2"]} and out == b"locked ran\n"
    # the original wedged after a lock was taken: the next ordinary job still reports
    job, out = run_captured(fleet, "hello", "j2")
    assert job["nodes"] == {"succeeded": ["j2"]} and out == b"hello from j2\n"
    assert lockfile.read_text() == "4242\n"
    for path in (lockfile, other):  # both released once the job is over
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(other, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        job = fleet.run("pathlock", ["j2"])
        assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": ["j2"]})
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# env, dir, user, file


def test_env_is_daemon_env_plus_job_env_and_chef_push_values_win(fleet):
    job_env = {
        "JOB_VAR": "from-job",
        "DAEMON_VAR": "job-wins",
        "CHEF_PUSH_NODE_NAME": "fake",
        "CHEF_PUSH_JOB_ID": "fake",
        "CHEF_PUSH_JOB_FILE": "/fake",
    }
    job, out = run_captured(fleet, "env", "j1", env=job_env)
    env = env_of(out)
    assert env["JOB_VAR"] == "from-job"
    assert env["DAEMON_VAR"] == "job-wins"  # no allowed list: the job's env passes through
    assert env["CHEF_PUSH_NODE_NAME"] == "j1"
    assert env["CHEF_PUSH_JOB_ID"] == job["id"]
    assert "CHEF_PUSH_JOB_FILE" not in env  # no file sent: neither daemon's nor job's value
    job, out = run_captured(fleet, "env", "j1")
    env = env_of(out)
    assert env["DAEMON_VAR"] == "from-daemon" and env["PATH"] == os.environ["PATH"]
    assert env["CHEF_PUSH_NODE_NAME"] == "j1" and env["CHEF_PUSH_JOB_ID"] == job["id"]


def test_env_renamed_unless_overwritable(fleet):
    job_env = {"KEEP_ME": "kept", "PATH": "/evil", "OTHER": "o", "CHEF_PUSH_JOB_ID": "fake"}
    job, out = run_captured(fleet, "env", "envr", env=job_env)
    env = env_of(out)
    assert env["KEEP_ME"] == "kept"
    assert env["PATH"] == os.environ["PATH"] and env["CHEF_PUSH_ENV_PATH"] == "/evil"
    assert env["CHEF_PUSH_ENV_OTHER"] == "o" and "OTHER" not in env
    assert env["CHEF_PUSH_JOB_ID"] == job["id"]
    job, out = run_captured(fleet, "env", "envnone", env={"KEEP_ME": "k"})  # [] renames all
    env = env_of(out)
    assert env["CHEF_PUSH_ENV_KEEP_ME"] == "k" and "KEEP_ME" not in env


def test_dir(fleet, work):
    target = work / "jobdir"
    target.mkdir(exist_ok=True)
    job, out = run_captured(fleet, "pwd", "j1", dir=str(target))
    assert job["nodes"] == {"succeeded": ["j1"]} and out == f"{target}\n".encode()


def _fileinfo(out: bytes) -> tuple[str, str, str, bytes]:
    path, dir_info, file_info, content = out.decode().split("\n")
    return path, dir_info, file_info, base64.b64decode(content)


@pytest.mark.parametrize(
    "file, content",
    [("raw:a:b:c", b"a:b:c"), ("base64:" + base64.b64encode(bytes(range(256))).decode(), None)],
    ids=["raw", "base64-binary"],
)
def test_job_file(fleet, file, content):
    me = pwd.getpwuid(os.geteuid()).pw_name
    job, out = run_captured(fleet, "fileinfo", "j1", file=file)
    assert job["nodes"] == {"succeeded": ["j1"]}, out
    path, dir_info, file_info, got = _fileinfo(out)
    assert got == (content if content is not None else bytes(range(256)))
    file_dir = fleet.clients["j1"].file_dir
    assert Path(path).name == "pushy_file" and Path(path).parent.parent == file_dir
    assert Path(path).parent.name.startswith(f"pushy-{job['id']}-")
    assert (dir_info, file_info) == (f"700 {me}", f"600 {me}")
    assert not Path(path).parent.exists()  # removed after the job
    assert list(file_dir.iterdir()) == []
    job, out = run_captured(fleet, "env", "j1", file=file)
    assert env_of(out)["CHEF_PUSH_JOB_FILE"].endswith("/pushy_file")


@needs_root
def test_user_switches_uid_gid_groups_and_home(fleet, public_dir):
    entry = pwd.getpwnam("nobody")
    job, out = run_captured(fleet, "ids", "usr", user="nobody")
    assert job["nodes"] == {"succeeded": ["usr"]}, out
    ids = env_of(out)
    assert (ids["uid"], ids["gid"]) == (str(entry.pw_uid), str(entry.pw_gid))
    assert set(ids["groups"].split()) == {str(g) for g in os.getgrouplist("nobody", entry.pw_gid)}
    assert (ids["home"], ids["user"], ids["logname"]) == (entry.pw_dir, "nobody", "nobody")
    # the job file belongs to the job's user
    job, out = run_captured(fleet, "fileinfo", "usr", user="nobody", file="raw:secret")
    path, dir_info, file_info, got = _fileinfo(out)
    assert Path(path).parent.parent == public_dir / "files"
    assert (dir_info, file_info, got) == ("700 nobody", "600 nobody", b"secret")
    assert not Path(path).parent.exists()


# ---------------------------------------------------------------------------------------------
# Capture, limits, exit statuses


def test_capture_and_exit_statuses(fleet):
    job = fleet.run("hello", ["j1"])  # capture off: nothing stored
    assert job["nodes"] == {"succeeded": ["j1"]}
    assert fleet.output(job["id"], "j1").status_code == 404
    job = fleet.run("silent", ["j1"], capture_output=True)  # on: both, even when empty
    assert job["nodes"] == {"succeeded": ["j1"]} and captured(fleet, job, "j1") == (b"", b"")
    job = fleet.run("exit3", ["j1"], capture_output=True)
    assert job["nodes"] == {"failed": ["j1"]}
    assert captured(fleet, job, "j1") == (b"out\n", b"err\n")
    assert job["node_details"] == {"j1": {"exit_status": 3, "signal": None, "reason": None}}
    job = fleet.run("selfkill", ["j1"], capture_output=True)  # killed by a signal
    assert job["nodes"] == {"failed": ["j1"]}
    assert job["node_details"]["j1"] == {"exit_status": None, "signal": "SIGKILL", "reason": None}


def test_non_utf8_output_is_sent_with_replacement_characters(fleet):
    job = fleet.run("binary", ["j1"], capture_output=True)
    assert job["nodes"] == {"succeeded": ["j1"]}
    out, err = captured(fleet, job, "j1")
    assert out == "ok\ufffd\ufffdend".encode() and err == "\ufffd".encode()


# ---------------------------------------------------------------------------------------------
# Abort, and commands that cannot start


def test_abort_kills_the_whole_process_group(fleet, work):
    pidfile = work / "abortme.pid"
    job_id = fleet.post("hold abortme", ["j2"])
    fleet.wait_nodes(job_id, {"running": ["j2"]})
    pgid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10))
    assert process_group_alive(pgid)
    r = fleet.admin.post(f"/organizations/{ORG}/pushy/jobs/{job_id}/abort")
    assert r.status_code == 200, r.text
    job = fleet.wait_job(job_id, 20)
    assert (job["status"], job["nodes"]) == ("aborted", {"aborted": ["j2"]}), job
    # The server ended the job at once; the node is back once the client answered `aborted`,
    # which it does once the group is gone. The job ignores TERM (as do its children): only
    # the KILL 3 s later ends it.
    fleet.wait_available("j2")
    assert not process_group_alive(pgid)
    log = fleet.clients["j2"].log()
    assert f"Killing job {job_id}" in log and f"Job {job_id} aborted" in log
    assert fleet.run("hello", ["j2"])["nodes"] == {"succeeded": ["j2"]}


def test_commands_that_cannot_start_end_failed(fleet):
    job, out = run_captured(fleet, "nope", "j1")  # the shell cannot find it: exit 127
    assert job["nodes"] == {"failed": ["j1"]}
    assert job["node_details"]["j1"]["exit_status"] == 127
    assert b"not found" in fleet.output(job["id"], "j1", "stderr").content
    # exec itself fails: an environment value with a NUL byte
    job = fleet.run("hello", ["j1"], capture_output=True, env={"BAD": "a\u0000b"})
    assert (job["status"], job["nodes"]) == ("complete", {"failed": ["j1"]})
    assert job["node_details"]["j1"]["reason"].startswith("could not start: ")
    assert b"cannot start the job" in captured(fleet, job, "j1")[1]
    # the job file cannot be written: file_dir is not a directory
    client = fleet.clients["badfd"]
    client.file_dir.write_text("not a directory")
    try:
        job = fleet.run("fileinfo", ["badfd"], capture_output=True, file="raw:x")
        assert (job["status"], job["nodes"]) == ("complete", {"failed": ["badfd"]})
        assert b"is not a directory" in captured(fleet, job, "badfd")[1]
    finally:
        client.file_dir.unlink()
    fleet.wait_available("j1", "badfd")
    assert fleet.run("hello", ["j1", "badfd"])["nodes"] == {"succeeded": ["badfd", "j1"]}
