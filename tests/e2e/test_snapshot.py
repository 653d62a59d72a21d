"""Snapshots and retention: the log is compacted as it grows, and restarts still see everything."""

from __future__ import annotations

import time

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
