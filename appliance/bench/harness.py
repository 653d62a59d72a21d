"""What every fleet scenario of ``pushy bench`` shares: the server (started here unless
``--server-url``) with its org and N provisioned nodes, the running fleet and its websocket
monitor, the server's CPU and memory from /proc, and the table and JSON file at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from appliance.bench import procstat, provision, report
from appliance.bench.fleet import FDS_PER_NODE, Fleet
from appliance.bench.monitor import NodeMonitor
from appliance.bench.provision import progress
from appliance.core.keys import load_private_pem
from appliance.localserver import LocalServer
from appliance.signedhttp import SignedClient

PROGRESS_SECONDS = 2.0
MONITOR_CONNECT_SECONDS = 30.0


# Setup ---------------------------------------------------------------------------------------
@dataclass
class Setup:
    args: argparse.Namespace
    url: str
    org: str
    user: str
    key_pem: str
    key: RSAPrivateKey
    api: SignedClient
    names: list[str]
    key_file: Path
    server: LocalServer | None = None
    root: Path | None = None
    provision_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def server_pid(self) -> int | None:
        if self.server is not None and self.server.proc is not None:
            return self.server.proc.pid
        return self.args.server_pid

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.stop(timeout=30)
            except Exception:  # a wedged server: killed by stop()
                pass
        if self.root is not None and not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root is not None:
            progress(f"kept the server state and log in {self.root}")


def server_settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"heartbeat_interval": args.interval, "log_level": "info"}
    settings.update(extra)
    for item in args.server_setting or ():
        name, _, value = item.partition("=")
        try:
            settings[name] = orjson.loads(value)
        except orjson.JSONDecodeError:
            settings[name] = value
    return settings


def run_with_fleet(
    args: argparse.Namespace, body: Callable[[Run], Awaitable[dict[str, Any]]]
) -> tuple[Setup, dict[str, Any]]:
    """A fleet scenario's run: `prepare`, ``body`` with the fleet (`with_fleet`), then the
    server stopped and its files removed whatever happened."""
    setup = prepare(args)
    try:
        return setup, trio.run(with_fleet, setup, body)
    finally:
        setup.close()


def prepare(args: argparse.Namespace, **extra: Any) -> Setup:
    """Server, keys, org and clients (blocking; progress on stderr)."""
    n = args.nodes
    procstat.raise_open_files(n * (FDS_PER_NODE + 1) + 1024)
    key_file = provision.ensure_keys(n, Path(args.key_cache))
    server = root = None
    if args.server_url:
        url, user = args.server_url.rstrip("/"), args.user
        if args.key is None:
            raise SystemExit("pushy bench: --server-url needs --key (the admin's private key)")
        key_pem = Path(args.key).read_text()
        org = args.org or time.strftime("bench-%Y%m%d%H%M%S")
    else:
        root = Path(tempfile.mkdtemp(prefix="pushy-bench-"))
        server = LocalServer(root / "state", **server_settings(args, **extra))
        progress(f"starting a server (state and log in {root})")
        server.start()
        url, user = server.url, "pivotal"
        key_pem = server.pivotal_key.read_text()
        org = args.org or "bench"
    setup = Setup(
        args=args,
        url=url,
        org=org,
        user=user,
        key_pem=key_pem,
        key=load_private_pem(key_pem),
        api=SignedClient(url),
        names=provision.node_names(n),
        key_file=key_file,
        server=server,
        root=root,
    )
    pid = setup.server_pid
    if pid is not None:
        limit = procstat.open_files_limit(pid)
        if limit is not None and limit < 2 * n + 256:
            note = f"the server's open-files limit ({limit}) is below 2 per node ({2 * n})"
            setup.notes.append(note)
            progress(f"WARNING: {note}")
    try:
        provision.create_org(setup.api, user, setup.key, org)
        pems = provision.read_keys(key_file, n)
        setup.provision_seconds = provision.register_clients(
            setup.api, user, setup.key, org, setup.names, pems
        )
    except BaseException:
        setup.close()
        raise
    return setup


def server_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/pushy/_status?counters=true", timeout=10) as r:
        return orjson.loads(r.read())


def heartbeats_received(status: dict[str, Any]) -> int | None:
    counters = status.get("counters")
    if not isinstance(counters, dict):
        return None
    return int(counters.get("received", {}).get("heartbeat", 0))


def edge_costs(
    before: dict[str, Any], after: dict[str, Any], seconds: float
) -> list[dict[str, Any]]:
    """Each edge process at the end of a phase: nodes, CPU % over the phase, RSS, descriptors
    (as the edges report them in ``/pushy/_status?counters=true``)."""
    start = {e["name"]: e for e in (before.get("counters") or {}).get("edges", [])}
    out = []
    for e in (after.get("counters") or {}).get("edges", []):
        was = start.get(e["name"], {})
        cpu0 = was.get("cpu_seconds") if was.get("pid") == e.get("pid") else 0.0  # restarted
        cpu = e.get("cpu_seconds")
        out.append(
            {
                "name": e["name"],
                "pid": e.get("pid"),
                "nodes": e.get("nodes"),
                "cpu_percent": None
                if cpu is None or cpu0 is None or seconds <= 0
                else round(100 * (cpu - cpu0) / seconds, 1),
                "rss_mib": mib(e.get("rss_kib")),
                "fds": e.get("fds"),
                "forwarded": e.get("forwarded"),
                "absorbed": e.get("absorbed"),
            }
        )
    return out


def _costs_now(setup: Setup, run: Run) -> dict[str, float | None]:
    """CPU seconds so far of the server, its edges, the fleet and the whole machine."""
    try:
        edges = (server_status(setup.url).get("counters") or {}).get("edges") or []
    except (OSError, ValueError):  # a server too busy to answer in 10 s: no edge figure
        edges = []
    return {
        "t": time.monotonic(),
        "server": procstat.cpu_seconds(setup.server_pid) if setup.server_pid else None,
        "edges": sum(float(e.get("cpu_seconds") or 0.0) for e in edges) if edges else None,
        "fleet": run.fleet.cpu_seconds_now(),
        "machine": procstat.machine_busy_seconds(),
    }


def connect_costs(
    start: dict[str, float | None], end: dict[str, float | None], nodes: int
) -> dict[str, Any]:
    """Where the CPU of the connect phase went: seconds and ms per node for each part, and how
    busy the machine was (200 % = both cores of this machine), so a reader can tell a slow
    server from a saturated machine. An edge restarted mid-phase makes its figure low."""
    wall = max(float(end["t"] or 0) - float(start["t"] or 0), 1e-6)
    out: dict[str, Any] = {"seconds": round(wall, 2)}
    for part in ("server", "edges", "fleet", "machine"):
        a, b = start.get(part), end.get(part)
        if a is None or b is None:
            continue
        out[f"{part}_cpu_s"] = round(b - a, 2)
        out[f"{part}_ms_per_node"] = round(1000 * (b - a) / max(nodes, 1), 2)
    if "machine_cpu_s" in out:
        out["machine_cpu_percent"] = round(100 * out["machine_cpu_s"] / wall, 1)
    return out


def connect_rows(results: dict[str, Any]) -> list[tuple[str, Any]]:
    c = results.get("connect")
    if not c:
        return []
    parts = [p for p in ("server", "edges", "fleet") if f"{p}_ms_per_node" in c]
    return [
        (
            "connect: CPU ms per node (" + ", ".join(parts) + ")",
            ", ".join(str(c[f"{p}_ms_per_node"]) for p in parts),
        ),
        (
            f"connect: machine CPU % over {c['seconds']} s (of {100 * (os.cpu_count() or 1)})",
            c.get("machine_cpu_percent"),
        ),
    ]


def edge_rows(results: dict[str, Any]) -> list[tuple[str, Any]]:
    """Report rows: one per edge (nodes, CPU %, RSS MiB, descriptors)."""
    rows = []
    for e in results.get("edges") or []:
        rows.append(
            (
                f"edge {e['name']}: nodes, CPU %, RSS MiB, fds",
                f"{e['nodes']}, {e['cpu_percent']}, {e['rss_mib']}, {e['fds']}",
            )
        )
    return rows


# Running a fleet -----------------------------------------------------------------------------
@dataclass
class Run:
    setup: Setup
    fleet: Fleet
    monitor: NodeMonitor
    t0: float = 0.0
    all_available_at: float | None = None


async def with_fleet(
    setup: Setup, body: Callable[[Run], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Start the fleet, wait until every node is available, run ``body``, stop the fleet."""
    args = setup.args
    fleet = Fleet(
        server_url=setup.url,
        org=setup.org,
        names=setup.names,
        key_file=setup.key_file,
        workers=args.workers,
        ramp=args.ramp,
        job_seconds=args.job_seconds,
        whitelist=("true", "sleep", "chef-client"),
        fetch_threads=args.fetch_threads,
        nice=args.clients_nice,
        output_bytes=getattr(args, "output_bytes", 0),
    )
    monitor = NodeMonitor(setup.url, setup.org, setup.user, setup.key)
    run = Run(setup, fleet, monitor)
    progress(f"spawning {fleet.workers} fleet workers for {len(setup.names)} nodes")
    await trio.to_thread.run_sync(fleet.spawn)
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fleet.pump)
        nursery.start_soon(monitor.run)
        with trio.move_on_after(MONITOR_CONNECT_SECONDS):
            await monitor.connected.wait()
        try:
            start = await trio.to_thread.run_sync(_costs_now, setup, run)
            run.t0 = fleet.start()
            progress(f"starting {len(setup.names)} nodes over {args.ramp:g} s")
            await wait_available(run, args.available_timeout + args.ramp, "connecting")
            connected = await trio.to_thread.run_sync(_costs_now, setup, run)
            results["connect"] = connect_costs(start, connected, len(setup.names))
            before = await trio.to_thread.run_sync(server_status, setup.url)
            started = time.monotonic()
            results.update(await body(run))
            after = await trio.to_thread.run_sync(server_status, setup.url)
            results["edges"] = edge_costs(before, after, time.monotonic() - started)
        finally:
            with trio.CancelScope(shield=True):
                progress("stopping the fleet")
                await fleet.stop()
            nursery.cancel_scope.cancel()
    results["fleet"] = fleet_summary(run)
    return results


