"""Snapshots and retention: the log is compacted as it grows, and restarts still see everything."""

from __future__ import annotations

import shutil
import time

from appliance.server.store import Store
from tests.support import Chef, Server, setup_org, wait_for


def post_jobs(admin, count: int) -> list[str]:
    ids = []
    for i in range(count):
        r = admin.post(
            "/organizations/snapco/pushy/jobs", {"command": f"cmd{i}", "nodes": ["ghost"]}
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def wait_finished(admin, job_id: str) -> dict:
    def finished() -> dict | None:
        job = admin.get(f"/organizations/snapco/pushy/jobs/{job_id}").json()
        return job if job["status"] == "quorum_failed" else None

    return wait_for(finished, 10, what=f"job {job_id} finished")


def written_snapshots(server) -> list:
    return sorted((server.state_dir / "log").glob("snapshot-*.snap"))


def test_snapshots_keep_all_state_across_restart(tmp_path):
    with Server(tmp_path / "state", log_segment_max_bytes=4096) as server:
        admin, _ = setup_org(server, "snapco", ())
        ids = post_jobs(admin, 40)
        wait_finished(admin, ids[-1])
        # built by a child process beside the server: it comes a moment later
        wait_for(lambda: written_snapshots(server), 30, what="a snapshot")
        before = {i: admin.get(f"/organizations/snapco/pushy/jobs/{i}").json() for i in ids}
        assert server.stop() == 0
        server.start()
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        for job_id, job in before.items():
            assert admin.get(f"/organizations/snapco/pushy/jobs/{job_id}").json() == job
        assert "snapshot" in server.log()


def test_finished_jobs_past_retention_are_dropped_at_snapshot_time(tmp_path):
    # 0.00002 days = 1.7 s
    with Server(
        tmp_path / "state", log_segment_max_bytes=4096, job_retention_days=0.00002
    ) as server:
        admin, _ = setup_org(server, "snapco", ())
        old = post_jobs(admin, 3)
        wait_finished(admin, old[-1])
        time.sleep(2.5)
        new = post_jobs(admin, 40)
        wait_finished(admin, new[-1])
        listed = {j["id"] for j in admin.get("/organizations/snapco/pushy/jobs").json()}
        wait_for(lambda: written_snapshots(server), 30, what="a snapshot")
        assert listed.isdisjoint(old)
        assert "older than the retention period" in server.log()
        assert server.stop() == 0
        server.start()
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        listed = {j["id"] for j in admin.get("/organizations/snapco/pushy/jobs").json()}
        assert listed.isdisjoint(old)
        assert set(new[-5:]) <= listed


def feeds(admin, ids: list[str]) -> dict[str, list]:
    return {
        i: admin.sse(f"/organizations/snapco/pushy/job_status_feed/{i}", seconds=10) for i in ids
    }


def test_a_restart_builds_the_events_of_lingering_jobs_only(tmp_path):
    """Replay defers the jobs' events; the resume builds them for the jobs a feed still shows
    (ids and timestamps as before the restart) and a job past its window gets its summary."""
    with Server(tmp_path / "state", wait_complete_time=3600) as server:
        admin, _ = setup_org(server, "snapco", ())
        ids = post_jobs(admin, 3)
        wait_finished(admin, ids[-1])
        before = feeds(admin, ids)
        assert all(
            len(events) >= 3 and events[-1][0] == "job_complete" for events in before.values()
        )
        assert server.stop() == 0
        server.start()  # still inside the linger window: the same events, built at resume
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        assert feeds(admin, ids) == before
        assert server.stop() == 0
        server.settings["wait_complete_time"] = 0.5
        server.start()  # past it: the summary, as a server that never stopped answers
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        for events in feeds(admin, ids).values():
            assert [(name, n) for name, n, _ in events] == [("summary", "job-1")]
            assert events[0][2]["status"] == "quorum_failed"


def test_a_snapshot_built_beside_the_server_loads_to_the_state_of_the_log(tmp_path):
    """The child process builds the snapshot from the sealed files: loading it gives the state
    that replaying the older log (the previous snapshot, or none, and the records) gives."""
    with Server(tmp_path / "state", log_segment_max_bytes=4096, wait_complete_time=3600) as server:
        admin, _ = setup_org(server, "snapco", ())
        ids = post_jobs(admin, 40)
        wait_finished(admin, ids[-1])
        wait_for(lambda: written_snapshots(server), 30, what="a snapshot")
        assert server.stop() == 0
        assert "by a child process" in server.log()
    newest = written_snapshots(server)[-1]
    older = tmp_path / "older"
    shutil.copytree(server.state_dir, older)
    (older / "log" / newest.name).unlink()  # the previous snapshot (or none) and more log
    states = []
    for directory in (server.state_dir, older):
        store = Store(directory, segment_max_bytes=2**40, retention_days=0)
        states.append(store.load())
        store.log.close()
    from_snapshot, from_log = states
    assert from_snapshot.jobs.keys() >= set(ids)
    assert from_snapshot.jobs == from_log.jobs
    assert from_snapshot.identity == from_log.identity
    assert from_snapshot.node_keys == from_log.node_keys
    assert from_snapshot.up_nodes == from_log.up_nodes
    assert from_snapshot.org_event_count == from_log.org_event_count
