"""The fleet scenarios of ``pushy bench``: hold, fanout, storm and api (flood: ``flood.py``).

Each one: a server (started here unless ``--server-url``), N provisioned nodes, the simulated
fleet and the websocket monitor (``harness``); then the measurement; then a table on stdout and
the JSON file. The server is a separate process (ours by default), so its CPU and memory come
from /proc.
"""

from __future__ import annotations

import argparse
import calendar
import os
import statistics
import time
from collections import Counter
from typing import Any

import orjson
import trio

from appliance.bench import loadgen, procstat, report
from appliance.bench.harness import (
    PROGRESS_SECONDS,
    Run,
    Sampler,
    Setup,
    common_params,
    finish,
    heartbeats_received,
    mib,
    rounded,
    run_with_fleet,
    server_status,
    wait_available,
)
from appliance.bench.provision import progress
from appliance.signedhttp import Stream
from appliance.sse import SseParser


# hold ----------------------------------------------------------------------------------------
def hold(args: argparse.Namespace) -> int:
    setup, results = run_with_fleet(args, _hold_body)
    params = {**common_params(setup), "duration_s": args.duration}
    r = results
    rows = [
        ("nodes", args.nodes),
        ("heartbeat interval (ms)", args.interval),
        ("time until all available (s)", r["time_to_all_available_s"]),
        ("node start -> available p50 (s)", r["fleet"]["node_start_to_available_p50_s"]),
        ("node start -> available p99 (s)", r["fleet"]["node_start_to_available_p99_s"]),
        ("held for (s)", r["held_s"]),
        ("server CPU % (mean)", r["server_cpu_percent"]),
        ("server CPU % (peak 1 s)", r["server_cpu_peak_percent"]),
        ("server RSS peak (MiB)", r["server_rss_peak_mib"]),
        ("server RSS end (MiB)", r["server_rss_end_mib"]),
        ("heartbeats/s at the server", r["server_heartbeats_per_s"]),
        ("heartbeats/s expected", r["expected_heartbeats_per_s"]),
        ("false offline transitions", r["false_offline"]),
        ("nodes available at the end", r["available_end"]),
        ("simulator reconfigures", sum(r["fleet"]["reconfigures"].values())),
        ("fleet CPU % (all workers)", r["fleet_cpu_percent"]),
    ]
    return finish(setup, "hold", params, results, rows)


async def _hold_body(run: Run) -> dict[str, Any]:
    setup, args = run.setup, run.setup.args
    to_all = None if run.all_available_at is None else run.all_available_at - run.t0
    pid = setup.server_pid
    sampler = Sampler(pid)
    meter = procstat.CpuMeter(pid) if pid else None
    before = await trio.to_thread.run_sync(server_status, setup.url)
    fleet_cpu0 = run.fleet.cpu_seconds()
    started = time.monotonic()
    if meter:
        meter.mark()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.run)
        end = started + args.duration
        while time.monotonic() < end:
            await trio.sleep(min(10.0, max(0.0, end - time.monotonic())))
            progress(
                f"holding: {time.monotonic() - started:.0f}/{args.duration:g} s, "
                f"available {run.monitor.available()}/{args.nodes}, "
                f"false offline {len(run.monitor.downs)}"
            )
        nursery.cancel_scope.cancel()
    held = time.monotonic() - started
    after = await trio.to_thread.run_sync(server_status, setup.url)
    hb0, hb1 = heartbeats_received(before), heartbeats_received(after)
    memory = procstat.memory_kib(pid) if pid else {}
    await trio.sleep(2 * REPORT_LAG)
    fleet_cpu = run.fleet.cpu_seconds() - fleet_cpu0
    return {
        "time_to_all_available_s": rounded(to_all),
        "held_s": round(held, 2),
        "server_cpu_percent": rounded(meter.read(), 1) if meter else None,
        "server_cpu_peak_percent": rounded(max(sampler.cpu, default=None), 1)
        if sampler.cpu
        else None,
        "server_rss_peak_mib": mib(memory.get("VmHWM")),
        "server_rss_end_mib": mib(memory.get("VmRSS")),
        "server_heartbeats_per_s": None
        if hb0 is None or hb1 is None
        else round((hb1 - hb0) / held, 1),
        "expected_heartbeats_per_s": round(args.nodes / (args.interval / 1000.0), 1),
        "server_dropped": (after.get("counters") or {}).get("dropped"),
        "false_offline": len(run.monitor.downs),
        "false_offline_samples": run.monitor.downs[:20],
        "available_end": run.monitor.available(),
        "fleet_cpu_percent": round(100 * fleet_cpu / held, 1),
    }