async def wait_available(run: Run, seconds: float, phase: str) -> float | None:
    """Seconds (from the fleet start) until every node was available; None on timeout."""
    n = len(run.setup.names)
    deadline = time.monotonic() + seconds
    last = 0.0
    while time.monotonic() < deadline:
        available = run.monitor.available()
        if available >= n:
            run.all_available_at = time.time()
            progress(f"{phase}: all {n} nodes available")
            return run.all_available_at - run.t0
        if not run.fleet.alive():
            raise RuntimeError("a fleet worker died: " + "; ".join(run.fleet.errors)[-2000:])
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            progress(
                f"{phase}: started {len(run.fleet.started)}, channel up {len(run.fleet.up)}, "
                f"available {available}/{n}"
            )
        await trio.sleep(0.1)
    progress(f"{phase}: only {run.monitor.available()}/{n} available after {seconds:.0f} s")
    return None


def fleet_summary(run: Run) -> dict[str, Any]:
    fleet = run.fleet
    reasons = Counter(reason for _, _, reason in fleet.reconfigures)
    ups = sorted(t - fleet.started[name] for name, t in fleet.up.items() if name in fleet.started)
    avail = [
        t - run.fleet.started[name]
        for name, t in run.monitor.first_available.items()
        if name in run.fleet.started
    ]
    return {
        "workers": fleet.workers,
        "heartbeats_sent": fleet.total("heartbeats"),
        "config_fetches": fleet.total("config_fetches"),
        "signatures": fleet.total("signatures"),  # config requests signed (once a node)
        "fetch_failures": fleet.total("fetch_failures"),
        "send_failures": fleet.total("send_failures"),
        "invalid_commands": fleet.total("invalid_commands"),
        "reconfigures": dict(reasons),
        "cpu_seconds": round(fleet.cpu_seconds(), 2),
        "node_start_to_channel_up_p50_s": report.percentile(ups, 50),
        "node_start_to_available_p50_s": report.percentile(avail, 50),
        "node_start_to_available_p99_s": report.percentile(avail, 99),
        "errors": fleet.errors,
    }


