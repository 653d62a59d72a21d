"""Issue 7, client side, end to end: real ``pushy client`` processes refuse jobs that try to
escape the whitelist or their sandbox, and a job's user cannot read another job's file.

* a regex capture carrying shell syntax (``;``, ``$(...)``, backticks, ``&&``, ``|``,
  quotes, newline, CR, NUL) is refused at commit, whatever quoting the template puts around
  it, and the file the injected command would create never appears;
* ``dir``: relative paths, files, symlinks to files or nowhere are refused at commit; ``..``
  and symlinks to directories resolve as ``cd`` would; a directory the job's user cannot
  enter fails the job before anything runs;
* ``env``: names with ``=``/NUL, an empty name, an entry too large for exec are refused at
  commit and nothing runs; non-string values never get past the server (400);
* job files: two jobs as two users on one machine sharing ``file_dir``: B cannot read A's
  file nor list its directory; a job cannot plant anything in ``file_dir``, and the symlinks it
  leaves in its own directory are not followed by the clean-up.

The user tests need root (``useradd``); they are skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support import ClientFleet, Server, wait_for

ORG = "clientsec"
USERS = ("pushysec-a", "pushysec-b")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def whitelist(work: Path) -> str:
    drop, shared = work / "drop", work / "shared-files"
    hold = (
        r'cat "$CHEF_PUSH_JOB_FILE"; echo; '
        f'echo "$CHEF_PUSH_JOB_FILE" > {drop}/a.path; i=0; '
        f"while [ ! -e {drop}/release ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done"
    )
    peek = (
        r'cat "$TARGET"; echo "rc=$?"; ls "${TARGET%/*}"; echo "rc=$?"; '
        f'echo x > {shared}/planted-by-b; echo "rc=$?"'
    )
    plant = (
        r'd="${CHEF_PUSH_JOB_FILE%/*}"; rm -f "$CHEF_PUSH_JOB_FILE"; '
        f'ln -s {work}/victim "$CHEF_PUSH_JOB_FILE"; ln -s {work}/victimdir "$d/dirlink"; '
        f'mkdir "$d/sub" && ln -s {work}/victimdir "$d/sub/deep"; '
        f'touch {shared}/planted; echo "rc=$?"; mv "$d" {shared}/moved; echo "rc=$?"'
    )
    entries = [
        r"/^echo (.*)$/m=>'echo \1'",  # Ruby /m: `.` also matches newlines
        r"""/^dq (.*)$/m=>'echo "\1"'""",
        r"""/^sq (.*)$/m=>"echo '\\1'" """,
        r"'pwd'=>'pwd'",
        r"'pwdp'=>'pwd -P'",
        f"'mark'=>'touch {work}/marks/$CHEF_PUSH_JOB_ID'",
        f"'holdfile'=>'{hold}'",
        f"'peek'=>'{peek}'",
        f"'plant'=>'{plant}'",
    ]
    return "{" + ",\n  ".join(entries) + "}"


@pytest.fixture(scope="module")
def work():
    """A directory the test users can reach (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pushy-clientsec-"))
    path.chmod(0o755)
    for name, mode in (("drop", 0o1777), ("marks", 0o755), ("victimdir", 0o755)):
        (path / name).mkdir()
        (path / name).chmod(mode)
    (path / "victim").write_text("precious")
    (path / "victimdir" / "inside").write_text("precious too")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(work, tmp_path_factory):
    (work / "clients").mkdir(mode=0o755)
    server = Server(tmp_path_factory.mktemp("clientsec") / "state").start()
    fleet = ClientFleet(server, ORG, work / "clients")
    wl = whitelist(work)
    shared = f"file_dir '{work}/shared-files'\n"
    try:
        fleet.add("sec", whitelist=wl, extra=shared)
        fleet.add("sec2", whitelist=wl, extra=shared)
        fleet.wait_available(*fleet.clients)
        yield fleet
    finally:
        fleet.close()
        server.kill()


@pytest.fixture(scope="module")
def users():
    """Two throw-away local users (root only), removed at the end."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating users needs root and useradd")
    for name in USERS:
        subprocess.run(["userdel", name], capture_output=True)  # a leftover of a killed run
        r = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group", "-s", "/bin/sh", name],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"useradd {name} failed: {r.stderr}")
    yield USERS
    for name in USERS:
        subprocess.run(["userdel", name], capture_output=True)


def run(fleet: ClientFleet, command: str, node: str = "sec", **opts) -> dict:
    fleet.wait_available(node)
    return fleet.run(command, [node], **opts)


def output(fleet: ClientFleet, job: dict, node: str = "sec") -> tuple[bytes, bytes]:
    out, err = (fleet.output(job["id"], node, channel) for channel in ("stdout", "stderr"))
    assert (out.status_code, err.status_code) == (200, 200), (out.text, err.text)
    return out.content, err.content


def assert_nacked(fleet: ClientFleet, job: dict, node: str = "sec") -> None:
    assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": [node]}), (
        job,
        fleet.clients[node].log()[-3000:],
    )


# ---------------------------------------------------------------------------------------------
# Whitelist captures


PAYLOADS = {
    "semicolon": "x; touch {pwned}",
    "command-substitution": "$(touch {pwned})",
    "backticks": "`touch {pwned}`",
    "and": "x && touch {pwned}",
    "or": "nonexistent || touch {pwned}",
    "pipe": "x | tee {pwned}",
    "redirect": "x > {pwned}",
    "background": "x & touch {pwned}",
    "newline": "x\ntouch {pwned}",
    "carriage-return": "x\rtouch {pwned}",
    "nul": "x\u0000touch {pwned}",
    "single-quote-breakout": "'; touch {pwned}; '",
    "double-quote-breakout": '"; touch {pwned}; "',
    "ifs": "${{IFS}}touch${{IFS}}{pwned}",
}


@pytest.mark.parametrize("prefix", ["echo ", "dq ", "sq "], ids=["bare", "dquoted", "squoted"])
@pytest.mark.parametrize("payload", list(PAYLOADS.values()), ids=list(PAYLOADS))
def test_a_capture_cannot_inject_shell_syntax(fleet, work, prefix, payload):
    pwned = work / f"pwned-{uuid.uuid4().hex[:8]}"
    job = run(fleet, prefix + payload.format(pwned=pwned))
    assert_nacked(fleet, job)
    assert not pwned.exists()
    assert f"Commit {job['id']} refused: command " in fleet.clients["sec"].log()


def test_safe_captures_still_run(fleet):
    """The control: captures of words, paths and spaces work in every quoting context."""
    for command, expected in [
        ("echo hello big world", b"hello big world\n"),
        ("echo /srv/app-1.2:8080,user@host", b"/srv/app-1.2:8080,user@host\n"),
        ("dq two  spaces", b"two  spaces\n"),
        ("sq 50%", b"50%\n"),
    ]:
        job = run(fleet, command, capture_output=True)
        assert job["nodes"] == {"succeeded": ["sec"]}, command
        assert output(fleet, job)[0] == expected, command


# ---------------------------------------------------------------------------------------------
# dir


def test_dir_tricks_are_refused_at_commit(fleet, work):
    (work / "a-file").write_text("x")
    (work / "to-file").symlink_to(work / "a-file")
    (work / "dangling").symlink_to(work / "nowhere")
    for bad in ("marks", ".", "../marks", str(work / "a-file"), str(work / "to-file")):
        job = run(fleet, "mark", dir=bad)
        assert_nacked(fleet, job)
        assert not (work / "marks" / job["id"]).exists()
    job = run(fleet, "mark", dir=str(work / "dangling"))
    assert_nacked(fleet, job)
    log = fleet.clients["sec"].log()
    assert "dir 'marks' is not an absolute path" in log
    assert f"dir '{work}/a-file' does not exist or is not a directory" in log


def test_dotdot_and_symlinked_dirs_resolve_like_cd(fleet, work):
    (work / "to-marks").symlink_to(work / "marks")
    job = run(fleet, "pwdp", dir=f"{work}/victimdir/../marks", capture_output=True)
    assert job["nodes"] == {"succeeded": ["sec"]} and output(fleet, job)[0] == (
        f"{work}/marks\n".encode()
    )
    job = run(fleet, "pwdp", dir=str(work / "to-marks"), capture_output=True)
    assert job["nodes"] == {"succeeded": ["sec"]} and output(fleet, job)[0] == (
        f"{work}/marks\n".encode()
    )


@needs_root
def test_a_dir_the_jobs_user_cannot_enter_fails_before_anything_runs(fleet, work, users):
    private = work / "root-only"
    private.mkdir(mode=0o700, exist_ok=True)
    job = run(fleet, "mark", dir=str(private), user=users[0], capture_output=True)
    assert (job["status"], job["nodes"]) == ("complete", {"failed": ["sec"]})
    assert f"user '{users[0]}' cannot enter dir '{private}'".encode() in output(fleet, job)[1]
    assert not (work / "marks" / job["id"]).exists()


# ---------------------------------------------------------------------------------------------
# env


@pytest.mark.parametrize(
    "env",
    [{"A=B": "x"}, {"": "x"}, {"A\u0000B": "x"}, {"BIG": "x" * 200_000}],
    ids=["equals-in-name", "empty-name", "nul-in-name", "too-big-for-exec"],
)
def test_an_invalid_env_is_refused_and_nothing_runs(fleet, work, env):
    job = run(fleet, "mark", env=env)
    assert_nacked(fleet, job)
    assert not (work / "marks" / job["id"]).exists()
    assert f"Commit {job['id']} refused: env" in fleet.clients["sec"].log()


def test_non_string_env_values_never_reach_a_node(fleet):
    for env in ({"A": 1}, {"A": None}, {"A": ["x"]}, ["A=1"]):
        r = fleet.admin.post(
            f"/organizations/{ORG}/pushy/jobs", {"command": "mark", "nodes": ["sec"], "env": env}
        )
        assert r.status_code == 400, (env, r.text)


def test_unusual_but_valid_env_names_run(fleet, work):
    job = run(fleet, "mark", env={"a.b": "1", "my-var": "2", "EMPTY": ""})
    assert job["nodes"] == {"succeeded": ["sec"]}
    assert (work / "marks" / job["id"]).exists()


# ---------------------------------------------------------------------------------------------
# Job files between users


@needs_root
def test_a_jobs_user_cannot_read_another_jobs_file(fleet, work, users):
    user_a, user_b = users
    secret = f"secret-of-a-{uuid.uuid4().hex}"
    drop = work / "drop"
    for leftover in ("a.path", "release"):
        (drop / leftover).unlink(missing_ok=True)
    fleet.wait_available("sec", "sec2")
    job_a = fleet.post("holdfile", ["sec"], user=user_a, file=f"raw:{secret}", capture_output=True)
    try:
        path = Path(wait_for(lambda: (drop / "a.path").exists() and (drop / "a.path").read_text()))
        path = Path(str(path).strip())
        # what B is up against really is A's live file (so the refusal below is not vacuous)
        a = pwd.getpwnam(user_a)
        for item, mode in ((path, 0o600), (path.parent, 0o700)):
            info = item.stat()
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (a.pw_uid, mode), item
        assert path.read_text() == secret
        job_b = run(
            fleet, "peek", "sec2", user=user_b, env={"TARGET": str(path)}, capture_output=True
        )
        out, err = output(fleet, job_b, "sec2")
        assert secret.encode() not in out + err
        assert out.count(b"rc=0") == 0, out  # cat, ls and the write into file_dir all failed
        assert err.count(b"Permission denied") >= 3, err
        assert not (work / "shared-files" / "planted-by-b").exists()
    finally:
        (drop / "release").touch()
    job = fleet.wait_job(job_a)
    assert job["nodes"] == {"succeeded": ["sec"]}
    assert output(fleet, job)[0].startswith(secret.encode())  # A itself could read it
    assert not path.parent.exists()  # removed after the job


@needs_root
def test_a_job_cannot_plant_in_file_dir_and_its_symlinks_are_not_followed(fleet, work, users):
    job = run(fleet, "plant", user=users[0], file="raw:x", capture_output=True)
    assert job["nodes"] == {"succeeded": ["sec"]}, output(fleet, job)
    out, err = output(fleet, job)
    assert out == b"rc=1\nrc=1\n", (out, err)  # neither touch nor mv in file_dir worked
    assert (work / "victim").read_text() == "precious"
    assert (work / "victimdir" / "inside").read_text() == "precious too"
    shared = work / "shared-files"
    assert not (shared / "planted").exists() and not (shared / "moved").exists()
    assert list(shared.iterdir()) == []  # the job's directory is gone, symlinks and all
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755 and shared.stat().st_uid == 0
