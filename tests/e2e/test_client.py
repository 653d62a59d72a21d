"""``pushy client`` end to end: real client processes, configured like the original, run jobs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO, ClientProcess, Server, setup_org, wait_for

WHITELIST = (
    '{"chef-client"=>"chef-client", "hello"=>"echo hello from $CHEF_PUSH_NODE_NAME", '
    '"fail"=>"echo oops >&2; exit 3", /^sleep ([0-9]+)$/=>"sleep \\\\1"}'
)


@pytest.fixture
def fleet(tmp_path):
    server = Server(tmp_path / "state").start()
    admin, keys = setup_org(server, "cli", ("c1", "c2"))
    clients = [
        ClientProcess(server, "cli", name, keys[name], tmp_path / "clients", whitelist=WHITELIST)
        for name in ("c1", "c2")
    ]
    for client in clients:
        client.start()
    try:
        yield server, admin, clients
    finally:
        for client in clients:
            client.kill()
        server.kill()


def available(admin, names) -> bool:
    states = admin.get("/organizations/cli/pushy/node_states").json()
    return {s["node_name"] for s in states if s["availability"] == "available"} >= set(names)


def run_job(admin, body, seconds=30) -> dict:
    r = admin.post("/organizations/cli/pushy/jobs", body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    return wait_for(
        lambda: (
            (j := admin.get(f"/organizations/cli/pushy/jobs/{job_id}").json())["status"]
            not in ("new", "voting", "running")
            and j
        ),
        seconds,
    )


def test_clients_connect_and_run_a_captured_job(fleet):
    server, admin, clients = fleet
    wait_for(lambda: available(admin, ["c1", "c2"]), 30, what="both clients available")
    job = run_job(admin, {"command": "hello", "nodes": ["c1", "c2"], "capture_output": True})
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": ["c1", "c2"]}
    for name in ("c1", "c2"):
        r = admin.get(
            f"/organizations/cli/pushy/jobs/{job['id']}/output/{name}/stdout",
            headers={"Accept": "application/octet-stream"},
        )
        assert r.content == f"hello from {name}\n".encode()


def test_failures_and_refusals(fleet):
    server, admin, clients = fleet
    wait_for(lambda: available(admin, ["c1", "c2"]), 30, what="both clients available")
    job = run_job(admin, {"command": "fail", "nodes": ["c1"], "capture_output": True})
    assert job["nodes"] == {"failed": ["c1"]}
    r = admin.get(
        f"/organizations/cli/pushy/jobs/{job['id']}/output/c1/stderr",
        headers={"Accept": "application/octet-stream"},
    )
    assert r.content == b"oops\n"
    job = run_job(admin, {"command": "rm -rf /", "nodes": ["c1", "c2"]})
    assert (job["status"], job["nodes"]) == ("quorum_failed", {"nacked": ["c1", "c2"]})
    job = run_job(admin, {"command": "sleep 0", "nodes": ["c2"]})
    assert job["nodes"] == {"succeeded": ["c2"]}


def test_abort_kills_the_running_command(fleet):
    server, admin, clients = fleet
    wait_for(lambda: available(admin, ["c1"]), 30, what="c1 available")
    r = admin.post("/organizations/cli/pushy/jobs", {"command": "sleep 300", "nodes": ["c1"]})
    job_id = r.json()["id"]
    wait_for(
        lambda: (
            admin.get(f"/organizations/cli/pushy/jobs/{job_id}").json()["nodes"]
            == {"running": ["c1"]}
        ),
        30,
    )
    assert _job_processes(job_id), "the job's command is not running"
    assert admin.post(f"/organizations/cli/pushy/jobs/{job_id}/abort").status_code == 200
    wait_for(lambda: not _job_processes(job_id), 15, what="the job's process gone")
    wait_for(lambda: available(admin, ["c1"]), 30, what="c1 available again")
    job = run_job(admin, {"command": "hello", "nodes": ["c1"]})
    assert job["nodes"] == {"succeeded": ["c1"]}


def _job_processes(job_id: str) -> list[int]:
    """Processes of this job: they carry its CHEF_PUSH_JOB_ID (other `sleep 300`s on the
    machine are not ours)."""
    marker = f"CHEF_PUSH_JOB_ID={job_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def test_sigterm_stops_the_client_cleanly(fleet):
    server, admin, clients = fleet
    wait_for(lambda: available(admin, ["c1"]), 30, what="c1 available")
    assert clients[0].stop() == 0
    assert "received TERM, shutting down" in clients[0].log()


def test_version_flag():
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "client", "-v"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0 and r.stdout.startswith("Push Client: ")


def test_client_started_before_the_server_comes_up_by_itself(tmp_path):
    ports = _free_ports(3)
    settings = dict(zip(("api_port", "command_port", "server_heartbeat_port"), ports, strict=True))
    server = Server(tmp_path / "state", **settings).start()
    admin, keys = setup_org(server, "cli", ("early",))
    server.stop()
    client = ClientProcess(server, "cli", "early", keys["early"], tmp_path / "clients").start()
    try:
        time.sleep(2)  # the client retries with backoff meanwhile
        assert client.proc.poll() is None, client.log()
        server.start()
        wait_for(lambda: available(admin, ["early"]), 60, what="the early client available")
    finally:
        client.kill()
        server.kill()


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_client_publishes_its_node_record_for_search(fleet):
    server, admin, clients = fleet
    node = wait_for(
        lambda: (r := admin.get("/organizations/cli/nodes/c1")).status_code == 200 and r.json(),
        30,
        what="c1's node record",
    )
    automatic = node["automatic"]
    assert node["name"] == "c1" and node["chef_environment"] == "_default"
    assert automatic["os"] == "linux" and automatic["hostname"] and automatic["fqdn"]
    assert automatic["ipaddress"] == "127.0.0.1"
    assert {"platform", "platform_version", "kernel"} <= set(automatic)
