"""``pushy bench failover``: kill -9 the active of a PostgreSQL-backed pair under N nodes.

Started here: a real PostgreSQL (Debian's ``postgresql``), two ``pushy server``s sharing it on
127.0.0.2 and 127.0.0.3, and HAProxy (Debian's ``haproxy``) in front of their API ports, with
the health check docs/operations.md describes. The simulated fleet knows only HAProxy's
address: after a kill its nodes miss the server's heartbeats, reconfigure through HAProxy and
connect to the new active. Each of ``--kills`` rounds kills the active with SIGKILL and times

- kill → the standby answers as the active (its lease taken, the log read, its ports bound);
- kill → every node available again (``GET /node_states`` through HAProxy);

then starts the killed server again (it becomes the standby) and waits for HAProxy to send
everything to the active before the next round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from appliance.bench import procstat, provision
from appliance.bench.haproxy import HaProxy, ha_settings, role
from appliance.bench.harness import (
    PROGRESS_SECONDS,
    Run,
    Setup,
    common_params,
    finish,
    rounded,
    server_settings,
    with_fleet,
)
from appliance.bench.pgcluster import PgCluster, free_port
from appliance.bench.provision import progress
from appliance.bench.report import percentile
from appliance.core.keys import load_private_pem
from appliance.localserver import LocalServer
from appliance.signedhttp import SignedClient

HOSTS = ("127.0.0.2", "127.0.0.3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=20, help="kills of the active (default 20)")
    parser.add_argument(
        "--lease-timeout", type=float, default=10.0, help="the servers' lease_timeout (10)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="seconds after a kill before a node counts as stuck (default 120)",
    )


class Pair:
    """PostgreSQL, the two servers and HAProxy (blocking calls, for worker threads)."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.cluster = PgCluster().start()
        url = self.cluster.createdb("pushy")
        settings = server_settings(args, lease_timeout=args.lease_timeout)
        self.servers: list[LocalServer] = []
        for i, host in enumerate(HOSTS):
            server = LocalServer(
                root / f"s{i}" / "state",
                **{**settings, **ha_settings(host, free_port(host), url)},
            )
            server.state_dir.parent.mkdir(parents=True, exist_ok=True)
            self.servers.append(server)
        backends = [
            (s.settings["api_listen_address"], s.settings["api_port"]) for s in self.servers
        ]
        self.proxy = HaProxy(root / "haproxy", backends)

    @staticmethod
    def api_url(server: LocalServer) -> str:
        return f"http://{server.settings['api_listen_address']}:{server.settings['api_port']}"

    def start(self) -> None:
        first, second = self.servers
        first.launch()
        self.wait_role(first, "active", 60)
        second.launch()
        self.wait_role(second, "standby", 60)
        self.proxy.start()
        self.proxy.wait_backend()

    def wait_role(self, server: LocalServer, want: str, seconds: float) -> float:
        """Seconds until ``server`` answers as ``want``."""
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"server exited ({server.proc.returncode}):\n{server.log()}")
            if role(self.api_url(server)) == want:
                return time.monotonic() - started
            time.sleep(0.02)
        raise RuntimeError(f"{self.api_url(server)} not {want} after {seconds:.0f} s")

    def active(self) -> LocalServer:
        for server in self.servers:
            if role(self.api_url(server)) == "active":
                return server
        raise RuntimeError("no active server")

    def close(self) -> None:
        self.proxy.stop()
        for server in self.servers:
            server.kill()
        self.cluster.destroy()


def failover(args: argparse.Namespace) -> int:
    if args.server_url:
        raise SystemExit("pushy bench failover starts its own servers: no --server-url")
    n = args.nodes
    procstat.raise_open_files(n * 3 + 1024)
    root = Path(tempfile.mkdtemp(prefix="pushy-bench-failover-"))
    progress(f"starting PostgreSQL, two servers and HAProxy (work directory {root})")
    pair = Pair(root, args)
    try:
        pair.start()
        key_pem = pair.servers[0].pivotal_key.read_text()
        setup = Setup(
            args=args,
            url=pair.proxy.url,
            org=args.org or "bench",
            user="pivotal",
            key_pem=key_pem,
            key=load_private_pem(key_pem),
            api=SignedClient(pair.proxy.url),
            names=provision.node_names(n),
            key_file=provision.ensure_keys(n, Path(args.key_cache)),
        )
        provision.create_org(setup.api, setup.user, setup.key, setup.org)
        setup.provision_seconds = provision.register_clients(
            setup.api,
            setup.user,
            setup.key,
            setup.org,
            setup.names,
            provision.read_keys(setup.key_file, n),
        )
        results = trio.run(with_fleet, setup, lambda run: _kills(run, pair))
    finally:
        pair.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    ready, back = results["kill_to_active_s"], results["kill_to_all_available_s"]
    params = {
        **common_params(setup),
        "kills": args.kills,
        "lease_timeout_s": args.lease_timeout,
        "deadline_s": args.deadline,
    }
    rows = [
        ("nodes", n),
        ("kills of the active", len(ready)),
        ("lease_timeout (s)", args.lease_timeout),
        ("kill -> new active ready, min/median/max (s)", _spread(ready)),
        ("kill -> all nodes available, min/median/max (s)", _spread(back)),
        ("rounds with nodes stuck after the deadline", results["rounds_stuck"]),
    ]
    return finish(setup, "failover", params, results, rows)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {percentile(values, 50):.2f} / {max(values):.2f}"


async def _kills(run: Run, pair: Pair) -> dict[str, Any]:
    setup, args = run.setup, run.setup.args
    n = len(setup.names)
    path = f"/organizations/{setup.org}/pushy/node_states"
    to_active: list[float] = []
    to_all: list[float] = []
    stuck_rounds = 0
    for k in range(1, args.kills + 1):
        killed = await trio.to_thread.run_sync(pair.active)
        others = [s for s in pair.servers if s is not killed]
        assert killed.proc is not None
        os.kill(killed.proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        await trio.to_thread.run_sync(killed.proc.wait, 10)
        took = await trio.to_thread.run_sync(pair.wait_role, others[0], "active", 120)
        to_active.append(rounded(time.monotonic() - t_kill, 3) or 0.0)
        progress(f"kill {k}: new active after {took:.2f} s; waiting for {n} nodes")
        available, last = 0, 0.0
        while time.monotonic() - t_kill < args.deadline:
            await trio.sleep(0.25)
            try:
                states = await trio.to_thread.run_sync(
                    setup.api.json, "GET", path, None, setup.user, setup.key
                )
            except Exception:  # noqa: BLE001 - HAProxy between two servers: ask again
                continue
            available = sum(1 for s in states if s.get("availability") == "available")
            if available >= n:
                to_all.append(rounded(time.monotonic() - t_kill, 3) or 0.0)
                break
            if time.monotonic() - last >= PROGRESS_SECONDS:
                last = time.monotonic()
                progress(f"kill {k}: {available}/{n} available")
        else:
            stuck_rounds += 1
            progress(f"kill {k}: only {available}/{n} available after {args.deadline:.0f} s")
        progress(f"kill {k}: all {n} available {to_all[-1] if to_all else '-'} s after the kill")
        killed.launch()
        await trio.to_thread.run_sync(pair.wait_role, killed, "standby", 120)
        await trio.to_thread.run_sync(pair.proxy.wait_backend)
    return {
        "kill_to_active_s": to_active,
        "kill_to_all_available_s": to_all,
        "rounds_stuck": stuck_rounds,
    }
