"""The client's job runner with real processes (client-knife.md §A.4 "How a job runs").

These start /bin/sh; the user-switching tests run only as root (with ``nobody``).
"""

from __future__ import annotations

import base64
import os
import pwd
import signal
import stat
import tempfile
from pathlib import Path

import pytest
import trio

from appliance.client import jobfile
from appliance.client.runner import Lock, Outcome, group_alive, run_job
from appliance.core.jobspec import decode_job_file

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
HANG_GUARD = 20  # seconds: a test that hangs fails instead of blocking the suite


async def run(command: str, **kwargs) -> Outcome:
    options = {"env": dict(os.environ), "user": None, "dir": None, "capture": True}
    options.update(kwargs)
    options.setdefault("kill_event", trio.Event())
    with trio.fail_after(HANG_GUARD):
        return await run_job(command, **options)


def live_members(pgid: int) -> list[int]:
    """Pids of group ``pgid`` that are not zombies (an init that never reaps orphans leaves
    zombies, which are dead). Checked independently of the runner's own helper."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = text[text.rfind(b")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != b"Z":
            found.append(int(name))
    return found


async def wait_for_file(path: Path) -> str:
    for _ in range(400):
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await trio.sleep(0.025)
    raise AssertionError(f"{path} never appeared")


# Exit status ---------------------------------------------------------------------------------
async def test_exit_zero_succeeds():
    outcome = await run("true")
    assert (outcome.exit_code, outcome.signal, outcome.killed, outcome.start_error) == (
        0,
        None,
        False,
        None,
    )
    assert outcome.succeeded


async def test_exit_three_fails():
    outcome = await run("exit 3")
    assert outcome.exit_code == 3 and outcome.signal is None and not outcome.succeeded


async def test_death_by_signal_has_no_exit_code():
    outcome = await run("kill -USR1 $$")
    assert outcome.exit_code is None
    assert outcome.signal == signal.SIGUSR1
    assert not outcome.killed and not outcome.succeeded


async def test_missing_program_in_shell_line_fails_normally():
    outcome = await run("nonexistent-program-xyz; exit 7")
    assert outcome.exit_code == 7
    assert b"nonexistent-program-xyz" in outcome.stderr


# Output --------------------------------------------------------------------------------------
async def test_stdout_and_stderr_are_captured_exactly():
    outcome = await run(r"printf 'a\000b\377\n'; printf 'err\200\001' >&2; printf 'c'")
    assert outcome.stdout == b"a\x00b\xff\nc"
    assert outcome.stderr == b"err\x80\x01"


async def test_no_capture_gives_empty_output():
    outcome = await run("echo out; echo err >&2; exit 0", capture=False)
    assert (outcome.stdout, outcome.stderr, outcome.exit_code) == (b"", b"", 0)


async def test_capture_is_bounded_and_counts_the_rest():
    outcome = await run("head -c 200000 /dev/zero; head -c 10 /dev/zero >&2", max_capture=1000)
    assert outcome.stdout == b"\x00" * 1000 and outcome.stdout_dropped == 199000
    assert outcome.stderr == b"\x00" * 10 and outcome.stderr_dropped == 0
    assert outcome.exit_code == 0


async def test_large_output_without_capture_does_not_block():
    outcome = await run("head -c 1000000 /dev/zero; exit 4", capture=False)
    assert outcome.exit_code == 4


async def test_background_child_holding_the_pipes_does_not_hold_the_job(tmp_path):
    outcome = await run("echo $$; sleep 30 & exit 5")
    try:
        assert outcome.exit_code == 5
        assert outcome.stdout.strip().isdigit()
    finally:
        if outcome.stdout.strip().isdigit():
            try:
                os.killpg(int(outcome.stdout), signal.SIGKILL)
            except ProcessLookupError:
                pass


# Where and how it runs -----------------------------------------------------------------------
async def test_cwd_is_dir(tmp_path):
    outcome = await run("pwd -P", dir=str(tmp_path))
    assert outcome.stdout.decode().strip() == str(tmp_path.resolve())


async def test_stdin_is_dev_null():
    outcome = await run("cat; echo done")
    assert outcome.stdout == b"done\n"


async def test_environment_from_build_env_with_chef_push_winning(tmp_path):
    env = jobfile.build_env(
        {"PATH": os.environ["PATH"], "DAEMON_VAR": "d", "CHEF_PUSH_JOB_FILE": "/etc/passwd"},
        {"JOB_VAR": "j v", "CHEF_PUSH_JOB_ID": "forged", "CHEF_PUSH_NODE_NAME": "forged"},
        allowed_overwritable=None,
        node_name="node1",
        job_id="abc123",
        job_file="/tmp/x/pushy_file",
    )
    outcome = await run("env -0", env=env)
    seen = dict(item.split("=", 1) for item in outcome.stdout.decode().split("\0") if item)
    assert seen["DAEMON_VAR"] == "d"
    assert seen["JOB_VAR"] == "j v"
    assert seen["CHEF_PUSH_JOB_ID"] == "abc123"
    assert seen["CHEF_PUSH_NODE_NAME"] == "node1"
    assert seen["CHEF_PUSH_JOB_FILE"] == "/tmp/x/pushy_file"
    assert "HOME" not in seen  # nothing but the given environment (no user: no HOME added)


async def test_own_session_and_process_group():
    outcome = await run('read -r line < /proc/$$/stat; echo "$$ $line"')
    pid, rest = outcome.stdout.decode().split(" ", 1)
    fields = rest[rest.rfind(")") + 2 :].split()
    pgrp, session = int(fields[2]), int(fields[3])
    assert pgrp == int(pid) == session
    assert pgrp != os.getpgrp()


# Start failures ------------------------------------------------------------------------------
async def test_missing_dir_is_a_start_error(tmp_path):
    outcome = await run("true", dir=str(tmp_path / "missing"))
    assert outcome.start_error is not None and "No such file" in outcome.start_error
    assert outcome.exit_code is None and not outcome.succeeded


async def test_unknown_user_is_a_start_error():
    outcome = await run("true", user="no-such-user-pushy-test")
    assert outcome.start_error is not None and "no-such-user-pushy-test" in outcome.start_error


async def test_bad_environment_is_a_start_error():
    outcome = await run("true", env={"BAD=KEY": "x"})
    assert outcome.start_error is not None


# Abort, shutdown -----------------------------------------------------------------------------
async def test_abort_kills_the_whole_group(tmp_path):
    marker = tmp_path / "bg"
    kill = trio.Event()
    result: list[Outcome] = []

    async def job():
        # A grace longer than the hang guard: TERM must reach every member of the group.
        command = f"echo $$; sleep 30 & echo $! > {marker}; sleep 30; wait"
        result.append(await run(command, kill_event=kill, kill_grace=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job)
        background = int(await wait_for_file(marker))
        assert live_members(os.getpgid(background))  # the group runs
        kill.set()
    (outcome,) = result
    pgid = int(outcome.stdout)
    assert outcome.killed and not outcome.succeeded
    assert outcome.signal == signal.SIGTERM and outcome.exit_code is None
    assert live_members(pgid) == []
    assert not group_alive(pgid)


async def test_a_job_ignoring_term_is_killed_after_the_grace(tmp_path):
    marker = tmp_path / "pid"
    kill = trio.Event()
    result: list[Outcome] = []

    async def job():
        command = f"trap '' TERM; echo $$ > {marker}; sleep 30; sleep 30"
        result.append(await run(command, kill_event=kill, kill_grace=0.5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job)
        pgid = int(await wait_for_file(marker))
        kill.set()
    (outcome,) = result
    assert outcome.killed and outcome.signal == signal.SIGKILL
    assert live_members(pgid) == []


async def test_kill_event_set_before_start_still_kills():
    kill = trio.Event()
    kill.set()
    outcome = await run("sleep 30", kill_event=kill)
    assert outcome.killed and outcome.exit_code is None


async def test_cancellation_kills_the_group_then_propagates(tmp_path):
    marker = tmp_path / "pid"
    with trio.move_on_after(HANG_GUARD) as guard, trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def job():
                await run(f"echo $$ > {marker}; sleep 30 & sleep 30", kill_event=trio.Event())
                raise AssertionError("run_job returned although it was cancelled")

            nursery.start_soon(job)
            pgid = int(await wait_for_file(marker))
            scope.cancel()
    assert scope.cancelled_caught and not guard.cancelled_caught
    assert live_members(pgid) == []


# Users (root only) ---------------------------------------------------------------------------
@ROOT_ONLY
async def test_user_switches_uid_gid_groups_and_home():
    nobody = pwd.getpwnam("nobody")
    env = dict(os.environ, HOME="/root", USER="root", LOGNAME="root")
    saved = os.getgroups()
    os.setgroups([0, 4242])  # groups the job must not keep
    try:
        outcome = await run(
            'id -u; id -g; id -G; echo "$HOME|$USER|$LOGNAME"', user="nobody", env=env
        )
    finally:
        os.setgroups(saved)
    uid, gid, groups, names = outcome.stdout.decode().splitlines()
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert {int(g) for g in groups.split()} == set(os.getgrouplist("nobody", nobody.pw_gid))
    assert names == f"{nobody.pw_dir}|nobody|nobody"


@ROOT_ONLY
async def test_job_as_user_reads_its_job_file_which_is_gone_afterwards():
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="pushy-runner-test-"))
    try:
        base.chmod(0o755)  # nobody must be able to reach file_dir
        content = decode_job_file("base64:" + base64.b64encode(b"\x00\xffsecret").decode())
        path = jobfile.write_job_file(
            str(base / "files"), "job1", content, uid=nobody.pw_uid, gid=nobody.pw_gid
        )
        env = jobfile.build_env(
            os.environ,
            None,
            allowed_overwritable=None,
            node_name="n",
            job_id="job1",
            job_file=path,
        )
        outcome = await run('cat "$CHEF_PUSH_JOB_FILE"; id -u', user="nobody", env=env)
        assert outcome.stdout == b"\x00\xffsecret" + f"{nobody.pw_uid}\n".encode()
        jobfile.remove_job_file(path)
        assert not os.path.exists(os.path.dirname(path))
    finally:
        for child in sorted(base.rglob("*"), reverse=True):
            child.unlink() if not child.is_dir() else child.rmdir()
        base.rmdir()


# Job file ------------------------------------------------------------------------------------
def test_job_file_modes_content_and_removal(tmp_path):
    file_dir = tmp_path / "chef-push"
    path = jobfile.write_job_file(str(file_dir), "job-1", b"raw text:\n", uid=None, gid=None)
    job_dir = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(file_dir).st_mode) & 0o022 == 0
    assert os.path.dirname(job_dir) == str(file_dir)
    assert os.path.basename(job_dir).startswith("pushy-job-1-")
    assert os.path.basename(path) == "pushy_file"
    assert stat.S_IMODE(os.stat(job_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_bytes() == b"raw text:\n"
    Path(job_dir, "left-by-job").write_text("x")
    jobfile.remove_job_file(path)
    assert not os.path.exists(job_dir)
    assert file_dir.is_dir()


@pytest.mark.parametrize(
    "file,content",
    [
        ("raw:a:b:c\n", b"a:b:c\n"),
        ("base64:" + base64.b64encode(bytes(range(256))).decode(), bytes(range(256))),
    ],
)
def test_job_file_content_from_decode_job_file(tmp_path, file, content):
    path = jobfile.write_job_file(
        str(tmp_path / "d"), "j", decode_job_file(file), uid=None, gid=None
    )
    assert Path(path).read_bytes() == content


def test_job_file_directories_are_unique_per_job(tmp_path):
    one = jobfile.write_job_file(str(tmp_path / "d"), "j", b"1", uid=None, gid=None)
    two = jobfile.write_job_file(str(tmp_path / "d"), "j", b"2", uid=None, gid=None)
    assert os.path.dirname(one) != os.path.dirname(two)


def test_job_id_cannot_escape_file_dir(tmp_path):
    file_dir = tmp_path / "d"
    path = jobfile.write_job_file(str(file_dir), "../../etc/x", b"1", uid=None, gid=None)
    assert Path(path).resolve().parent.parent == file_dir.resolve()


@ROOT_ONLY
def test_job_file_belongs_to_the_job_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    path = jobfile.write_job_file(
        str(tmp_path / "d"), "j", b"x", uid=nobody.pw_uid, gid=nobody.pw_gid
    )
    for item in (path, os.path.dirname(path)):
        info = os.stat(item)
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert os.stat(tmp_path / "d").st_uid == 0
    jobfile.remove_job_file(path)


def test_writable_file_dir_is_refused(tmp_path):
    file_dir = tmp_path / "open"
    file_dir.mkdir()
    file_dir.chmod(0o777)
    with pytest.raises(jobfile.JobFileError, match="writable by group or others"):
        jobfile.write_job_file(str(file_dir), "j", b"x", uid=None, gid=None)
    assert list(file_dir.iterdir()) == []


def test_symlinked_file_dir_is_refused(tmp_path):
    (tmp_path / "real").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(jobfile.JobFileError, match="not a directory"):
        jobfile.write_job_file(str(tmp_path / "link"), "j", b"x", uid=None, gid=None)


@ROOT_ONLY
def test_file_dir_owned_by_someone_else_is_refused(tmp_path):
    file_dir = tmp_path / "theirs"
    file_dir.mkdir(mode=0o755)
    os.chown(file_dir, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(jobfile.JobFileError, match="owned by uid"):
        jobfile.write_job_file(str(file_dir), "j", b"x", uid=None, gid=None)


def test_remove_job_file_leaves_other_paths_alone(tmp_path):
    other = tmp_path / "precious"
    other.write_text("keep")
    jobfile.remove_job_file(str(other))
    assert other.read_text() == "keep"


# build_env (client-knife.md §C/§D item 12) ---------------------------------------------------
BASE = {"PATH": "/usr/bin", "HOME": "/root"}
JOB_ENV = {"PATH": "/evil", "FOO": "bar"}


def env_for(allowed, job_env=JOB_ENV, job_file=None, base=BASE):
    return jobfile.build_env(
        base, job_env, allowed_overwritable=allowed, node_name="n1", job_id="J", job_file=job_file
    )


def test_env_nil_allow_list_passes_everything_through():
    assert env_for(None) == {
        "PATH": "/evil",
        "HOME": "/root",
        "FOO": "bar",
        "CHEF_PUSH_NODE_NAME": "n1",
        "CHEF_PUSH_JOB_ID": "J",
    }


def test_env_empty_allow_list_prefixes_everything():
    assert env_for([]) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "CHEF_PUSH_ENV_PATH": "/evil",
        "CHEF_PUSH_ENV_FOO": "bar",
        "CHEF_PUSH_NODE_NAME": "n1",
        "CHEF_PUSH_JOB_ID": "J",
    }


def test_env_allow_list_lets_only_its_keys_through():
    env = env_for(["PATH"])
    assert env["PATH"] == "/evil" and env["CHEF_PUSH_ENV_FOO"] == "bar" and "FOO" not in env


def test_env_chef_push_values_always_win():
    forged = {
        "CHEF_PUSH_JOB_ID": "x",
        "CHEF_PUSH_NODE_NAME": "x",
        "CHEF_PUSH_JOB_FILE": "/etc/shadow",
    }
    for allowed in (None, list(forged)):
        env = env_for(allowed, job_env=forged, job_file="/f", base={**BASE, **forged})
        assert (env["CHEF_PUSH_JOB_ID"], env["CHEF_PUSH_NODE_NAME"]) == ("J", "n1")
        assert env["CHEF_PUSH_JOB_FILE"] == "/f"
        assert "CHEF_PUSH_JOB_FILE" not in env_for(allowed, job_env=forged, base=forged)


def test_env_without_job_env_and_base_untouched():
    base = dict(BASE)
    env = env_for([], job_env=None, base=base)
    assert env == {**BASE, "CHEF_PUSH_NODE_NAME": "n1", "CHEF_PUSH_JOB_ID": "J"}
    assert base == BASE


def test_systemd_handshake_variables_do_not_reach_jobs():
    """A job must not speak to systemd as the client (readiness, watchdog, its sockets)."""
    sd = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "LISTEN_FDNAMES": "x",
    }
    env = env_for([], job_env=None, base={**BASE, **sd})
    assert env == {**BASE, "CHEF_PUSH_NODE_NAME": "n1", "CHEF_PUSH_JOB_ID": "J"}


def test_commit_check_helpers(tmp_path):
    assert jobfile.user_exists("root") and not jobfile.user_exists("no-such-user-pushy")
    assert not jobfile.user_exists("")
    assert jobfile.dir_exists(str(tmp_path)) and not jobfile.dir_exists(str(tmp_path / "no"))
    (tmp_path / "f").write_text("")
    assert not jobfile.dir_exists(str(tmp_path / "f"))
    assert jobfile.ids_of(None) == (None, None)
    assert jobfile.ids_of("root") == (0, 0)


# Lock ----------------------------------------------------------------------------------------
def test_lock_path_for():
    assert Lock.path_for("/x/y.pid", lockfile="/l", file_cache_path="/c") == "/x/y.pid"
    assert Lock.path_for(True, lockfile="/l", file_cache_path="/c") == "/l"
    assert (
        Lock.path_for(True, lockfile=None, file_cache_path="/var/chef/cache")
        == "/var/chef/cache/chef-client-running.pid"
    )


def test_lock_is_exclusive_released_and_keeps_the_file_content(tmp_path):
    path = tmp_path / "chef-client-running.pid"
    path.write_text("4242\n")
    first, second = Lock(str(path)), Lock(str(path))
    assert first.try_acquire() and first.held
    assert first.try_acquire()  # already ours
    assert not second.try_acquire() and not second.held
    assert path.read_text() == "4242\n"
    first.release()
    first.release()  # idempotent
    assert not first.held
    assert second.try_acquire()
    assert not first.try_acquire()
    second.release()
    assert path.read_text() == "4242\n"


async def test_lock_held_by_another_process_is_refused(tmp_path):
    path = tmp_path / "lock"
    marker = tmp_path / "locked"
    script = f"exec 9>>{path}; flock -n 9 && echo yes > {marker}; sleep 30"
    kill = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run(script, kill_event=kill, kill_grace=0.5))
        assert await wait_for_file(marker) == "yes"
        lock = Lock(str(path))
        assert not lock.try_acquire()
        kill.set()
    assert lock.try_acquire()
    lock.release()


def test_lock_in_missing_directory_is_refused(tmp_path):
    assert not Lock(str(tmp_path / "missing" / "lock")).try_acquire()


def test_lock_creates_a_missing_file(tmp_path):
    lock = Lock(str(tmp_path / "new.pid"))
    assert lock.try_acquire()
    assert (tmp_path / "new.pid").exists()
    lock.release()
