"""``pushy bench replay``: how fast a server comes back from its event log.

Builds a state directory the way a server that ran ``--jobs`` finished jobs would have left
it (the records come from the real builders: identity, the job FSM, node transitions), writes
it with the event log API (no server needed), then starts the real server process on it:
replay rate (the server's own "replayed N records ... in X s" line), process start to ready
file, RSS after replay; then lets the server write a snapshot of its own (a small
``log_segment_max_bytes`` and one REST write) and measures the restart from it.
``--in-process`` times ``Store.load`` alone instead, with and without a snapshot.
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from appliance.bench import procstat, report

ORG = "benchorg"
SUPERUSER = "pivotal"
BATCH = 20_000  # records per log append while building
MAX_JOBS = 10_000_000
STEP_SECONDS = 0.002  # between two messages of one job
_REPLAYED = re.compile(r"replayed (\d+) records \(snapshot at (\w+)\) in ([0-9.]+) s")
_SETTLED = re.compile(r"built the events of \d+ jobs in ([0-9.]+) s")


@dataclass
class Built:
    """What ``build_state`` wrote: counts, and the final status of a sample of jobs."""

    directory: Path
    records: int = 0
    jobs: int = 0
    nodes: int = 0
    changes: int = 0
    sse_events: int = 0
    log_bytes: int = 0
    seconds: float = 0.0
    record_mix: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)  # job id -> final status


# -- building the log ----------------------------------------------------------------------


def _node_name(i: int) -> str:
    return f"node-{i:06d}.bench.example"


def _job_messages(nodes: list[str], outcome: str) -> Iterator[tuple[str, str]]:
    """(node, message type) in the order a fleet sends them for the wanted outcome."""
    for i, name in enumerate(nodes):
        yield name, ("nack_commit" if outcome == "quorum_failed" and i == 0 else "ack_commit")
    if outcome == "quorum_failed":
        return
    for name in nodes:
        yield name, "ack_run"
    for i, name in enumerate(nodes):
        yield name, ("failed" if outcome == "failed" and i == len(nodes) - 1 else "succeeded")


def _outcome(i: int) -> str:
    if i % 25 == 24:
        return "quorum_failed"
    if i % 20 == 19:
        return "failed"
    return "complete"


def _records(
    *,
    jobs: int,
    fleet: int,
    nodes_per_job: int,
    capture_every: int,
    flap_every: int,
    server_key_pem: str,
    pivotal_pub: str,
    start: float,
    spacing: float,
    built: Built,
) -> Iterator[dict[str, Any]]:
    """The records, in log order: server, identities, nodes coming up, then the jobs."""
    import zmq

    from appliance.core import identity, jobfsm, render

    curve_public, curve_secret = zmq.curve_keypair()
    yield {
        "type": "server_init",
        "incarnation": str(uuid.uuid4()),
        "curve_public": curve_public.decode("ascii"),
        "curve_secret": curve_secret.decode("ascii"),
        "rsa_public_pem": server_key_pem,
        "t": start,
    }
    ident = identity.IdentityState()
    su = identity.Principal(SUPERUSER, "user", superuser=True)
    boot = identity.bootstrap_superuser(ident, pivotal_pub, name=SUPERUSER)
    guid = uuid.uuid4().hex
    org = identity.create_org(
        ident,
        su,
        {"name": ORG, "full_name": "Replay benchmark"},
        guid=guid,
        validator_key_pem_private="",
        validator_key_pem_public=pivotal_pub,
        base_url="",
    )
    for record in [*boot, *org.records]:
        identity.apply(ident, record)
        yield record
    names = [_node_name(i) for i in range(fleet)]
    for name in names:
        made = identity.create_client(
            ident, su, ORG, {"name": name, "public_key": pivotal_pub}, new_key=None, base_url=""
        )
        for record in made.records:
            identity.apply(ident, record)
            yield record
        yield {"type": "ccpk", "org": ORG, "node": name, "key": _z85_key()}
        yield _session_key(name, start)
        yield {"type": "node_up", "org": ORG, "node": name, "incarnation": str(uuid.uuid4())}
    sample_every = max(1, jobs // 50)
    seen: set[str] = set()  # outcomes sampled so far: each one at least once
    for i in range(jobs):
        t = start + 1.0 + i * spacing
        if flap_every and i % flap_every == flap_every - 1:
            name = names[(i // flap_every) % fleet]
            yield {"type": "node_down", "org": ORG, "node": name}
            yield _session_key(name, t)
            yield {"type": "node_up", "org": ORG, "node": name, "incarnation": str(uuid.uuid4())}
        members = [names[(i * nodes_per_job + k) % fleet] for k in range(nodes_per_job)]
        capture = bool(capture_every) and i % capture_every == 0
        job_id = render.make_job_id(guid, i.to_bytes(8, "big"))
        created = {
            "type": "job_created",
            "t": t,
            "job": {
                "id": job_id,
                "org": ORG,
                "command": "chef-client",
                "nodes": members,
                "quorum": len(members),
                "run_timeout": 3600,
                "user": None,
                "dir": None,
                "env": None,
                "file": None,
                "capture": capture,
                "requestor": SUPERUSER,
            },
        }
        yield created
        spec = created["job"]
        job = jobfsm.new_job(
            **{k: spec[k] for k in spec if k != "nodes"}, nodes=list(members), now=t
        )
        steps = [(t, jobfsm.start(job, set(), t, server_name="bench", voting_timeout=60))]
        outcome = _outcome(i)
        for n, (name, kind) in enumerate(_job_messages(members, outcome), start=1):
            now = t + n * STEP_SECONDS
            body = {"stdout": f"ran on {name}\n", "stderr": ""} if capture else {}
            steps.append((now, jobfsm.on_message(job, name, kind, body, now)))
        for now, step in steps:
            if step.changes:
                built.changes += len(step.changes)
                yield {"type": "job_step", "job": job_id, "t": now, "changes": step.changes}
        built.sse_events += len(job.events)
        if not jobfsm.job_finished(job):  # pragma: no cover - the message plans always finish
            raise RuntimeError(f"job {i} did not finish: {job.status}")
        if i % sample_every == 0 or i == jobs - 1 or job.status not in seen:
            built.samples[job_id] = job.status
            seen.add(job.status)


def _z85_key() -> str:
    import zmq.utils.z85

    return zmq.utils.z85.encode(os.urandom(32)).decode("ascii")


def _session_key(node: str, t: float) -> dict[str, Any]:
    key = base64.b64encode(os.urandom(32)).decode("ascii")
    return {"type": "session_key", "org": ORG, "node": node, "key": key, "t": t, "grace": 60.0}


def build_state(
    directory: Path,
    *,
    jobs: int,
    fleet: int,
    nodes_per_job: int,
    capture_every: int = 10,
    flap_every: int = 50,
) -> Built:
    """A server state directory (keys + one log segment) holding ``jobs`` finished jobs."""
    from appliance.core.keys import generate_rsa, private_pem, public_pem
    from appliance.store.log import EventLog

    if not 1 <= nodes_per_job <= fleet:
        raise ValueError("--nodes-per-job must be between 1 and --nodes")
    started = time.perf_counter()
    directory.mkdir(mode=0o700, parents=True, exist_ok=False)
    server_key, pivotal_key = generate_rsa(2048), generate_rsa(2048)
    for name, key in (("server.pem", server_key), ("pivotal.pem", pivotal_key)):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(private_pem(key))
    # finished well inside the default retention (90 days) and past every linger window
    spacing = min(1.0, 30 * 86400.0 / max(jobs, 1))
    start = time.time() - 3600.0 - jobs * spacing
    built = Built(directory, jobs=jobs, nodes=fleet)
    log = EventLog(directory, segment_max_bytes=2**40)
    _, replay = log.open()
    for _ in replay:  # a new directory: nothing to replay, but the log wants it consumed
        pass
    try:
        batch: list[tuple[int, bytes]] = []
        records = _records(
            jobs=jobs,
            fleet=fleet,
            nodes_per_job=nodes_per_job,
            capture_every=capture_every,
            flap_every=flap_every,
            server_key_pem=public_pem(server_key),
            pivotal_pub=public_pem(pivotal_key),
            start=start,
            spacing=spacing,
            built=built,
        )
        mix = built.record_mix
        for seq, record in enumerate(records, start=1):
            mix[record["type"]] = mix.get(record["type"], 0) + 1
            batch.append((seq, orjson.dumps(record)))
            if len(batch) >= BATCH:
                log.append(batch)
                batch = []
        log.append(batch)
        built.records = log.last_seq
        built.log_bytes = log.segment_bytes()
    finally:
        log.close()
    built.seconds = time.perf_counter() - started
    return built


# -- measuring -----------------------------------------------------------------------------


def _memory(pid: int) -> dict[str, float]:
    """RSS and peak RSS in MiB."""
    kib = procstat.memory_kib(pid)
    return {
        "rss_mib": round(kib.get("VmRSS", 0) / 1024, 1),
        "peak_rss_mib": round(kib.get("VmHWM", 0) / 1024, 1),
    }


def _replay_line(log_text: str) -> dict[str, Any]:
    """The last "replayed N records (snapshot at S) in X s" line of a server log."""
    found = _REPLAYED.findall(log_text)
    if not found:
        return {}
    count, snapshot, seconds = found[-1]
    settled = _SETTLED.findall(log_text)
    return {
        "replayed_records": int(count),
        "snapshot_seq": None if snapshot == "None" else int(snapshot),
        "store_load_s": float(seconds),
        "settle_s": float(settled[-1]) if settled else None,  # the events built at resume
    }


def _server_start(state_dir: Path, startup: float, **settings: Any) -> tuple[Any, float]:
    from appliance.localserver import LocalServer

    server = LocalServer(state_dir, startup_seconds=startup, log_level="info", **settings)
    t0 = time.perf_counter()
    server.start()
    return server, time.perf_counter() - t0


def _check_jobs(server: Any, built: Built) -> int:
    """GET every sampled job; returns how many show their final status (raises otherwise)."""
    from appliance.core.keys import load_private_pem
    from appliance.signedhttp import send

    key = load_private_pem(server.pivotal_key.read_bytes())
    for job_id, status in built.samples.items():
        reply = send(
            server.url, "GET", f"/organizations/{ORG}/pushy/jobs/{job_id}", b"", SUPERUSER, key
        )
        got = reply.body()
        if reply.status != 200 or got.get("status") != status:
            raise RuntimeError(f"job {job_id}: expected {status}, got {reply.status} {got}")
    return len(built.samples)


def _trigger_snapshot(server: Any, timeout: float) -> float:
    """One REST write past the (small) segment size: the committer snapshots after it."""
    from appliance.core.keys import load_private_pem, public_pem
    from appliance.signedhttp import send

    key = load_private_pem(server.pivotal_key.read_bytes())
    body = orjson.dumps({"name": "bench-snapshot-trigger", "public_key": public_pem(key)})
    t0 = time.perf_counter()
    reply = send(server.url, "POST", f"/organizations/{ORG}/clients", body, SUPERUSER, key)
    if reply.status != 201:
        raise RuntimeError(f"snapshot trigger write failed: {reply.status} {reply.data!r}")
    deadline = time.monotonic() + timeout
    while not list((server.state_dir / "log").glob("snapshot-*.snap")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no snapshot within {timeout} s:\n{server.log()}")
        time.sleep(0.05)
    return time.perf_counter() - t0


def _server_phase(label: str, state_dir: Path, built: Built, args: Any, **settings: Any) -> dict:
    server, ready_s = _server_start(state_dir, args.startup_seconds, **settings)
    try:
        memory = _memory(server.proc.pid)
        cpu = procstat.cpu_seconds(server.proc.pid)
        row: dict[str, Any] = {"phase": label, "ready_s": round(ready_s, 3)}
        row["ready_cpu_s"] = round(cpu, 2) if cpu is not None else None
        row.update(memory)
        row.update(_replay_line(server.log()))
        if row.get("replayed_records") and row.get("store_load_s"):
            row["records_per_s"] = round(row["replayed_records"] / row["store_load_s"])
        row["jobs_checked"] = _check_jobs(server, built)
        if settings.get("log_segment_max_bytes") == 4096:
            row["snapshot_write_s"] = round(_trigger_snapshot(server, args.startup_seconds), 3)
        status = server.stop()
        if status != 0:
            raise RuntimeError(f"server exited with {status}:\n{server.log()}")
    except BaseException:
        server.kill()
        raise
    return row


def run_server_mode(root: Path, built: Built, args: Any) -> list[dict]:
    big = 2**40
    rows = [_server_phase("log only", built.directory, built, args, log_segment_max_bytes=big)]
    # the same replay again, then a write that makes the server snapshot its state
    rows.append(
        _server_phase(
            "log only, snapshot", built.directory, built, args, log_segment_max_bytes=4096
        )
    )
    snaps = sorted((built.directory / "log").glob("snapshot-*.snap"))
    rows[-1]["snapshot_bytes"] = snaps[-1].stat().st_size if snaps else 0
    rows.append(
        _server_phase("from snapshot", built.directory, built, args, log_segment_max_bytes=big)
    )
    return rows


def _timed_load(directory: Path) -> tuple[Any, float, dict[str, float]]:
    """``Store.load`` as the server runs it (events deferred), then the events settled as its
    start does (``Dispatcher.resume``: only the jobs inside the 5 s linger window keep them)."""
    from appliance.core import jobfsm
    from appliance.server.store import Store

    store = Store(directory, segment_max_bytes=2**40, retention_days=0)
    t0, cpu0, now = time.perf_counter(), time.process_time(), time.time()
    store.load(defer_events=True, now=now)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    store.settle_events(lambda job: jobfsm.shows_events(job, now, 5.0))
    settled = time.perf_counter() - t0
    return (
        store,
        wall,
        {
            "load_cpu_s": round(cpu, 3),
            "with_settle_s": round(settled, 3),
            **_memory(os.getpid()),
        },
    )


def run_in_process(built: Built) -> list[dict]:
    """``Store.load`` alone, in this process; then a snapshot written as the server would."""
    from appliance.server import snapshots

    store, seconds, memory = _timed_load(built.directory)
    rows = [
        {
            "phase": "Store.load, log only",
            "load_s": round(seconds, 3),
            "records_per_s": round(built.records / max(seconds, 0.001)),
            **memory,
            "records_per_cpu_s": round(built.records / max(memory["load_cpu_s"], 0.001)),
        }
    ]
    t0 = time.perf_counter()
    payload = snapshots.payload(store.state)  # what the snapshot child ends with
    encode_s = time.perf_counter() - t0
    store.log.write_snapshot(store.log.last_seq, payload)
    store.log.close()
    del store
    gc.collect()
    store, seconds, memory = _timed_load(built.directory)
    rows.append(
        {
            "phase": "Store.load, snapshot",
            "load_s": round(seconds, 3),
            "snapshot_encode_s": round(encode_s, 3),
            "snapshot_bytes": len(payload),
            **memory,
        }
    )
    store.log.close()
    return rows


def _stall(built: Built, args: Any) -> dict:
    from appliance.bench import stall

    return stall.measure(
        built.directory, segment_bytes=2**20, snapshots=2, timeout=args.startup_seconds
    )


# -- reporting -----------------------------------------------------------------------------


def _table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return report.table([columns, *([row.get(c) for c in columns] for row in rows)])


# -- command line --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs", type=int, default=20_000, help="finished jobs in the log (default %(default)s)"
    )
    parser.add_argument(
        "--nodes", type=int, default=1000, help="nodes in the fleet (default %(default)s)"
    )
    parser.add_argument(
        "--nodes-per-job", type=int, default=3, help="nodes of each job (default %(default)s)"
    )
    parser.add_argument(
        "--capture-every",
        type=int,
        default=10,
        help="every Nth job captures output; 0: none (default %(default)s)",
    )
    parser.add_argument(
        "--flap-every",
        type=int,
        default=50,
        help="a node goes down and up every N jobs; 0: never (default %(default)s)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="time Store.load here, no server process"
    )
    parser.add_argument(
        "--stall",
        action="store_true",
        help="the loop's longest stall while the committer snapshots the state (1 MiB segments)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp)")
    parser.add_argument("--keep", action="store_true", help="keep the built state directory")
    parser.add_argument(
        "--startup-seconds",
        type=float,
        default=300.0,
        help="how long one server start may take (default %(default)s)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where the JSON goes (default $PUSHY_BENCH_RESULTS or bench/results)",
    )


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.jobs <= MAX_JOBS:
        print(f"--jobs must be between 1 and {MAX_JOBS}", file=sys.stderr)
        return 2
    params = {
        "jobs": args.jobs,
        "nodes": args.nodes,
        "nodes_per_job": args.nodes_per_job,
        "capture_every": args.capture_every,
        "flap_every": args.flap_every,
        "in_process": args.in_process,
        "stall": args.stall,
    }
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)  # a work directory named anew
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-replay-", dir=args.dir))
    try:
        try:
            built = build_state(
                root / "state",
                jobs=args.jobs,
                fleet=args.nodes,
                nodes_per_job=args.nodes_per_job,
                capture_every=args.capture_every,
                flap_every=args.flap_every,
            )
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(
            f"built {built.records:,} records ({built.jobs:,} jobs on {built.nodes:,} nodes, "
            f"{built.changes:,} job changes, {built.sse_events:,} SSE events), "
            f"{built.log_bytes / 2**20:.1f} MiB in {built.seconds:.1f} s"
        )
        if args.stall:
            rows = [{"phase": "loop stall, snapshots of the state", **_stall(built, args)}]
        elif args.in_process:
            rows = run_in_process(built)
        else:
            rows = run_server_mode(root, built, args)
        results = {
            "records": built.records,
            "log_bytes": built.log_bytes,
            "job_changes": built.changes,
            "sse_events": built.sse_events,
            "sample_jobs": built.samples,
            "record_mix": built.record_mix,
            "build_s": round(built.seconds, 3),
            "phases": rows,
        }
        print(_table(rows))
        path = report.write("replay", params, results, directory=args.results_dir)
        print(f"results: {path}")
        if args.keep:
            print(f"state kept in {built.directory}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushy bench replay", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
