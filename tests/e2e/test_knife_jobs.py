"""``pushy job …`` and ``pushy node …`` end to end (client-knife.md §B, §D 20–25): the CLI as
a subprocess against a real server with real ``pushy client`` processes.

One server and one set of clients serve the module: k1 and k2 run, koff is registered but never
started (unavailable). Each test starts its own jobs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import threading

import pytest

from appliance.knife.follow import EventStream, Follower
from appliance.knife.session import Api, Credentials
from tests.support import REPO, ClientFleet, Server, run_on_pty, wait_for

ORG = "knifejobs"
JOB_ID = re.compile(r"Started\.  Job ID: ([0-9a-f]{32})\n")
WHITELIST = (
    "{'ok'=>'echo hello',"
    " 'fail'=>'echo bad >&2; exit 3',"
    " 'slow'=>'sleep 1.5; echo done',"
    " 'sleep'=>'sleep 60',"
    " 'env'=>'env',"
    " 'pwd'=>'pwd',"
    " 'whoami'=>'id -un',"
    " 'fileb64'=>'base64 -w0 \"$CHEF_PUSH_JOB_FILE\"',"
    " 'split'=>'printf out-no-newline; printf \"err line\\n\" >&2'}"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("knifejobs")
    server = Server(
        work / "state", voting_timeout=3, wait_complete_time=1, keep_alive_time=1
    ).start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        # the running clients publish their own node records (roles from their config files,
        # as a node set up as documented does); koff never runs, so its record is made here
        fleet.add("k1", whitelist=WHITELIST, extra='roles ["web"]\n')
        fleet.add("k2", whitelist=WHITELIST, extra='roles ["db"]\n')
        fleet.add("koff", whitelist=WHITELIST, start=False)
        body = {"name": "koff", "chef_type": "node", "json_class": "Chef::Node"}
        r = fleet.admin.post(f"/organizations/{ORG}/nodes", {**body, "run_list": ["role[web]"]})
        assert r.status_code == 201, r.text
        fleet.wait_available("k1", "k2")

        def published() -> bool:
            r = fleet.admin.get(f"/organizations/{ORG}/search/node?q=*:*")
            assert r.status_code == 200, r.text
            return sorted(row["name"] for row in r.json()["rows"]) == ["k1", "k2", "koff"]

        wait_for(published, 30, what="the three node records")
        yield fleet
    finally:
        fleet.close()
        server.kill()


def argv(fleet: ClientFleet, *args: str) -> list[str]:
    server = fleet.server
    return [
        sys.executable,
        "-m",
        "appliance",
        *args,
        "--server-url",
        f"{server.url}/organizations/{ORG}",
        "-u",
        "pivotal",
        "-k",
        str(server.pivotal_key),
    ]


def pushy(fleet: ClientFleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv(fleet, *args), capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def pushy_bytes(fleet: ClientFleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv(fleet, *args), capture_output=True, cwd=REPO, timeout=60)


def started(r: subprocess.CompletedProcess) -> str:
    """The id ``job start`` printed: first on stdout, or under -F json (stdout is the job's
    JSON alone) first on stderr."""
    json_only = r.stdout.startswith("{")
    match = JOB_ID.match(r.stderr if json_only else r.stdout)
    assert match, (r.returncode, r.stdout, r.stderr)
    if json_only:
        assert json.loads(r.stdout)["id"] == match.group(1)
    return match.group(1)


# ---------------------------------------------------------------------------------------------
# job start


def test_start_on_named_nodes_follows_and_prints_the_job(fleet):
    r = pushy(fleet, "job", "start", "ok", "k1", "k2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    job_id = started(r)
    assert "\r" not in r.stdout  # not a terminal: no progress redraws
    assert "Complete.\n" in r.stdout
    text = r.stdout.split("Complete.\n", 1)[1]
    assert text.startswith("command:     ok\ncreated_at:  ")
    assert f"\nid:          {job_id}\n" in text
    assert "\nnodes:\n  succeeded:\n    k1\n    k2\nrun_timeout: 3600\nstatus:      complete\n" in (
        text
    )
    assert fleet.job(job_id)["nodes"] == {"succeeded": ["k1", "k2"]}


def test_the_body_the_server_received(fleet, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("héllo file\n")
    me = pwd.getpwuid(os.getuid()).pw_name
    r = pushy(
        fleet,
        "job",
        "start",
        "env",
        "k1",
        "--capture",
        "--as-user",
        me,
        "--in-dir",
        str(tmp_path),
        "--with-env",
        '{"TEST_VAR": "foo"}',
        "--file",
        str(data),
        "--timeout",
        "120",
        "-F",
        "json",
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = fleet.job(JOB_ID.match(r.stderr).group(1))  # -F json: "Started." goes to stderr
    assert job["capture_output"] is True
    assert job["user"] == me and job["dir"] == str(tmp_path)
    assert job["env"] == {"TEST_VAR": "foo"}
    assert job["file_specified"] is True and job["run_timeout"] == 120
    assert json.loads(r.stdout)["id"] == job["id"]  # -F json: the job's JSON, nothing else
    env = fleet.output(job["id"], "k1").text
    assert "TEST_VAR=foo\n" in env and f"PWD={tmp_path}\n" in env
    full = fleet.admin.get(f"/organizations/{ORG}/pushy/jobs/{job['id']}?include_file=true")
    assert full.json()["file"] == "raw:héllo file\n"


def test_defaults_capture_false_no_timeout_and_quorum_rounding(fleet):
    r = pushy(fleet, "job", "start", "ok", "k1", "koff", "-q", "50%", "-F", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)  # knife: unavailable counts as success
    job_id = started(r)
    job = fleet.job(job_id)
    assert "capture_output" not in job and job["run_timeout"] == 3600
    assert job["nodes"] == {"succeeded": ["k1"], "unavailable": ["koff"]}
    events = fleet.admin.sse(f"/organizations/{ORG}/pushy/job_status_feed/{job_id}")
    start = events[0]
    assert start[0] in ("start", "summary")
    if start[0] == "start":
        assert start[2]["quorum"] == 1 and start[2]["node_count"] == 2  # ceil(50% of 2)


def test_binary_file_is_sent_as_base64(fleet, tmp_path):
    blob = bytes(range(256)) * 3
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    r = pushy(fleet, "job", "start", "fileb64", "k2", "--capture", "--file", str(path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    job_id = started(r)
    out = pushy_bytes(fleet, "job", "output", job_id, "k2")
    assert out.returncode == 0 and base64.b64decode(out.stdout) == blob


def test_failing_command_exits_1(fleet):
    r = pushy(fleet, "job", "start", "fail", "k1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Complete.\n" in r.stdout and "\nnodes:\n  failed: k1\n" in r.stdout
    assert fleet.job(started(r))["nodes"] == {"failed": ["k1"]}


def test_exit_strict_counts_unavailable_as_failure(fleet):
    knife = pushy(fleet, "job", "start", "ok", "k2", "koff", "-q", "1")
    strict = pushy(fleet, "job", "start", "ok", "k2", "koff", "-q", "1", "--exit-strict")
    for r in (knife, strict):
        assert fleet.job(started(r))["nodes"] == {"succeeded": ["k2"], "unavailable": ["koff"]}
    assert (knife.returncode, strict.returncode) == (0, 1), (knife.stderr, strict.stderr)
    ok = pushy(fleet, "job", "start", "ok", "k2", "--exit-strict")
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_quorum_failure_with_an_unavailable_node_exits_1(fleet):
    r = pushy(fleet, "job", "start", "ok", "k1", "koff")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Quorum_failed.\n" in r.stdout
    assert fleet.job(started(r))["status"] == "quorum_failed"


def jobs_count(fleet: ClientFleet) -> int:
    r = fleet.admin.get(f"/organizations/{ORG}/pushy/jobs")
    assert r.status_code == 200, r.text
    return len(r.json())


def test_a_job_naming_an_unknown_node_is_refused_before_it_starts(fleet):
    before = jobs_count(fleet)
    r = pushy(fleet, "job", "start", "ok", "k1", "nosuch", "nosuch2")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Started." not in r.stdout
    assert r.stderr.startswith(
        f"ERROR: no nodes named 'nosuch', 'nosuch2' in organization '{ORG}' (no client of "
        "that name); no job started (--allow-unknown-nodes starts it anyway"
    ), r.stderr
    assert jobs_count(fleet) == before
    # a registered node that is down is no typo: started, and counted unavailable
    r = pushy(fleet, "job", "start", "ok", "k1", "koff", "-q", "1")
    assert fleet.job(started(r))["nodes"] == {"succeeded": ["k1"], "unavailable": ["koff"]}
    # the option goes ahead: the server's answer to such a job is the original's
    r = pushy(fleet, "job", "start", "ok", "k1", "nosuch", "-q", "1", "--allow-unknown-nodes")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert fleet.job(started(r))["nodes"] == {"succeeded": ["k1"], "unavailable": ["nosuch"]}


def test_ctrl_c_while_following_leaves_the_job_running_and_says_how_to_reach_it(fleet):
    proc = subprocess.Popen(
        argv(fleet, "job", "start", "sleep", "k1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        match = JOB_ID.match(proc.stdout.readline())
        assert match, proc.stderr.read()
        job_id = match.group(1)
        fleet.wait_nodes(job_id, {"running": ["k1"]})
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert f"job {job_id} goes on on the server" in err, err
    assert f"pushy job status {job_id}" in err and f"pushy job abort {job_id}" in err, err
    assert "Traceback" not in err
    assert fleet.job(job_id)["status"] == "running"
    r = pushy(fleet, "job", "abort", job_id)  # the command it named works
    assert r.returncode == 0, r.stderr
    assert fleet.wait_job(job_id)["status"] == "aborted"


def test_nowait_exits_right_after_started(fleet):
    r = pushy(fleet, "job", "start", "slow", "k2", "--nowait")
    assert r.returncode == 0, (r.stdout, r.stderr)
    job_id = started(r)
    assert r.stdout == f"Started.  Job ID: {job_id}\n"
    assert fleet.job(job_id)["status"] in ("new", "voting", "running")
    fleet.wait_job(job_id)


def test_poll_mode_prints_knife_dots_and_status_lines(fleet):
    r = pushy(fleet, "job", "start", "slow", "k1", "--poll", "--poll-interval", "0.2")
    assert r.returncode == 0, (r.stdout, r.stderr)
    progress = r.stdout.split("\n", 1)[1].split("command:", 1)[0]
    assert re.fullmatch(
        r"(\.+(Voting\.|Running \(\d+/\d+ in progress\) \.\.\.)\n)*\.+Complete\.\n", progress
    ), progress
    assert "Running (1/1 in progress) ...\n" in progress  # the job takes 1.5 s; 0.2 s polls


def test_search_selects_nodes(fleet):
    r = pushy(fleet, "job", "start", "ok", "-s", "role:web", "-q", "50%", "-F", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = json.loads(r.stdout)  # -F json: nothing else on stdout; "Started." is on stderr
    assert JOB_ID.match(r.stderr).group(1) == job["id"]
    assert fleet.job(job["id"])["nodes"] == {"succeeded": ["k1"], "unavailable": ["koff"]}
    bad = pushy(fleet, "job", "start", "ok", "-s", "role:(web")
    assert bad.returncode == 1 and bad.stderr.startswith("ERROR: knife search failed: ")
    listed = pushy(fleet, "node", "list", "--search", "role:web")
    assert listed.returncode == 0 and listed.stdout == "k1\nkoff\n"
    status = pushy(fleet, "node", "status", "role:db")
    assert status.returncode == 0 and status.stdout == "k2\tavailable\n"


def test_argument_and_option_errors(fleet, tmp_path):
    r = pushy(fleet, "job", "start")
    assert r.returncode == 1 and r.stderr == "ERROR: No job specified.\n"
    assert r.stdout.startswith("USAGE: pushy job start")
    r = pushy(fleet, "job", "start", "ok")
    assert r.returncode == 1
    assert r.stderr == (
        "ERROR: No nodes to run job on. Specify nodes as arguments or use -s to specify a "
        "search query.\n"
    )
    for quorum in ("abc", "50.5%"):
        r = pushy(fleet, "job", "start", "ok", "k1", "-q", quorum)
        assert r.returncode == 100
        assert r.stderr == "ERROR: Invalid Format please enter integer or percent\n"
    r = pushy(fleet, "job", "start", "ok", "k1", "--with-env", '["A=b"]')
    assert r.returncode == 1 and "--with-env must be a JSON object" in r.stderr
    r = pushy(fleet, "job", "start", "ok", "k1", "--with-env", "{nope")
    assert r.returncode == 1 and "--with-env is not valid JSON" in r.stderr
    missing = tmp_path / "missing.txt"
    r = pushy(fleet, "job", "start", "ok", "k1", "--file", str(missing))
    assert r.returncode == 1 and r.stderr == f"ERROR: {missing} not found\n"
    assert "Started." not in r.stdout


def test_server_400_is_an_error_without_v1_fallback(fleet):
    r = pushy(fleet, "job", "start", "ok", "k1", "--with-env", '{"A": {"nested": 1}}')
    assert r.returncode == 100, (r.stdout, r.stderr)
    assert r.stderr.startswith("ERROR: ") and "Falling back" not in r.stderr + r.stdout
    assert "Started." not in r.stdout


# ---------------------------------------------------------------------------------------------
# list, status, output, abort, watch


def test_job_list_and_status(fleet):
    first = started(pushy(fleet, "job", "start", "ok", "k1"))
    second = started(pushy(fleet, "job", "start", "fail", "k2"))
    r = pushy(fleet, "job", "list", "-F", "json")
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)
    ids = [j["id"] for j in jobs]
    assert ids.index(second) < ids.index(first)  # newest first
    assert all("nodes" not in j for j in jobs)
    r = pushy(fleet, "job", "list", "--limit", "1", "-F", "json")
    assert [j["id"] for j in json.loads(r.stdout)] == [ids[0]]
    r = pushy(fleet, "job", "list", "--status", "complete", "--limit", "50", "-F", "json")
    assert r.returncode == 0 and {j["status"] for j in json.loads(r.stdout)} == {"complete"}
    r = pushy(fleet, "job", "list")
    assert r.returncode == 0 and f"id:          {second}\n" in r.stdout
    assert "\n\ncommand:" in r.stdout  # hashes in a list are separated by a blank line

    r = pushy(fleet, "job", "status", first)
    assert r.returncode == 0
    job = fleet.job(first)
    assert r.stdout == (
        f"command:     ok\ncreated_at:  {job['created_at']}\nid:          {first}\n"
        f"nodes:\n  succeeded: k1\nrun_timeout: 3600\nstatus:      complete\n"
        f"updated_at:  {job['updated_at']}\n"
    )
    r = pushy(fleet, "job", "status", first, "-F", "json")
    assert r.returncode == 0 and r.stdout == json.dumps(job, indent=2) + "\n"
    r = pushy(fleet, "job", "status", "-F", "json")
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)
    r = pushy(fleet, "job", "status", "0" * 32)
    assert r.returncode == 100 and "not found" in r.stderr and r.stderr.startswith("ERROR: ")


def test_job_output_writes_raw_bytes(fleet):
    job_id = started(pushy(fleet, "job", "start", "split", "k1", "--capture"))
    out = pushy_bytes(fleet, "job", "output", job_id, "k1")
    assert out.returncode == 0 and out.stdout == b"out-no-newline"
    err = pushy_bytes(fleet, "job", "output", job_id, "k1", "k2", "--channel", "stderr")
    assert err.returncode == 0 and err.stdout == b"err line\n"
    bad = pushy(fleet, "job", "output", job_id, "k1", "--channel", "both")
    assert bad.returncode == 100
    assert bad.stderr == "ERROR: Invalid Format please enter stdout or stderr\n"
    missing = pushy(fleet, "job", "output", job_id, "k2")
    assert missing.returncode == 100 and missing.stderr.startswith("ERROR: ")


def test_job_output_without_a_node_prints_every_node(fleet):
    job_id = started(pushy(fleet, "job", "start", "split", "k1", "k2", "--capture"))
    out = pushy_bytes(fleet, "job", "output", job_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"== k1 (stdout) ==\nout-no-newline\n== k2 (stdout) ==\nout-no-newline\n"
    err = pushy_bytes(fleet, "job", "output", job_id, "--channel", "stderr")
    assert err.stdout == b"== k1 (stderr) ==\nerr line\n== k2 (stderr) ==\nerr line\n"
    plain = started(pushy(fleet, "job", "start", "ok", "k1"))  # no --capture
    none = pushy(fleet, "job", "output", plain)
    assert none.returncode == 100
    assert (
        none.stderr
        == f"ERROR: no node of job {plain} has captured stdout (started with --capture?)\n"
    )


def test_job_abort_of_a_running_sleep(fleet):
    job_id = started(pushy(fleet, "job", "start", "sleep", "k2", "--nowait"))
    fleet.wait_nodes(job_id, {"running": ["k2"]})
    r = pushy(fleet, "job", "abort", job_id, "-F", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["status"] == "aborted"
    assert fleet.wait_job(job_id)["status"] == "aborted"
    again = pushy(fleet, "job", "abort", job_id)
    assert again.returncode == 1 and "already finished" in again.stderr
    fleet.wait_available("k2")


def test_job_watch_prints_one_line_per_event(fleet):
    job_id = started(pushy(fleet, "job", "start", "slow", "k1", "--nowait"))
    r = pushy(fleet, "job", "watch", job_id)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = [line.split("  ", 2)[0] for line in lines]
    assert names[0] == "start" and names[-1] == "job_complete", lines
    assert "run_start" in names and "run_complete" in names
    for line in lines:
        name, ident, data = line.split("  ", 2)
        assert ident and isinstance(json.loads(data), dict)
    later = pushy(fleet, "job", "watch", job_id, "-F", "json")  # after the linger: summary
    events = [json.loads(line) for line in later.stdout.splitlines()]
    assert later.returncode == 0 and events[-1]["event"] in ("job_complete", "summary")
    assert all(set(e) == {"event", "id", "data"} for e in events)


def test_org_watch_until_interrupted(fleet):
    proc = subprocess.Popen(
        argv(fleet, "job", "watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        job_ids = []

        def saw_a_job() -> bool:
            job_ids.append(fleet.post("ok", ["k1"]))
            fleet.wait_job(job_ids[-1])
            return any(b"job_complete" in line for line in lines)

        wait_for(saw_a_job, 30, step=0.2, what="an org feed event")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(5)
    text = b"".join(lines).decode()
    assert any(f'"job":"{j}"' in text for j in job_ids), text


# ---------------------------------------------------------------------------------------------
# node status and list


def test_node_status_lines(fleet):
    r = pushy(fleet, "node", "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "k1\tavailable" in lines and "k2\tavailable" in lines
    r = pushy(fleet, "node", "status", "k2", "koff")
    assert r.returncode == 0 and r.stdout == "k2\tavailable\nkoff\tunavailable\n"
    r = pushy(fleet, "node", "status", "k1", "-F", "json")
    assert json.loads(r.stdout) == [
        {"node_name": "k1", "status": "online", "availability": "available"}
    ]


def test_node_status_of_a_node_that_does_not_exist_says_so_and_fails(fleet):
    r = pushy(fleet, "node", "status", "k1", "nosuch", "koff")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "k1\tavailable\nkoff\tunavailable\n"  # a registered node that is down
    assert "no node named 'nosuch' in organization" in r.stderr
    r = pushy(fleet, "node", "status", "nosuch", "-F", "json")
    assert r.returncode == 1 and json.loads(r.stdout) == []


def test_node_status_lists_a_stopped_node_as_unavailable(fleet):
    """The server lists only its online nodes (as the original does); the CLI adds the
    organization's other nodes as knife shows a node that is down: NAME<TAB>unavailable."""
    client = fleet.add("kstop", whitelist=WHITELIST)
    try:
        fleet.wait_available("kstop")
        body = {"name": "kstop", "chef_type": "node", "json_class": "Chef::Node"}
        if fleet.admin.put(f"/organizations/{ORG}/nodes/kstop", body).status_code == 404:
            made = fleet.admin.post(f"/organizations/{ORG}/nodes", body)  # 409: the client's
            assert made.status_code in (201, 409), made.text
        assert "kstop\tavailable" in pushy(fleet, "node", "status").stdout.splitlines()
        assert client.stop() == 0
        wait_for(lambda: "kstop" not in fleet.states(), 30, what="kstop gone from node_states")
        r = pushy(fleet, "node", "status")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "kstop\tunavailable" in lines, lines
        assert "koff\tunavailable" in lines and "k1\tavailable" in lines, lines
        assert lines == sorted(lines)
        r = pushy(fleet, "node", "status", "kstop")
        assert (r.returncode, r.stdout) == (0, "kstop\tunavailable\n"), r.stderr
        r = pushy(fleet, "node", "status", "-F", "json")
        assert {"node_name": "kstop", "availability": "unavailable"} in json.loads(r.stdout)
    finally:
        client.kill()
        fleet.clients.pop("kstop", None)
        fleet.admin.delete(f"/organizations/{ORG}/nodes/kstop")
        fleet.admin.delete(f"/organizations/{ORG}/clients/kstop")


