"""Edges: the node sockets in separate processes (docs/architecture.md "Edges").

Real server, real ``pushy edge`` processes (the server's own, and one started by hand on
another loopback address as a remote host's would be), real ``pushy client`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from appliance.core import edgelink
from tests.support import REPO, ClientFleet, Server, wait_for

TRUE = '{"chef-client"=>"true"}'
SLEEPER = '{"chef-client"=>"chef-client", "work"=>"sleep 3; echo done-$(hostname)"}'


def counters(server: Server) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/pushy/_status?counters=true", timeout=10)
    return r.json()["counters"]


def edges(server: Server) -> list[dict[str, Any]]:
    return counters(server)["edges"]


@pytest.fixture
def server(tmp_path: Path):
    with Server(tmp_path / "state", edge_processes=2) as srv:
        yield srv


@pytest.fixture
def fleet(server: Server, tmp_path: Path):
    f = ClientFleet(server, "edgeorg", tmp_path / "clients")
    yield f
    f.close()


def test_jobs_run_through_edges_and_steady_heartbeats_end_there(server, fleet) -> None:
    names = [f"n{i}" for i in range(4)]
    for name in names:
        fleet.add(name, whitelist=TRUE)
    fleet.wait_available(*names)
    job = fleet.run("chef-client", names)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": names}, job
    found = wait_for(
        lambda: (e := edges(server)) and sum(x["nodes"] for x in e) == 4 and e,
        15,
        what="the edges report the 4 nodes",
    )
    assert len(found) == 2 and all(x["pid"] and x["pid"] != server.proc.pid for x in found)
    # once the nodes are idle their heartbeats (5 a second each here) end at the edges
    wait_for(lambda: fleet.states() == dict.fromkeys(names, "available"), 15, what="idle")
    settled = sum(x["absorbed"] for x in edges(server)) + 10
    wait_for(  # the edges report every 0.25 s: let the job's last messages be counted
        lambda: sum(x["absorbed"] for x in edges(server)) > settled, 15, what="settled"
    )
    first = edges(server)
    absorbed = sum(x["absorbed"] for x in first)
    forwarded = sum(x["forwarded"] for x in first)
    wait_for(
        lambda: sum(x["absorbed"] for x in edges(server)) > absorbed + 40,
        15,
        what="40 more heartbeats absorbed",
    )
    assert sum(x["forwarded"] for x in edges(server)) == forwarded
    assert counters(server)["received"]["heartbeat"] >= absorbed


def _kill_an_edge_with_nodes(server: Server) -> dict[str, Any]:
    holder = wait_for(
        lambda: next((x for x in edges(server) if x["nodes"] > 0), None),
        15,
        what="an edge that holds nodes",
    )
    os.kill(holder["pid"], signal.SIGKILL)
    return holder


def test_an_edge_killed_mid_job_is_restarted_and_the_job_finishes_with_its_output(
    server, fleet
) -> None:
    names = [f"n{i}" for i in range(4)]
    for name in names:
        fleet.add(name, whitelist=SLEEPER)
    fleet.wait_available(*names)
    job_id = fleet.post("work", names, capture_output=True)
    wait_for(lambda: fleet.job(job_id)["nodes"] == {"running": names}, 20, what="running")
    killed = _kill_an_edge_with_nodes(server)
    job = fleet.wait_job(job_id, 40)
    assert job["status"] == "complete" and job["nodes"] == {"succeeded": names}, job
    for name in names:
        r = fleet.output(job_id, name)
        assert r.status_code == 200 and r.text.startswith("done-"), (name, r.text)
    # the edge came back as a new process; every node is served again, and runs jobs
    wait_for(
        lambda: any(
            x["name"] == killed["name"] and x["pid"] != killed["pid"] for x in edges(server)
        ),
        20,
        what="the killed edge restarted",
    )
    fleet.wait_available(*names)
    assert fleet.run("work", names)["status"] == "complete"
    assert "edge local-" in server.log() and "is gone" in server.log()


def test_nodes_of_a_killed_edge_move_to_another_one_without_a_reset(server, fleet) -> None:
    names = [f"m{i}" for i in range(6)]
    for name in names:
        fleet.add(name, whitelist=TRUE)
    fleet.wait_available(*names)
    before = {x["name"]: x for x in edges(server)}
    killed = _kill_an_edge_with_nodes(server)
    fleet.wait_available(*names, seconds=40)
    # none of the moved nodes was taken offline (a ghost that speaks again resumes)
    log = server.log()
    assert "is offline" not in log, log[-3000:]
    wait_for(
        lambda: (e := edges(server)) and sum(x["nodes"] for x in e) == 6,
        20,
        what="all 6 nodes held again",
    )
    wait_for(
        lambda: {x["name"] for x in edges(server)} == set(before),
        20,
        what="the killed edge back",
    )
    assert killed["nodes"] > 0
    assert fleet.run("chef-client", names)["status"] == "complete"


def test_a_coordinator_that_stood_still_keeps_its_edges(server, fleet) -> None:
    """A 20,000-node job start held the coordinator's loop for seconds; it then judged its
    edges silent and killed them all. Silence is what the edges did not say, not what the
    coordinator did not read: a server stopped for 8 s (SIGSTOP) keeps every edge."""
    names = ["s0", "s1"]
    for name in names:
        fleet.add(name, whitelist=TRUE)
    fleet.wait_available(*names)
    before = {x["name"]: x["pid"] for x in edges(server)}
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        subprocess.run(["sleep", "8"], check=True)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    fleet.wait_available(*names, seconds=40)
    assert fleet.run("chef-client", names)["status"] == "complete"
    assert {x["name"]: x["pid"] for x in edges(server)} == before
    assert "is gone" not in server.log() and "restarting it" not in server.log()


def test_local_edges_stop_when_their_server_is_killed(tmp_path) -> None:
    server = Server(tmp_path / "state", edge_processes=2).start()
    try:
        pids = [x["pid"] for x in edges(server)]
        assert len(pids) == 2
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        wait_for(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
            10,
            what="the orphaned edges gone",
        )
    finally:
        server.kill()


def test_a_local_edge_whose_server_is_already_gone_stops(tmp_path) -> None:
    """The server died while its edge was starting: the edge is an orphan from its first
    instruction and must not serve anyone (nor keep a share of the node ports)."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    env = {**os.environ, "PUSHY_EDGE_LINK": f"{public} {public} {secret} 999999999"}
    done = subprocess.run(
        [sys.executable, "-m", "appliance", "edge", "--local", "--name", "local-0"]
        + ["--coordinator", "tcp://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert done.returncode == 0 and "is gone" in done.stderr, done.stderr


def test_edges_reach_the_link_where_it_listens_not_where_nodes_connect(tmp_path) -> None:
    """Nodes on 127.0.0.2, the edge link on its default loopback address 127.0.0.1."""
    with Server(
        tmp_path / "state",
        edge_processes=2,
        zeromq_listen_address="tcp://127.0.0.2",
        server_name="127.0.0.2",
    ) as server:
        fleet = ClientFleet(server, "other", tmp_path / "clients")
        try:
            assert len(edges(server)) == 2
            fleet.add("n1", whitelist=TRUE)
            fleet.wait_available("n1")
            assert fleet.run("chef-client", ["n1"])["status"] == "complete"
        finally:
            fleet.close()


def test_single_process_mode_holds_the_sockets_itself(tmp_path) -> None:
    with Server(tmp_path / "state", edge_processes=0) as server:
        fleet = ClientFleet(server, "solo", tmp_path / "clients")
        try:
            fleet.add("n1", whitelist=TRUE)
            fleet.wait_available("n1")
            assert fleet.run("chef-client", ["n1"])["status"] == "complete"
            c = counters(server)
            assert "edges" not in c and c["received"]["heartbeat"] > 0
            assert (
                "pushy edge"
                not in subprocess.run(
                    ["ps", "-o", "args=", "--ppid", str(server.proc.pid)],
                    capture_output=True,
                    text=True,
                ).stdout
            )
        finally:
            fleet.close()


def _names_by_group(groups: list[str], count: int) -> dict[str, list[str]]:
    """``count`` node names for each edge group ("" is the server's own edges)."""
    found: dict[str, list[str]] = {g: [] for g in groups}
    i = 0
    while any(len(v) < count for v in found.values()):
        name = f"r{i}"
        i += 1
        group = edgelink.assign(("edgeorg", name), groups)
        if group is not None and len(found[group]) < count:
            found[group].append(name)
    return found


def _start_edge(
    server: Server, creds: Path, log_path: Path, listen: str = "tcp://127.0.0.2"
) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "appliance", "edge"),
                *("--coordinator", f"tcp://127.0.0.1:{server.ports['edge_link_port']}"),
                *("--credentials", str(creds), "--listen", listen),
                *("--command-port", "0", "--heartbeat-port", "0"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _edge_key(server: Server, name: str, creds: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "appliance", "edge-key", name]
        + ["--state-dir", str(server.state_dir), "-o", str(creds)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    assert creds.stat().st_mode & 0o777 == 0o600


def test_remote_edges_on_other_addresses_serve_the_nodes_assigned_to_them(
    server, fleet, tmp_path
) -> None:
    remotes = {"east": "127.0.0.2", "west": "127.0.0.3"}
    procs = {}
    for name, address in remotes.items():
        _edge_key(server, name, tmp_path / f"{name}.edge")
        procs[name] = _start_edge(
            server, tmp_path / f"{name}.edge", tmp_path / f"{name}.log", f"tcp://{address}"
        )
    try:
        joined = wait_for(
            lambda: (e := {x["name"]: x for x in edges(server)}).keys() >= remotes.keys() and e,
            20,
            what="the remote edges joined",
        )
        for name, address in remotes.items():
            assert joined[name]["remote"]["host"] == address, joined[name]
        groups = _names_by_group(["", "east", "west"], 2)
        everyone = sorted(n for names in groups.values() for n in names)
        for name in everyone:
            fleet.add(name, whitelist=TRUE)
        fleet.wait_available(*everyone)

        # the config endpoint sent each node to the edge its name is assigned to
        def held() -> dict[str, int]:
            return {x["name"]: x["nodes"] for x in edges(server)}

        wait_for(lambda: sum(held().values()) == len(everyone), 5, what=f"counted: {held()}")
        found = held()
        assert found["east"] == len(groups["east"]), found
        assert found["west"] == len(groups["west"]), found
        job = fleet.run("chef-client", everyone)
        assert job["status"] == "complete" and job["nodes"] == {"succeeded": everyone}, job
        # east leaves: its nodes miss the beats, fetch their config again and go elsewhere
        assert _stop(procs.pop("east")) == 0, (tmp_path / "east.log").read_text()
        wait_for(lambda: "east" not in {x["name"] for x in edges(server)}, 15, what="east gone")
        fleet.wait_available(*everyone, seconds=60)
        job = fleet.run("chef-client", everyone)
        assert job["status"] == "complete" and job["nodes"] == {"succeeded": everyone}, job
        wait_for(lambda: sum(held().values()) == len(everyone), 5, what=f"counted: {held()}")
    finally:
        codes = {name: _stop(proc) for name, proc in procs.items()}
    assert codes == {"west": 0}, codes


def test_an_edge_with_a_key_the_server_does_not_know_is_refused(server, tmp_path) -> None:

    public, secret = (k.decode() for k in zmq.curve_keypair())
    link_public = (server.state_dir / "edge-link.key").read_text().split()[0]
    creds = tmp_path / "stranger.edge"
    creds.write_text(
        json.dumps(
            {
                "name": "stranger",
                "coordinator_public": link_public,
                "public": public,
                "secret": secret,
            }
        )
    )
    edge = _start_edge(server, creds, tmp_path / "stranger.log")
    try:
        wait_for(lambda: "refused an edge link connection" in server.log(), 20, what="the refusal")
        assert all(x["name"] != "stranger" for x in edges(server))
        # the edge says what may be wrong, instead of waiting in silence
        log = tmp_path / "stranger.log"
        wait_for(
            lambda: "does it know this edge's key" in log.read_text(), 20, what="the edge's hint"
        )
    finally:
        _stop(edge)


def _edge_processes_of(server_pid: int) -> list[int]:
    """Every live edge started by the server ``server_pid`` (its link variable names it),
    whether or not the server is still its parent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for var in environ:
            if var.startswith(b"PUSHY_EDGE_LINK=") and var.split()[-1] == str(server_pid).encode():
                found.append(int(entry.name))
    return found


def _started_at(pid: int) -> float:
    """The wall-clock time process ``pid`` started (within a clock tick)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def test_a_restarted_server_starts_its_edges_before_it_replays_its_log(tmp_path) -> None:
    """Edges start with the command line's settings, while the server imports its web stack
    and replays its log (edgelaunch): each edge process is older than the end of the replay."""
    with Server(tmp_path / "state", edge_processes=2):
        pass  # a first start makes the link key a restart needs to start edges early
    with Server(tmp_path / "state", edge_processes=2) as server:
        replayed = [line for line in server.log().splitlines() if "pushy.store: replayed" in line][
            -1
        ]
        stamp = time.mktime(time.strptime(replayed[:19], "%Y-%m-%d %H:%M:%S"))
        replay_end = stamp + int(replayed[20:23]) / 1000
        pids = [x["pid"] for x in edges(server)]
        assert len(pids) == 2
        for pid in pids:
            assert _started_at(pid) < replay_end - 0.05, (pid, _started_at(pid), replay_end)
            # they shared one processor while the server started; adopted, they have them all
            assert os.sched_getaffinity(pid) == os.sched_getaffinity(server.proc.pid)


def test_a_server_that_cannot_start_leaves_no_early_edge_behind(tmp_path) -> None:
    """The edges started early are stopped when the start fails (here: a corrupt log)."""
    with Server(tmp_path / "state", edge_processes=2):
        pass
    first = min((tmp_path / "state" / "log").glob("*.seg"))
    data = bytearray(first.read_bytes())
    data[30] ^= 0x10  # inside the first record, more follow: damage, not a torn tail
    first.write_bytes(bytes(data))
    server = Server(tmp_path / "state", edge_processes=2)
    with pytest.raises(RuntimeError, match="corrupt"):
        server.start()
    assert server.proc is not None and server.proc.returncode == 1
    assert _edge_processes_of(server.proc.pid) == []