REPORT_LAG = 0.3  # the workers' report period plus slack


# fanout --------------------------------------------------------------------------------------
def parse_sse_time(text: Any) -> float | None:
    """``2014-07-10 05:17:44.995958Z`` -> epoch seconds."""
    if not isinstance(text, str) or not text.endswith("Z"):
        return None
    try:
        whole, _, frac = text[:-1].partition(".")
        tm = time.strptime(whole, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(tm) + (int(frac) / 10 ** len(frac) if frac.isdigit() else 0.0)


def read_job_feed(
    setup: Setup, job_id: str, seconds: float
) -> tuple[list[tuple[str, dict[str, Any], float]], int]:
    """(event, data, arrival time) of the job's SSE feed until ``job_complete`` (blocking),
    and how many times the feed had to be resumed.

    The server drops a feed reader that falls more than its buffer behind (a big job makes
    thousands of events at once); the feed is then resumed with ``Last-Event-ID``."""
    path = f"/organizations/{setup.org}/pushy/job_status_feed/{job_id}"
    events: list[tuple[str, dict[str, Any], float]] = []
    deadline = time.monotonic() + seconds
    last_id: str | None = None
    resumed = -1
    while time.monotonic() < deadline:
        resumed += 1
        headers = {"Last-Event-ID": last_id} if last_id else None
        stream = setup.api.open_stream(
            path, setup.user, setup.key, headers=headers, timeout=seconds
        )
        if not isinstance(stream, Stream):
            raise RuntimeError(f"job feed: HTTP {stream.status}")
        with stream:
            for event in stream.events(SseParser()):
                events.append((event.event, orjson.loads(event.data), time.time()))
                if event.id and event.id.startswith("job-"):
                    last_id = event.id
                if event.event in ("job_complete", "summary"):
                    return events, resumed
                if time.monotonic() >= deadline:
                    break
        time.sleep(0.05)
    return events, resumed


async def run_job(
    run: Run,
    nodes: list[str],
    *,
    command: str = "true",
    seconds: float = 120.0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """POST a job (``extra``: more fields of its body), follow its feed to the end; the
    timeline of one job."""
    setup = run.setup
    meter = procstat.CpuMeter(setup.server_pid) if setup.server_pid else None
    if meter:
        meter.mark()
    fleet0, busy0, wall0 = run.fleet.cpu_seconds_now(), procstat.machine_busy_seconds(), time.time()
    body = {"command": command, "nodes": nodes, "run_timeout": int(seconds), **(extra or {})}
    path = f"/organizations/{setup.org}/pushy/jobs"
    t_post = time.time()
    created = await trio.to_thread.run_sync(
        setup.api.json, "POST", path, body, setup.user, setup.key
    )
    t_created = time.time()
    job_id = created["id"]
    events, resumed = await trio.to_thread.run_sync(read_job_feed, setup, job_id, seconds)
    t_seen = time.time()
    cpu = meter.read() if meter else None
    wall = max(time.time() - wall0, 1e-6)
    fleet_cpu = 100 * (run.fleet.cpu_seconds_now() - fleet0) / wall
    machine_cpu = 100 * (procstat.machine_busy_seconds() - busy0) / wall
    job: dict[str, Any] = {}
    for _ in range(int(seconds / 0.2) + 1):  # the feed may have given up first: poll
        job = await trio.to_thread.run_sync(
            setup.api.json, "GET", f"{path}/{job_id}", None, setup.user, setup.key
        )
        if job.get("status") not in ("new", "voting", "running"):
            break
        await trio.sleep(0.2)
    return {
        "job_id": job_id,
        "t_post": t_post,
        "t_created": t_created,
        "t_seen": t_seen,
        "events": events,
        "job": job,
        "server_cpu_percent": cpu,
        "fleet_cpu_percent": fleet_cpu,
        "machine_cpu_percent": machine_cpu,
        "feed_resumed": resumed,
    }


def most_at_once(starts: list[float], seconds: float) -> int:
    """The most runs of ``seconds`` each going on at one moment, given their starts."""
    edges = sorted([(t, 1) for t in starts] + [(t + seconds, -1) for t in starts])
    running = peak = 0
    for _, delta in edges:  # an end sorts before a start at the same instant
        running += delta
        peak = max(peak, running)
    return peak


def job_timeline(
    outcome: dict[str, Any], sim_runs: dict[str, tuple[float, float]], job_seconds: float = 0.0
) -> dict:
    t_post = outcome["t_post"]
    stamps: dict[str, float] = {}
    run_starts: list[float] = []
    for name, data, _arrival in outcome["events"]:
        t = parse_sse_time(data.get("timestamp"))
        if t is None:
            continue
        if name == "run_start":
            run_starts.append(t - t_post)
        elif name not in stamps:
            stamps[name] = t
    n = len(outcome["job"].get("nodes", {}).get("succeeded", []))
    total = sum(len(v) for v in outcome["job"].get("nodes", {}).values())
    sim = sorted(t_run - t_post for t_run, _ in sim_runs.values())
    complete = stamps.get("job_complete")
    voted = stamps.get("quorum_succeeded") or stamps.get("quorum_failed")
    start = stamps.get("start")

    def at_fraction(values: list[float], q: float) -> float | None:
        return rounded(report.percentile(values, q)) if len(values) >= max(1, total // 2) else None

    return {
        "job_id": outcome["job_id"],
        "status": outcome["job"].get("status"),
        "nodes": total,
        "succeeded": n,
        "post_to_created_s": rounded(outcome["t_created"] - t_post),
        "post_to_complete_s": rounded(None if complete is None else complete - t_post),
        "post_to_complete_seen_s": rounded(outcome["t_seen"] - t_post),
        "voting_s": rounded(None if voted is None or start is None else voted - start),
        "running_s": rounded(None if voted is None or complete is None else complete - voted),
        "running_50_s": at_fraction(run_starts, 50),
        "running_90_s": at_fraction(run_starts, 90),
        "running_99_s": at_fraction(run_starts, 99),
        "sim_run_50_s": at_fraction(sim, 50),
        "sim_run_90_s": at_fraction(sim, 90),
        "sim_run_99_s": at_fraction(sim, 99),
        # the fleet's runs take --job-seconds each from the moment a node got ``run``
        "most_running_at_once": most_at_once(sim, job_seconds) if job_seconds > 0 else None,
        "server_cpu_percent": rounded(outcome["server_cpu_percent"], 1),
        "fleet_cpu_percent": rounded(outcome["fleet_cpu_percent"], 1),
        "machine_cpu_percent": rounded(outcome["machine_cpu_percent"], 1),
        "feed_resumed": outcome["feed_resumed"],
    }


def fanout(args: argparse.Namespace) -> int:
    setup, results = run_with_fleet(args, _fanout_body)
    params = {**common_params(setup), "repeat": args.repeat}
    params["max_concurrency"] = args.max_concurrency
    r = results["median"]
    rows = [
        ("nodes", args.nodes),
        ("repeats", args.repeat),
        ("max_concurrency", args.max_concurrency or "-"),
        ("most nodes running at once (fleet)", r.get("most_running_at_once")),
        ("POST -> complete (s, median)", r.get("post_to_complete_s")),
        ("POST -> 50 % running (s)", r.get("running_50_s")),
        ("POST -> 90 % running (s)", r.get("running_90_s")),
        ("POST -> 99 % running (s)", r.get("running_99_s")),
        ("voting phase (s)", r.get("voting_s")),
        ("running phase (s)", r.get("running_s")),
        ("POST -> 201 (s)", r.get("post_to_created_s")),
        ("server CPU % during the job", r.get("server_cpu_percent")),
        ("fleet CPU % during the job (all workers)", r.get("fleet_cpu_percent")),
        (
            f"machine CPU % during the job (of {100 * (os.cpu_count() or 1)})",
            r.get("machine_cpu_percent"),
        ),
        ("jobs complete, all nodes succeeded", results["all_succeeded"]),
    ]
    return finish(setup, "fanout", params, results, rows)


async def _fanout_body(run: Run) -> dict[str, Any]:
    args = run.setup.args
    jobs: list[dict[str, Any]] = []
    for index in range(args.repeat):
        if index:
            await wait_available(run, args.available_timeout, f"before job {index + 1}")
            await trio.sleep(args.pause)
        progress(f"job {index + 1}/{args.repeat} on {args.nodes} nodes")
        extra = {}
        if args.max_concurrency is not None:
            value = args.max_concurrency
            extra["max_concurrency"] = value if value.endswith("%") else int(value)
        outcome = await run_job(run, run.setup.names, seconds=args.job_timeout, extra=extra)
        await trio.sleep(2 * REPORT_LAG)
        sim_runs = run.fleet.runs.get(outcome["job_id"], {})
        timeline = job_timeline(outcome, sim_runs, args.job_seconds)
        progress(
            f"  {timeline['status']}: {timeline['succeeded']}/{timeline['nodes']} succeeded, "
            f"POST -> complete {timeline['post_to_complete_s']} s"
        )
        jobs.append(timeline)
    keys = [k for k, v in jobs[0].items() if isinstance(v, int | float) and k != "nodes"]
    median = {
        k: rounded(statistics.median(j[k] for j in jobs if j.get(k) is not None))
        for k in keys
        if any(j.get(k) is not None for j in jobs)
    }
    return {
        "time_to_all_available_s": rounded(
            None if run.all_available_at is None else run.all_available_at - run.t0
        ),
        "jobs": jobs,
        "median": median,
        "all_succeeded": all(
            j["status"] == "complete" and j["succeeded"] == args.nodes for j in jobs
        ),
    }


# storm ---------------------------------------------------------------------------------------
def storm(args: argparse.Namespace) -> int:
    if args.server_url:
        raise SystemExit("pushy bench storm restarts the server: it cannot use --server-url")
    setup, results = run_with_fleet(args, _storm_body)
    params = {**common_params(setup), "deadline_s": args.deadline}
    r = results
    rows = [
        ("nodes", args.nodes),
        ("server down (SIGTERM -> ready) (s)", r["restart_s"]),
        ("ready -> all available (s)", r["ready_to_all_available_s"]),
        ("SIGTERM -> all available (s)", r["stop_to_all_available_s"]),
        ("peak heartbeats/s at the server", r["peak_heartbeats_per_s"]),
        ("peak messages/s at the server", r["peak_messages_per_s"]),
        ("config fetches during the storm", r["config_fetches"]),
        ("nodes stuck after the deadline", r["stuck"]),
        ("false offline after recovery", r["false_offline_after"]),
        ("server CPU % during recovery", r["server_cpu_percent"]),
        ("fleet CPU % during recovery (all workers)", r["fleet_cpu_percent"]),
    ]
    return finish(setup, "storm", params, results, rows)


async def _storm_body(run: Run) -> dict[str, Any]:
    setup, args = run.setup, run.setup.args
    server = setup.server
    assert server is not None
    n = len(setup.names)
    server.settings.update({k: server.ports[k] for k in ("api_port", "command_port")})
    server.settings["server_heartbeat_port"] = server.ports["server_heartbeat_port"]
    await trio.sleep(args.settle)
    fetches0 = run.fleet.total("config_fetches")
    run.monitor.counting = False
    progress("stopping the server (SIGTERM)")
    t_term = time.time()
    await trio.to_thread.run_sync(server.stop, 60)
    t_down = time.time()
    await trio.sleep(args.down)
    progress("starting the server again (same ports, same state)")
    await trio.to_thread.run_sync(server.start)
    t_ready = time.time()
    pid = server.proc.pid if server.proc else None
    meter = procstat.CpuMeter(pid) if pid else None
    if meter:
        meter.mark()
    fleet_cpu0, recovering = run.fleet.cpu_seconds(), time.monotonic()
    rates = _Rates(setup.url)
    await trio.to_thread.run_sync(rates.sample)
    t_all = None
    deadline = time.monotonic() + args.deadline
    available = 0
    last_progress = 0.0
    path = f"/organizations/{setup.org}/pushy/node_states"
    while time.monotonic() < deadline:
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(rates.sample)
        states = await trio.to_thread.run_sync(
            setup.api.json, "GET", path, None, setup.user, setup.key
        )
        available = sum(1 for s in states if s.get("availability") == "available")
        if time.monotonic() - last_progress >= PROGRESS_SECONDS:
            last_progress = time.monotonic()
            progress(f"recovering: {available}/{n} available")
        if available >= n:
            t_all = time.time()
            break
    # the reconfigure wave (new incarnation seen -> config fetch after a splay) may come after
    # every node is back: keep sampling the rates through it, and count false offlines
    run.monitor.counting = True
    downs_before = len(run.monitor.downs)
    tail = time.monotonic() + max(args.settle, 3 * args.interval / 1000.0)
    while time.monotonic() < tail:
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(rates.sample)
    cpu = meter.read() if meter else None
    recovered = time.monotonic() - recovering
    await trio.sleep(2 * REPORT_LAG)
    fleet_cpu = run.fleet.cpu_seconds() - fleet_cpu0  # the workers report every 0.25 s
    fetches = run.fleet.total("config_fetches") - fetches0
    reasons = Counter(reason for t, _, reason in run.fleet.reconfigures if t >= t_term)
    return {
        "time_to_all_available_s": rounded(
            None if run.all_available_at is None else run.all_available_at - run.t0
        ),
        "stop_s": round(t_down - t_term, 3),
        "restart_s": round(t_ready - t_term, 3),
        "ready_to_all_available_s": rounded(None if t_all is None else t_all - t_ready),
        "stop_to_all_available_s": rounded(None if t_all is None else t_all - t_term),
        "peak_heartbeats_per_s": round(rates.peak_heartbeats, 1),
        "peak_messages_per_s": round(rates.peak_messages, 1),
        "config_fetches": fetches,
        "reconfigures_during_storm": dict(reasons),
        "stuck": n - available,
        "false_offline_after": len(run.monitor.downs) - downs_before,
        "server_cpu_percent": rounded(cpu, 1),
        "fleet_cpu_percent": round(100 * fleet_cpu / recovered, 1),
    }


class _Rates:
    """Peak message rates at the server, from its counters between samples."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.peak_heartbeats = self.peak_messages = 0.0
        self.last: tuple[float, int, int] | None = None

    def sample(self) -> None:
        status = server_status(self.url)
        received = (status.get("counters") or {}).get("received", {})
        now = time.monotonic()
        hb, total = int(received.get("heartbeat", 0)), sum(received.values())
        if self.last is not None and now > self.last[0]:
            dt = now - self.last[0]
            self.peak_heartbeats = max(self.peak_heartbeats, (hb - self.last[1]) / dt)
            self.peak_messages = max(self.peak_messages, (total - self.last[2]) / dt)
        self.last = (now, hb, total)


# api -----------------------------------------------------------------------------------------
def api(args: argparse.Namespace) -> int:
    setup, results = run_with_fleet(args, _api_body)
    params = {
        **common_params(setup),
        "rate": args.rate,
        "duration_s": args.duration,
        "threads": args.threads,
        "job_every_s": args.job_every,
        "job_nodes": args.job_nodes,
    }
    rows: list[tuple[str, Any]] = [("nodes", args.nodes), ("request rate (/s)", args.rate)]
    for label in ("get_job", "node_states"):
        r = results[label]
        rows += [
            (f"GET {label} p50 (ms)", r["p50_ms"]),
            (f"GET {label} p99 (ms)", r["p99_ms"]),
            (f"GET {label} max (ms)", r["max_ms"]),
            (
                f"GET {label} service p50 / p99 (ms)",
                f"{r['service_p50_ms']} / {r['service_p99_ms']}",
            ),
            (f"GET {label} errors", r["errors"]),
        ]
    s = results["sse"]
    rows += [
        ("achieved rate (/s)", results["achieved_rate"]),
        ("SSE delivery p50 (ms)", s["p50_ms"]),
        ("SSE delivery p99 (ms)", s["p99_ms"]),
        ("SSE delivery max (ms)", s["max_ms"]),
        ("ack_run -> run_start seen p50 (ms)", results["ack_to_feed"]["p50_ms"]),
        ("ack_run -> run_start seen p99 (ms)", results["ack_to_feed"]["p99_ms"]),
        ("server CPU %", results["server_cpu_percent"]),
        ("load generator CPU %", results["loadgen_cpu_percent"]),
        ("load generator RSA signatures", results["loadgen_signatures"]),
        ("fleet and load generator niceness", results["clients_niceness"]),
        ("fleet CPU % (all workers)", results["fleet_cpu_percent"]),
        ("false offline transitions", results["false_offline"]),
    ]
    return finish(setup, "api", params, results, rows)


def latency_summary(values: list[float], errors: int = 0) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "p50_ms": rounded(report.percentile(ms, 50), 2),
        "p99_ms": rounded(report.percentile(ms, 99), 2),
        "max_ms": rounded(max(ms, default=None), 2) if ms else None,
        "errors": errors,
    }


async def _api_body(run: Run) -> dict[str, Any]:
    setup, args = run.setup, run.setup.args
    progress("a first job, for GET /jobs/ID")
    first = await run_job(run, setup.names, seconds=args.job_timeout)
    prefix = f"/organizations/{setup.org}/pushy"
    spec = loadgen.LoadSpec(
        base_url=setup.url,
        user=setup.user,
        key_pem=setup.key_pem,
        paths=(
            ("get_job", f"{prefix}/jobs/{first['job_id']}"),
            ("node_states", f"{prefix}/node_states"),
        ),
        rate=args.rate,
        seconds=args.duration,
        threads=args.threads,
        nice=args.clients_nice,
    )
    meter = procstat.CpuMeter(setup.server_pid) if setup.server_pid else None
    proc, pipe = await trio.to_thread.run_sync(loadgen.start, spec)
    if meter:
        meter.mark()
    fleet_cpu0, started = run.fleet.cpu_seconds(), time.monotonic()
    progress(f"{args.rate:g} requests/s for {args.duration:g} s, a job every {args.job_every:g} s")
    sse: list[float] = []
    ack_to_feed: list[float] = []
    end = time.monotonic() + args.duration
    job_nodes = setup.names[: max(1, min(args.job_nodes, len(setup.names)))]
    jobs = 0
    while time.monotonic() < end:
        t_next = time.monotonic() + args.job_every
        outcome = await run_job(run, job_nodes, seconds=args.job_timeout)
        jobs += 1
        opened = outcome["t_created"]
        live = outcome["events"] if outcome["feed_resumed"] == 0 else []  # no replayed events
        for _name, data, arrival in live:
            t = parse_sse_time(data.get("timestamp"))
            if t is not None and t >= opened:  # live events only, not the replayed backlog
                sse.append(arrival - t)
        await trio.sleep(2 * REPORT_LAG)
        sims = run.fleet.runs.get(outcome["job_id"], {})
        for name, data, arrival in outcome["events"]:
            if name == "run_start" and data.get("node") in sims:
                t_ack = sims[data["node"]][1]
                if t_ack >= opened:
                    ack_to_feed.append(arrival - t_ack)
        await trio.sleep(max(0.0, t_next - time.monotonic()))
    load = await trio.to_thread.run_sync(pipe.recv)
    await trio.to_thread.run_sync(proc.join, 10)
    cpu = meter.read() if meter else None
    await trio.sleep(2 * REPORT_LAG)  # the workers' last CPU figures
    fleet_cpu = run.fleet.cpu_seconds() - fleet_cpu0
    wall = time.monotonic() - started
    out: dict[str, Any] = {
        "sse": latency_summary(sse),
        "ack_to_feed": latency_summary(ack_to_feed),
        "jobs_during_load": jobs,
        "achieved_rate": round(load["sent"] / load["seconds"], 1) if load["seconds"] else None,
        "server_cpu_percent": rounded(cpu, 1),
        "loadgen_cpu_seconds": round(load["cpu_seconds"], 2),
        "loadgen_cpu_percent": round(100 * load["cpu_seconds"] / load["seconds"], 1)
        if load["seconds"]
        else None,
        "loadgen_signatures": load["signatures"],
        "clients_niceness": sorted(
            {load["niceness"]} | {s.get("niceness") for s in run.fleet.stats.values()}
        ),
        "fleet_cpu_seconds": round(fleet_cpu, 2),
        "fleet_cpu_percent": round(100 * fleet_cpu / wall, 1),
        "false_offline": len(run.monitor.downs),
        "false_offline_samples": run.monitor.downs[:20],
    }
    for label in ("get_job", "node_states"):
        record = load[label]
        out[label] = {
            **latency_summary(record["latency"], record["errors"]),
            "service_p50_ms": rounded(
                report.percentile([v * 1000 for v in record["service"]], 50), 2
            ),
            "service_p99_ms": rounded(
                report.percentile([v * 1000 for v in record["service"]], 99), 2
            ),
            "statuses": record["statuses"],
        }
    return out