def test_node_list(fleet):
    r = pushy(fleet, "node", "list")
    assert r.returncode == 0 and r.stdout == "k1\nk2\nkoff\n", r.stderr
    r = pushy(fleet, "node", "list", "-F", "json")
    assert json.loads(r.stdout) == ["k1", "k2", "koff"]


# ---------------------------------------------------------------------------------------------
# a terminal


def test_start_on_a_terminal_shows_progress_then_a_summary(fleet):
    text = run_on_pty(argv(fleet, "job", "start", "slow", "k1", "k2"), dict(os.environ), REPO)
    assert JOB_ID.match(text), text
    redraws = text.split("\n", 1)[1].split("\r\x1b[K")
    assert redraws[0] == "" and len(redraws) >= 4, redraws  # drawn, redrawn, finished
    assert any("Running" in line for line in redraws), redraws
    assert any("waiting for: k1, k2" in line for line in redraws), redraws
    summary, rest = redraws[-1].split("\n", 1)
    assert re.fullmatch(r"Complete  \d+s  succeeded 2", summary), summary
    assert "\n" not in "".join(redraws[:-1])  # the live line never scrolled
    assert "command:" in rest and "\x1b[36m" in rest  # then the job, keys cyan on a tty
    assert "Voting." not in text and "Complete.\n" not in text  # no knife status lines


