"""Rolling execution end to end (issue 15): real ``pushy client`` processes run a job with
``max_concurrency`` / ``max_errors``; each command writes its node's own start and end times,
so the window is checked from the clients' side, not from what the server believes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import job_events
from tests.support import REPO, ClientFleet, Server, wait_for

ORG = "rolling"
NODES = ["r1", "r2", "r3", "r4", "r5"]
FAILING = ("r1", "r2")


def whitelist(work: Path) -> str:
    stamp = f"{work}/$CHEF_PUSH_NODE_NAME.times"
    times = f"echo start $(date +%s.%N) >> {stamp}; sleep \\1; echo end $(date +%s.%N) >> {stamp}"
    fails = "case $CHEF_PUSH_NODE_NAME in " + "|".join(FAILING) + ") exit 3;; esac"
    return (
        "{"
        + f"/^stamp ([0-9.]+)$/=>'{times}', "
        + f"/^failsome ([0-9.]+)$/=>'{times}; {fails}'"
        + "}"
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rollout")


@pytest.fixture(scope="module")
def fleet(work):
    # a 1 s heartbeat: a client notices a restart only after 3 s, longer than these restarts
    server = Server(work / "state", heartbeat_interval=1000).start()
    fleet = ClientFleet(server, ORG, work / "clients")
    try:
        for name in NODES:
            fleet.add(name, whitelist=whitelist(work))
        fleet.wait_available(*NODES)
        yield fleet
    finally:
        fleet.close()
        server.kill()


@pytest.fixture(autouse=True)
def fresh_times(work, fleet):
    for path in work.glob("*.times"):
        path.unlink()
    fleet.wait_available(*NODES)


def runs(work: Path) -> dict[str, tuple[float, float]]:
    """Each node's run as its command saw it: (start, end), from its own clock readings."""
    out = {}
    for path in work.glob("*.times"):
        stamps = dict(line.split() for line in path.read_text().splitlines())
        out[path.stem] = (float(stamps["start"]), float(stamps["end"]))
    return out


def most_at_once(spans: dict[str, tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = peak = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def test_the_window_is_never_exceeded_and_slides(work, fleet):
    job = fleet.run("stamp 0.4", NODES, max_concurrency=2)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": NODES}
    assert job["max_concurrency"] == 2 and "stopped_by" not in job
    spans = runs(work)
    assert sorted(spans) == NODES
    assert most_at_once(spans) == 2  # two at a time: never three, and not one by one
    # (the order of the starts is request order as sent; nodes sent run together may start in
    # either order: test_rollout.py in the unit tests checks the order the FSM sends)


def test_a_percentage_window(work, fleet):
    job = fleet.run("stamp 0.3", NODES, max_concurrency="20%")  # one node at a time
    assert job["status"] == "complete" and job["max_concurrency"] == "20%"
    assert most_at_once(runs(work)) == 1


def test_max_errors_stops_the_rollout(work, fleet):
    job = fleet.run("failsome 0.2", NODES, max_concurrency=1, max_errors=1)
    assert job["status"] == "aborted" and job["stopped_by"] == "max_errors"
    assert job["nodes"] == {"aborted": ["r3", "r4", "r5"], "failed": ["r1", "r2"]}
    assert sorted(runs(work)) == ["r1", "r2"]  # the others never started their command
    events = [(name, data) for name, _, data in job_events(fleet.admin, ORG, job["id"])]
    stop = [data for name, data in events if name == "rollout_stopped"]
    assert len(stop) == 1 and stop[0]["reason"] == "max_errors"
    done = events[-1]
    assert done[0] == "job_complete"
    assert (done[1]["status"], done[1]["reason"]) == ("aborted", "max_errors")
    fleet.wait_available(*NODES)  # the nodes told to abort are idle again
    again = fleet.run("stamp 0.1", ["r3"])
    assert again["status"] == "complete"


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_restart_mid_rollout_resumes_the_window(work, fleet, how):
    """A ``run`` goes out only once the record of it is on disk, so even a kill -9 right after
    a node started leaves it counted in the window: the restarted server never starts a second
    node beside it."""
    server = fleet.server
    job_id = fleet.post("stamp 1.5", NODES[:4], max_concurrency=1)
    wait_for(lambda: (work / "r1.times").exists(), 30, what="the first node started")
    ports = {k: server.ports[k] for k in ("api_port", "command_port", "server_heartbeat_port")}
    assert server.proc is not None
    server.proc.send_signal(how)
    wait_for(lambda: server.proc.poll() is not None, 30, what="the server stopped")
    server.settings.update(ports)
    server.start()
    job = fleet.wait_job(job_id, seconds=60)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": NODES[:4]}
    spans = runs(work)
    assert sorted(spans) == NODES[:4] and most_at_once(spans) == 1


# ---------------------------------------------------------------------------------------------
# pushy job start --max-concurrency / --max-errors


def pushy(fleet: ClientFleet, *args: str) -> subprocess.CompletedProcess:
    server = fleet.server
    command = [sys.executable, "-m", "appliance", *args, "--server-url"]
    command += [f"{server.url}/organizations/{ORG}", "-u", "pivotal", "-k", str(server.pivotal_key)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_job_start_sends_the_limits_and_exits_by_the_outcome(work, fleet):
    r = pushy(
        fleet, "job", "start", "stamp 0.2", *NODES[:3], "--max-concurrency", "1", "-F", "json"
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    job = json.loads(r.stdout)  # -F json: the job's JSON alone on stdout
    assert job["max_concurrency"] == 1 and job["nodes"] == {"succeeded": NODES[:3]}
    assert most_at_once(runs(work)) == 1
    fleet.wait_available(*NODES)
    r = pushy(
        fleet,
        "job",
        "start",
        "failsome 0.1",
        *NODES,
        "--max-concurrency",
        "20%",
        "--max-errors",
        "0",
    )
    assert r.returncode == 1, (r.stdout, r.stderr)  # knife's "the job did not succeed"
    assert re.search(r"^stopped_by: +max_errors$", r.stdout, re.M), r.stdout
    assert re.search(r"^max_concurrency: +20%$", r.stdout, re.M), r.stdout


def test_job_start_refuses_a_bad_limit_before_asking_the_server(fleet):
    r = pushy(fleet, "job", "start", "stamp 0.1", "r1", "--max-errors", "lots")
    assert r.returncode == 100
    assert "--max-errors takes a count (e.g. 10) or a percentage (e.g. 25%), not 'lots'" in r.stderr
    r = pushy(fleet, "job", "start", "stamp 0.1", "r1", "--max-concurrency", "0")
    assert r.returncode == 100  # the server's 400, reported with its message
    assert "invalid max_concurrency (expected an integer >= 1" in r.stderr
