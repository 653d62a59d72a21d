"""The main path end to end: an org, a node joins over CURVE, a job runs to completion."""

from __future__ import annotations

from tests.support import WireNode, wait_for


def test_node_joins_and_runs_a_job(server, org, node1: WireNode):
    admin, _ = org
    state = admin.get("/organizations/testorg/pushy/node_states/node1").json()
    assert state == {"node_name": "node1", "status": "online", "availability": "available"}

    r = admin.post(
        "/organizations/testorg/pushy/jobs", {"command": "chef-client", "nodes": ["node1"]}
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["uri"][-32:]
    assert r.headers["Location"] == r.json()["uri"]

    commit = node1.recv(5, types=("commit",))
    assert commit is not None
    assert commit["job_id"] == job_id and commit["command"] == "chef-client"
    assert commit["capture"] is False
    node1.job_id, node1.job_state = job_id, "committed"
    node1.send("ack_commit", job_id=job_id)
    run = node1.recv(5, types=("run",))
    assert run == {
        "sequence": run["sequence"],
        "timestamp": run["timestamp"],
        "type": "run",
        "job_id": job_id,
    }
    node1.job_state = "running"
    node1.send("ack_run", job_id=job_id)
    node1.send("succeeded", job_id=job_id)

    job = wait_for(
        lambda: (
            (j := admin.get(f"/organizations/testorg/pushy/jobs/{job_id}").json())["status"]
            == "complete"
            and j
        )
    )
    assert job["nodes"] == {"succeeded": ["node1"]}
    events = admin.sse(f"/organizations/testorg/pushy/job_status_feed/{job_id}")
    assert [e[0] for e in events] == [
        "start",
        "quorum_vote",
        "quorum_succeeded",
        "run_start",
        "run_complete",
        "job_complete",
    ]
    assert [e[1] for e in events] == [f"job-{i}" for i in range(1, 7)]
