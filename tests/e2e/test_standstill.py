"""A receiver that stood still judges no node by it (core/liveness.py ``Attention``).

A node is judged by the gaps between its beats as the server (or its edge) read them. When
the reading process itself stands still — starved of CPU on a loaded host, stopped, busy with
one long step — the nodes' beats wait in its socket: marking those nodes offline sends every
one of them through rehab, and aborts the jobs they run. Found by a CI run on a loaded machine
(``test_node_faults``: a node falsely offline came back in rehab and never got its next job).

Real server, real edge processes, wire nodes beating from their own threads; the process that
reads their beats is stopped with SIGSTOP for 15 heartbeat intervals.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import zmq

from tests.e2e.helpers import Fleet, finish_run, pause, post_job, wait_job
from tests.support import Server

STOPPED_SECONDS = 3.0  # 15 intervals of 200 ms: a silent node is offline after about 3


def readers(server: Server, edges: int) -> list[int]:
    """The processes that read the nodes' beats: the edges, or the server itself."""
    if not edges:
        return [server.proc.pid]
    r = httpx.get(f"{server.url}/pushy/_status?counters=true", timeout=10)
    pids = [edge["pid"] for edge in r.json()["counters"]["edges"]]
    assert len(pids) == edges
    return pids


@pytest.mark.parametrize("edges", [0, 2], ids=["single-process", "edges"])
def test_a_reader_that_stood_still_marks_no_beating_node_offline(tmp_path: Path, edges: int):
    ctx = zmq.Context()
    with Server(tmp_path / "state", edge_processes=edges) as server:
        fleet = Fleet(server, ctx)
        try:
            org, admin, nodes = fleet.setup("a", "b", "c")
            pause(1.0, tuple(nodes))
            logged = server.log_path.stat().st_size
            pids = readers(server, edges)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(STOPPED_SECONDS)  # the nodes beat on from their own threads
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            pause(2.0, tuple(nodes))
            states = admin.get(f"/organizations/{org}/pushy/node_states").json()
            assert {s["node_name"]: s["availability"] for s in states} == dict.fromkeys(
                "abc", "available"
            )
            with open(server.log_path, "rb") as log:
                log.seek(logged)
                after = log.read().decode(errors="replace")
            assert "offline" not in after, after
            assert not any(n.take("abort") for n in nodes)  # none was sent through rehab
            job_id = post_job(admin, org, ["a", "b", "c"])
            for node in nodes:
                node.expect("commit", others=tuple(nodes))
                node.working(job_id, "committed")
                node.send("ack_commit", job_id=job_id)
            for node in nodes:
                finish_run(node, job_id, others=tuple(nodes))
            job = wait_job(admin, org, job_id, "complete", tuple(nodes))
            assert job["nodes"] == {"succeeded": ["a", "b", "c"]}
        finally:
            fleet.close()
            ctx.destroy(linger=0)
