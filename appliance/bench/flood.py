"""``pushy bench flood``: live output from every node of one job at once.

One capturing job on N simulated nodes, each printing ``--output-bytes`` as live output (as
``pushy client`` sends it: 16 KiB chunks, a window of one chunk unacknowledged), while a load
generator GETs ``/node_states`` and ``/jobs``; then every node's stdout is read back over REST
and compared byte for byte with what it printed (``fleet.output_pattern``).
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from appliance.bench import loadgen, procstat, report
from appliance.bench.fleet import output_pattern
from appliance.bench.harness import (
    Run,
    Sampler,
    Setup,
    common_params,
    finish,
    mib,
    rounded,
    run_with_fleet,
)
from appliance.bench.provision import progress
from appliance.bench.scenarios import REPORT_LAG, job_timeline, latency_summary, run_job


def flood(args: argparse.Namespace) -> int:
    setup, results = run_with_fleet(args, _flood_body)
    params = {**common_params(setup), "output_bytes": args.output_bytes, "rate": args.rate}
    r = results
    api = r["api"]
    rows = [
        ("nodes", args.nodes),
        ("output per node (bytes)", args.output_bytes),
        ("POST -> complete (s)", r["post_to_complete_s"]),
        ("output taken (MiB/s)", r["ingest_mib_per_s"]),
        ("server RSS before / peak / after (MiB)", r["server_rss_mib"]),
        ("server CPU % during the flood", r["server_cpu_percent"]),
        ("fleet CPU % during the flood", r["fleet_cpu_percent"]),
        (f"API requests (the {args.duration:g} s from the POST)", api["count"]),
        ("API p50 / p99 / max (ms)", f"{api['p50_ms']} / {api['p99_ms']} / {api['max_ms']}"),
        ("API service p99 (ms)", api["service_p99_ms"]),
        ("API errors", api["errors"]),
        ("chunks sent / waits for the socket", f"{r['chunks']} / {r['chunk_waits']}"),
        ("nodes whose output came back whole", f"{r['whole']}/{args.nodes}"),
        ("false offline transitions", r["false_offline"]),
        ("job complete, all nodes succeeded", r["all_succeeded"]),
    ]
    return finish(setup, "flood", params, results, rows)


async def _flood_body(run: Run) -> dict[str, Any]:
    """One capturing job whose every node prints ``--output-bytes``; meanwhile an API load;
    afterwards every node's stdout read back over REST and compared byte for byte."""
    setup, args = run.setup, run.setup.args
    pid = setup.server_pid
    prefix = f"/organizations/{setup.org}/pushy"
    spec = loadgen.LoadSpec(
        base_url=setup.url,
        user=setup.user,
        key_pem=setup.key_pem,
        paths=(("node_states", f"{prefix}/node_states"), ("jobs", f"{prefix}/jobs")),
        rate=args.rate,
        seconds=args.duration,
        threads=args.threads,
        nice=args.clients_nice,
    )
    rss0 = procstat.memory_kib(pid).get("VmRSS") if pid else None
    sampler = Sampler(pid)
    chunks0, waits0 = run.fleet.total("output_chunks"), run.fleet.total("output_waits")
    progress(f"{args.nodes} nodes print {args.output_bytes} bytes each; API load {args.rate:g}/s")
    proc, pipe = await trio.to_thread.run_sync(loadgen.start, spec)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(sampler.run, 0.25))
        outcome = await run_job(
            run, setup.names, seconds=args.job_timeout, extra={"capture_output": True}
        )
        nursery.cancel_scope.cancel()
    load = await trio.to_thread.run_sync(pipe.recv)
    await trio.to_thread.run_sync(proc.join, 10)
    await trio.sleep(2 * REPORT_LAG)
    rss_after = procstat.memory_kib(pid).get("VmRSS") if pid else None
    timeline = job_timeline(outcome, {})
    progress(f"  {timeline['status']}: reading back {args.nodes} outputs")
    whole = await _read_back(setup, outcome["job_id"], args.output_bytes)
    took = timeline["post_to_complete_s"]
    latency = [v for label in ("node_states", "jobs") for v in load[label]["latency"]]
    service = [v * 1000 for label in ("node_states", "jobs") for v in load[label]["service"]]
    errors = sum(load[label]["errors"] for label in ("node_states", "jobs"))
    return {
        "job_id": outcome["job_id"],
        "status": timeline["status"],
        "post_to_complete_s": took,
        "ingest_mib_per_s": rounded(args.nodes * args.output_bytes / 2**20 / took, 1)
        if took
        else None,
        "server_rss_mib": [
            mib(rss0),
            mib(max([*sampler.rss_kib, rss0 or 0, rss_after or 0]) or None),
            mib(rss_after),
        ],
        "server_cpu_percent": timeline["server_cpu_percent"],
        "fleet_cpu_percent": timeline["fleet_cpu_percent"],
        "api": {
            **latency_summary(latency, errors),
            "service_p99_ms": rounded(report.percentile(service, 99), 2),
            "load_seconds": args.duration,
        },
        "chunks": run.fleet.total("output_chunks") - chunks0,
        "chunk_waits": run.fleet.total("output_waits") - waits0,
        "whole": whole,
        "false_offline": len(run.monitor.downs),
        "all_succeeded": timeline["status"] == "complete" and timeline["succeeded"] == args.nodes,
    }


async def _read_back(setup: Setup, job_id: str, size: int) -> int:
    """How many nodes' stdout, read over REST, is exactly what the fleet printed."""
    limiter = trio.CapacityLimiter(8)
    whole = 0

    def check(name: str) -> bool:
        path = f"/organizations/{setup.org}/pushy/jobs/{job_id}/output/{name}/stdout"
        reply = setup.api.send(
            "GET", path, b"", setup.user, setup.key, accept="application/octet-stream"
        )
        return reply.status == 200 and reply.data == output_pattern(name, 0, size)

    async def one(name: str) -> None:
        nonlocal whole
        if await trio.to_thread.run_sync(check, name, limiter=limiter):
            whole += 1

    async with trio.open_nursery() as nursery:
        for name in setup.names:
            nursery.start_soon(one, name)
    return whole