def test_no_colour_with_no_color_or_the_flag_on_a_terminal(fleet):
    job_id = fleet.run("ok", ["k1"])["id"]
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    coloured = run_on_pty(argv(fleet, "job", "status", job_id), env, REPO)
    assert "\x1b[36mcommand:" in coloured, coloured
    for extra, more in ((["--no-color"], {}), ([], {"NO_COLOR": "1"})):
        text = run_on_pty(argv(fleet, "job", "status", job_id, *extra), {**env, **more}, REPO)
        assert "\x1b[" not in text and "command:     ok\n" in text, (extra, text)


# ---------------------------------------------------------------------------------------------
# following, in process against the real server


def api_for(fleet: ClientFleet) -> Api:
    server = fleet.server
    return Api(Credentials(server.url, ORG, "pivotal", server.pivotal_key, "test"))


def test_follower_uses_the_event_feed_and_resumes_after_an_id(fleet):
    api = api_for(fleet)
    job_id = fleet.post("slow", ["k2"])
    out = io.StringIO()
    follower = Follower(api, job_id, out=out)
    job = follower.run()
    assert job["status"] == "complete" and follower.used_feed  # no fallback to polling
    assert out.getvalue().endswith("Running (1/1 in progress) ...\nComplete.\n")

    job_id = fleet.post("slow", ["k1"])
    fleet.wait_nodes(job_id, {"running": ["k1"]})  # its first events exist
    stream = EventStream(
        api, api.org_path(f"pushy/jobs_status_feed/{job_id}"), last_event_id="job-2"
    )
    stream.start()
    ids = []
    try:
        for _ in range(100):
            item = stream.get(20)
            assert item is not None and item[0] in ("event", "ended"), item
            if item[0] == "ended":
                break
            ids.append(item[1].id)
    finally:
        stream.close()
    assert ids[0] == "job-3" and len(ids) >= 3, ids  # resumed after job-2, through job_complete
