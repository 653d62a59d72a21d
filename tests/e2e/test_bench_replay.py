"""Smoke runs of ``pushy bench replay`` (tiny N, seconds): the benchmark code cannot rot.

No timings are asserted; what is checked is that the scenario runs, writes its JSON, and that
a server started on a log built by the benchmark serves every job with its final status, from
the log and from the snapshot the server writes of it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson

from appliance.bench import replay
from tests.support import REPO, Chef, Server


def test_bench_replay_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "bench",
            "replay",
            "--jobs",
            "200",
            "--nodes",
            "20",
            "--nodes-per-job",
            "4",
            "--results-dir",
            str(out),
            "--dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = out.glob("replay-*.json")
    doc = orjson.loads(path.read_bytes())
    assert {"scenario", "machine", "params", "results"} <= set(doc)
    assert doc["params"]["jobs"] == 200
    results = doc["results"]
    assert {"records", "log_bytes", "record_mix", "sample_jobs", "phases"} <= set(results)
    assert results["record_mix"]["job_created"] == 200
    phases = {p["phase"]: p for p in results["phases"]}
    assert set(phases) == {"log only", "log only, snapshot", "from snapshot"}
    assert phases["log only"]["replayed_records"] == results["records"]
    assert phases["from snapshot"]["snapshot_seq"] == results["records"] + 1  # + the trigger
    for phase in phases.values():
        assert phase["jobs_checked"] == len(results["sample_jobs"]) > 0
        assert phase["rss_mib"] > 0 and phase["ready_s"] > 0
    assert "records_per_s" in done.stdout  # the table
    assert not list(tmp_path.glob("pushy-bench-replay-*"))  # the work dir is cleaned up


def test_bench_replay_in_process_smoke(tmp_path: Path) -> None:
    parser = replay.argparse.ArgumentParser()
    replay.add_arguments(parser)
    args = parser.parse_args(
        ["--jobs", "50", "--nodes", "5", "--in-process", "--results-dir", str(tmp_path)]
    )
    assert replay.run(args) == 0
    [path] = tmp_path.glob("replay-*.json")
    phases = orjson.loads(path.read_bytes())["results"]["phases"]
    assert [p["phase"] for p in phases] == ["Store.load, log only", "Store.load, snapshot"]
    assert phases[1]["snapshot_bytes"] > 0


def test_a_server_on_a_built_log_serves_every_job_with_its_final_status(tmp_path: Path) -> None:
    built = replay.build_state(tmp_path / "state", jobs=120, fleet=10, nodes_per_job=3)
    mix = built.record_mix
    assert mix["job_created"] == 120 and mix["job_step"] > 120 * 3
    assert {"node_up", "node_down", "session_key", "ccpk", "client_created"} <= set(mix)
    # about 50 jobs spread over the log, and at least one of each outcome
    assert set(built.samples.values()) == {"complete", "quorum_failed"}
    assert len(built.samples) >= 50
    with Server(built.directory, log_segment_max_bytes=4096) as server:
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        for job_id, status in built.samples.items():
            got = admin.get(f"/organizations/{replay.ORG}/pushy/jobs/{job_id}").json()
            assert got["status"] == status, job_id
            assert got["command"] == "chef-client"
        # a write past the tiny segment size: the server snapshots the whole state
        r = admin.post(f"/organizations/{replay.ORG}/clients", {"name": "after-replay"})
        assert r.status_code == 201, r.text
        assert server.stop() == 0
        assert list((built.directory / "log").glob("snapshot-*.snap"))
        server.start()
        admin = Chef(server.url, "pivotal", server.pivotal_key.read_bytes())
        listed = admin.get(f"/organizations/{replay.ORG}/pushy/jobs").json()
        assert len(listed) == 120
        for job_id, status in built.samples.items():
            got = admin.get(f"/organizations/{replay.ORG}/pushy/jobs/{job_id}").json()
            assert got["status"] == status, job_id
        assert re.search(r"replayed \d+ records \(snapshot at \d+\)", server.log())