def finish(
    setup: Setup, scenario: str, params: dict[str, Any], results: dict[str, Any], rows: list
) -> int:
    if setup.notes:
        results["notes"] = setup.notes
    path = report.write(scenario, params, results, directory=setup.args.results_dir)
    print(report.table([("metric", "value"), *rows, *connect_rows(results), *edge_rows(results)]))
    print(f"\nresults: {path}")
    return 0


def common_params(setup: Setup) -> dict[str, Any]:
    a = setup.args
    return {
        "nodes": a.nodes,
        "workers": a.workers or None,
        "heartbeat_interval_ms": a.interval,
        "ramp_s": a.ramp,
        "clients_nice": a.clients_nice,
        "job_seconds": a.job_seconds,
        "server": "external" if a.server_url else "local",
        "server_settings": server_settings(a) if not a.server_url else None,
        "provision_seconds": round(setup.provision_seconds, 2),
    }


class Sampler:
    """Server CPU % per period and RSS, sampled while a phase runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu: list[float] = []
        self.rss_kib: list[int] = []

    async def run(self, period: float = 1.0) -> None:
        if self.pid is None:
            return
        meter = procstat.CpuMeter(self.pid)
        meter.mark()
        while True:
            await trio.sleep(period)
            value = meter.read()
            meter.mark()
            if value is not None:
                self.cpu.append(value)
            rss = procstat.memory_kib(self.pid).get("VmRSS")
            if rss is not None:
                self.rss_kib.append(rss)


def mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def main_guard(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a scenario; a setup failure is one line and exit 1, not a traceback."""
    try:
        return fn(args)
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"pushy bench: {exc}", file=sys.stderr)
        return 1
