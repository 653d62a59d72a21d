"""``pushy job start --stream`` end to end: the CLI as a subprocess against a real server with
real ``pushy client`` processes; each node's output lines arrive prefixed with its name, in
order, where the progress goes (stdout, or stderr with ``-F json``), coloured only on a
terminal and never with ``NO_COLOR``. Also ``job start`` / ``job status`` text output of a
failed and a nacked node (their ``node_details``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.knife.stream import RESET, STDERR_COLOUR, node_colour
from tests.support import REPO, ClientFleet, Server, run_on_pty

ORG = "jobstream"
NODES = ["n1", "n2"]
JOB_ID = re.compile(r"Started\.  Job ID: ([0-9a-f]{32})\n")
WHITELIST = (
    "{"
    # a line on stdout and one on stderr every 0.2 s, then an unfinished line
    + r"/^tick ([0-9]+)$/=>'for i in $(seq 1 \1); do echo line $i; echo warn $i >&2; "
    + "sleep 0.2; done; printf tail-$CHEF_PUSH_NODE_NAME', "
    + "'quick'=>'echo fast', "
    + "'fail'=>'echo bad >&2; exit 3'"
    + "}"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work: Path = tmp_path_factory.mktemp("jobstream")
    server = Server(work / "state", voting_timeout=3, wait_complete_time=1).start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        for name in NODES:
            fleet.add(name, whitelist=WHITELIST)
        fleet.wait_available(*NODES)
        yield fleet
    finally:
        fleet.close()
        server.kill()


@pytest.fixture(autouse=True)
def idle(fleet):
    fleet.wait_available(*NODES)


def argv(fleet: ClientFleet, *args: str) -> list[str]:
    server = fleet.server
    command = [sys.executable, "-m", "appliance", *args, "--server-url"]
    return command + [
        f"{server.url}/organizations/{ORG}",
        "-u",
        "pivotal",
        "-k",
        str(server.pivotal_key),
    ]


def pushy(fleet: ClientFleet, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        argv(fleet, *args), capture_output=True, text=True, cwd=REPO, timeout=60, env=env
    )


def lines_of(text: str, head: str) -> list[str]:
    """The texts of the lines that start with ``head`` (e.g. ``n1: ``), in order."""
    return [line[len(head) :] for line in text.splitlines() if line.startswith(head)]


def check_streamed(text: str, ticks: int) -> None:
    for node in NODES:
        out = [f"line {i}" for i in range(1, ticks + 1)] + [f"tail-{node}"]
        assert lines_of(text, f"{node}: ") == out, text
        assert lines_of(text, f"{node} [stderr]: ") == [f"warn {i}" for i in range(1, ticks + 1)]


def test_stream_prints_each_nodes_lines_prefixed_in_order(fleet):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    r = pushy(fleet, "job", "start", "--stream", "tick 3", *NODES, env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    job_id = JOB_ID.match(r.stdout).group(1)
    check_streamed(r.stdout, 3)
    assert "\x1b" not in r.stdout and "\r" not in r.stdout  # not a terminal: no colour
    # knife's status lines around the output, the output before the end, then the job
    head, job = r.stdout.split("Complete.\n", 1)
    assert "n1: tail-n1" in head and "n2: tail-n2" in head
    assert "Running (1/2 in progress) ...\n" in head
    assert job.startswith("capture_output: true\n") and f"\nid:             {job_id}\n" in job
    assert "nodes:\n  succeeded:\n    n1\n    n2\n" in job
    assert "node_details" not in job  # both exited 0: printed as knife prints it
    assert r.stderr == ""


def test_stream_with_json_keeps_stdout_json_only(fleet):
    r = pushy(fleet, "job", "start", "--stream", "tick 2", *NODES, "-F", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = json.loads(r.stdout)  # the job's JSON alone
    assert job["capture_output"] is True and job["nodes"] == {"succeeded": NODES}
    assert JOB_ID.match(r.stderr).group(1) == job["id"]
    check_streamed(r.stderr, 2)
    assert "\x1b" not in r.stderr


def test_a_quick_commands_output_is_not_lost(fleet):
    # the output may come before the feed is open: what never came is read at the end
    for _ in range(3):
        r = pushy(fleet, "job", "start", "--stream", "quick", *NODES)
        assert r.returncode == 0, (r.stdout, r.stderr)
        for node in NODES:
            assert lines_of(r.stdout, f"{node}: ") == ["fast"], r.stdout


def on_a_terminal(fleet: ClientFleet, env: dict[str, str], *args: str) -> str:
    return run_on_pty(argv(fleet, "job", "start", "--stream", *args), env, REPO)


def test_on_a_terminal_names_are_coloured_and_the_progress_line_stays_whole(fleet):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    text = on_a_terminal(fleet, env, "tick 2", *NODES)
    body = text.split("\n", 1)[1]  # after "Started."
    *segments, last = body.split("\r\x1b[K")
    streamed = ""
    for segment in segments:  # either the live line (redrawn in place) or whole output lines
        assert segment == "" or "\n" not in segment or segment.endswith("\n"), segments
        if "\n" in segment:
            streamed += segment
    summary, _ = last.split("\n", 1)
    assert re.fullmatch(r"Complete  \d+s  succeeded 2", summary), last
    for node in NODES:
        c = node_colour(node)
        assert lines_of(streamed, f"{c}{node}:{RESET} ") == ["line 1", "line 2", f"tail-{node}"]
        head = f"{c}{node}{RESET} {STDERR_COLOUR}[stderr]:{RESET} "
        assert lines_of(streamed, head) == ["warn 1", "warn 2"]
    assert any(s and "\n" not in s and "Running" in s for s in segments), segments

    plain = on_a_terminal(fleet, {**env, "NO_COLOR": "1"}, "tick 1", *NODES)
    assert "n1: line 1\n" in plain and "n2 [stderr]: warn 1\n" in plain, plain
    assert node_colour("n1") + "n1" not in plain and STDERR_COLOUR not in plain


# ---------------------------------------------------------------------------------------------
# a failed node's exit status and a nacked node's reason, in the text output


def test_a_failed_nodes_exit_status_is_shown(fleet):
    r = pushy(fleet, "job", "start", "--stream", "fail", "n1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "n1 [stderr]: bad\n" in r.stdout
    details = "\nnode_details:\n  n1:\n    exit_status: 3\n"
    assert details in r.stdout and "\nnodes:\n  failed: n1\n" in r.stdout, r.stdout
    status = pushy(fleet, "job", "status", JOB_ID.match(r.stdout).group(1))
    assert status.returncode == 0 and details in status.stdout, status.stdout
    assert "signal" not in status.stdout  # the fields left null are not shown


def test_a_nacked_nodes_reason_is_shown(fleet):
    r = pushy(fleet, "job", "start", "not-whitelisted", "n2")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Quorum_failed.\n" in r.stdout and "\nnodes:\n  nacked: n2\n" in r.stdout
    reason = re.search(r"\nnode_details:\n  n2:\n    reason: (.+)\n", r.stdout)
    assert reason and "'not-whitelisted' is not in the whitelist" in reason.group(1), r.stdout
    status = pushy(fleet, "job", "status", JOB_ID.match(r.stdout).group(1))
    assert status.returncode == 0 and reason.group(0) in status.stdout, status.stdout
