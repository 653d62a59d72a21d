"""``pushy bench store``: the event log in PostgreSQL against the file log.

Two measures, each on both engines (a real PostgreSQL is started here, as the tests start it:
Debian's ``postgresql`` must be installed):

- **appends**, in this process, through the server's own committer (group commit): a bulk of
  records queued at once (what job steps are: nobody waits), then ``--writers`` tasks that
  each wait for their record to be durable before the next (what REST writes are), for
  ``--duration`` seconds: records/s and the latency of a durable append;
- **job creation**, a real ``pushy server`` per engine (one active server for PostgreSQL):
  ``POST /jobs`` at ``--rate`` per second from another process, open loop (each latency from
  the request's due time), requests signed before the clock starts: p50/p99/max.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

from appliance.bench import report
from appliance.bench.pgcluster import PgCluster
from appliance.bench.provision import create_org, progress
from appliance.core.keys import load_private_pem
from appliance.localserver import LocalServer
from appliance.signedhttp import SignedClient
from appliance.store.committer import Committer
from appliance.store.log import EventLog

if TYPE_CHECKING:  # psycopg (and libpq) only when the bench runs: `pushy --help` builds this
    from appliance.store.pglog import PgLog

ORG = "storebench"
# a job step's size in a busy log (a node's state change and an event)
STEP = {
    "type": "job_step",
    "job": "0" * 32,
    "t": 1.0e9,
    "changes": [["node", "node-000001.bench.example", "running"], ["event", "run_start", {}]],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=100_000, help="bulk appends (100000)")
    parser.add_argument("--writers", type=int, default=32, help="durable writers (default 32)")
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per timed phase (default 10)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="job POSTs/s (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and state dirs")
    parser.add_argument("--results-dir", help="where the JSON goes (default bench/results)")


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-store-"))
    progress(f"starting PostgreSQL (work directory {root})")
    cluster = PgCluster().start()
    results: dict[str, Any] = {}
    try:
        for engine in ("file", "postgresql"):
            url = cluster.createdb(f"appends_{engine}") if engine == "postgresql" else None
            progress(f"{engine}: appends")
            results[engine] = trio.run(_appends, engine, root / f"appends-{engine}", url, args)
            url = cluster.createdb(f"jobs_{engine}") if engine == "postgresql" else None
            progress(f"{engine}: job creation at {args.rate:g}/s for {args.duration:g} s")
            results[engine]["jobs"] = _job_creation(root / f"server-{engine}", url, args)
    finally:
        cluster.destroy()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    params = {k: getattr(args, k) for k in ("records", "writers", "duration", "rate")}
    path = report.write("store", params, results, directory=args.results_dir)
    rows: list[tuple[str, Any]] = [("metric", "file", "postgresql")]  # type: ignore[list-item]
    for label, key in (
        ("bulk appends (records/s)", "bulk_records_per_s"),
        ("durable appends (records/s)", "durable_records_per_s"),
        ("durable append p50 (ms)", "durable_p50_ms"),
        ("durable append p99 (ms)", "durable_p99_ms"),
        ("job POST p50 (ms)", ("jobs", "p50_ms")),
        ("job POST p99 (ms)", ("jobs", "p99_ms")),
        ("job POST max (ms)", ("jobs", "max_ms")),
        ("jobs created / errors", ("jobs", "created_errors")),
    ):
        rows.append((label, *(_pick(results[e], key) for e in ("file", "postgresql"))))
    print(report.table(rows))
    print(f"\nresults: {path}")
    return 0


def _pick(values: dict[str, Any], key: str | tuple[str, str]) -> Any:
    if isinstance(key, tuple):
        return values[key[0]][key[1]]
    return values[key]


# appends ------------------------------------------------------------------------------------


def _open_log(engine: str, directory: Path, url: str | None) -> EventLog | PgLog:
    from appliance.store.pglog import PgLog

    if engine == "file":
        log: EventLog | PgLog = EventLog(directory, segment_max_bytes=2**40)
    else:
        assert url is not None
        log = PgLog(url, holder="pushy bench store", lease_seconds=3600)
    _, replay = log.open()
    for _ in replay:
        pass
    if isinstance(log, PgLog):
        log.try_acquire()
    return log


async def _appends(
    engine: str, directory: Path, url: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    log = await trio.to_thread.run_sync(_open_log, engine, directory, url)
    committer = Committer(log)
    out: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            started = time.perf_counter()
            last = 0
            for _ in range(args.records):
                last = committer.append(dict(STEP))
            await committer.wait_synced(last)
            took = time.perf_counter() - started
            out["bulk_records_per_s"] = round(args.records / took)
            out["bulk_batches"] = committer.batches
            latencies: list[float] = []
            end = time.perf_counter() + args.duration

            async def writer() -> None:
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    await committer.append_and_wait([dict(STEP)])
                    latencies.append(time.perf_counter() - t0)

            t0 = time.perf_counter()
            async with trio.open_nursery() as writers:
                for _ in range(args.writers):
                    writers.start_soon(writer)
            took = time.perf_counter() - t0
            out["durable_records_per_s"] = round(len(latencies) / took)
            out["durable_p50_ms"] = _ms(report.percentile(latencies, 50))
            out["durable_p99_ms"] = _ms(report.percentile(latencies, 99))
            committer.close()
    finally:
        log.close()
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# job creation --------------------------------------------------------------------------------


def _job_creation(directory: Path, url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"log_level": "warning", "edge_processes": 0}
    if url is not None:
        settings["store"] = url
    server = LocalServer(directory / "state", **settings)
    directory.mkdir(parents=True, exist_ok=True)
    server.start()
    try:
        key_pem = server.pivotal_key.read_text()
        api = SignedClient(server.url)
        create_org(api, "pivotal", load_private_pem(key_pem), ORG)
        api.close()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_post_jobs_entry,
            args=(server.url, key_pem, args.rate, args.duration, child),
            daemon=True,
        )
        proc.start()
        child.close()
        got = parent.recv()
        proc.join(30)
    finally:
        server.stop(timeout=30)
    latencies = got["latencies"]
    return {
        "created": got["created"],
        "errors": got["errors"],
        "created_errors": f"{got['created']} / {got['errors']}",
        "p50_ms": _ms(report.percentile(latencies, 50)),
        "p99_ms": _ms(report.percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "load_cpu_s": got["cpu_s"],
    }


def _post_jobs_entry(url: str, key_pem: str, rate: float, seconds: float, pipe: Any) -> None:
    pipe.send(_post_jobs(url, key_pem, rate, seconds))
    pipe.close()


def _post_jobs(url: str, key_pem: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop job POSTs (a node that never connects: the job is created, then fails its
    quorum), signed beforehand: a pool of signatures reused while valid."""
    import resource

    key = load_private_pem(key_pem)
    client = SignedClient(url, timeout=30)
    path = f"/organizations/{ORG}/pushy/jobs"
    body = orjson.dumps({"command": "chef-client", "nodes": ["bench-ghost"], "quorum": 1})
    pool = [client.presign("POST", path, body, "pivotal", key) for _ in range(16)]
    slots = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"created": 0, "errors": 0}
    total = int(rate * seconds)
    t0 = time.monotonic() + 0.2
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)

    def loop() -> None:
        while True:
            with lock:
                k = next(slots)
            if k >= total:
                return
            due = t0 + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                status = client.send_presigned("POST", path, body, pool[k % len(pool)]).status
            except OSError:
                status = 0
            done = time.monotonic()
            with lock:
                latencies.append(done - due)
                counts["created" if status == 201 else "errors"] += 1

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    client.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {**counts, "latencies": latencies, "cpu_s": round(cpu, 2)}
