"""Measure server start-up replay: records/s through the reducer, and the effect of a snapshot.

Builds a log of finished jobs (job_created + 4 job_step records each, 3 nodes per job), then
times ``Store.load`` on it; then writes a snapshot and times the load again. Prints numbers.
Usage: .venv/bin/python bench/replay_state.py [JOBS]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

from appliance.core import jobfsm
from appliance.core.state import State, apply, to_records
from appliance.server.store import Store
from appliance.store.log import EventLog


def build_records(jobs: int) -> list[dict]:
    state = State()
    records: list[dict] = []
    t = 1_700_000_000.0
    nodes = ["web1", "web2", "web3"]
    for i in range(jobs):
        job_id = f"{i:032x}"
        created = {
            "type": "job_created",
            "t": t,
            "job": {
                "id": job_id,
                "org": "acme",
                "command": "chef-client",
                "nodes": nodes,
                "quorum": 3,
                "run_timeout": 3600,
                "user": None,
                "dir": None,
                "env": None,
                "file": None,
                "capture": False,
                "requestor": "pivotal",
            },
        }
        apply(state, created)
        records.append(created)
        job = state.jobs[job_id]
        steps = [jobfsm.start(job, set(), t, server_name="s", voting_timeout=60)]
        for n in nodes:
            steps.append(jobfsm.on_message(job, n, "ack_commit", {}, t + 0.1))
        for n in nodes:
            steps.append(jobfsm.on_message(job, n, "ack_run", {}, t + 0.2))
        for n in nodes:
            steps.append(jobfsm.on_message(job, n, "succeeded", {}, t + 0.3))
        for step in steps:
            records.append({"type": "job_step", "job": job_id, "t": t, "changes": step.changes})
        t += 1.0
    return records


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    records = build_records(jobs)
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-"))
    try:
        log = EventLog(root, segment_max_bytes=2**40)
        _, it = log.open()
        for _ in it:
            pass
        batch = [(seq, orjson.dumps(r)) for seq, r in enumerate(records, start=1)]
        for i in range(0, len(batch), 10_000):
            log.append(batch[i : i + 10_000])
        size = log.segment_bytes()
        log.close()
        store = Store(root, segment_max_bytes=2**40, retention_days=0)
        t0 = time.perf_counter()
        state = store.load()
        dt = time.perf_counter() - t0
        print(f"log: {jobs} finished jobs, {len(records)} records, {size / 2**20:.1f} MiB")
        print(f"replay through the reducer: {dt:.2f} s = {len(records) / dt:,.0f} records/s")
        for job in state.jobs.values():
            job.events.clear()  # what the server does for jobs past their linger window
        payload = orjson.dumps(to_records(state))
        store.log.write_snapshot(store.log.last_seq, payload)
        store.log.close()
        store = Store(root, segment_max_bytes=2**40, retention_days=0)
        t0 = time.perf_counter()
        store.load()
        dt = time.perf_counter() - t0
        print(f"snapshot: {len(payload) / 2**20:.1f} MiB; start-up load from it: {dt:.2f} s")
        store.log.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
