"""``pushy bench SCENARIO``: hold, fanout, storm, api, flood (the fleet), fetch (config fetches) and replay
(the event log).

Each scenario prints a table and writes ``bench/results/SCENARIO-YYYYmmdd-HHMMSS.json``. The
defaults are a quick run (a few hundred nodes, seconds); the documented full runs raise them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from appliance.bench import provision

SCENARIOS = ("hold", "fanout", "storm", "api", "flood", "fetch", "failover")


def _share(text: str) -> str:
    if re.fullmatch(r"[0-9]+%?", text) is None:
        raise argparse.ArgumentTypeError(f"a count (10) or a percentage (25%), not {text!r}")
    return text


def _fleet_options(parser: argparse.ArgumentParser, *, nodes: int, interval: float) -> None:
    g = parser.add_argument_group("fleet")
    g.add_argument(
        "-n", "--nodes", type=int, default=nodes, help=f"simulated nodes (default {nodes})"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="fleet worker processes (default: one per core)",
    )
    g.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="spread the node starts over this many seconds, like machines booting "
        "(default: nodes/500, at least 1, at most 20)",
    )
    g.add_argument(
        "--job-seconds",
        type=float,
        default=0.0,
        help="how long a fake job command runs (default 0: it succeeds at once)",
    )
    g.add_argument(
        "--clients-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the fleet and the load generator at niceness N (the server and its edges "
        "keep theirs), as if they ran on other machines: they yield the cores whenever the "
        "server wants one (default 0: all compete alike)",
    )
    g.add_argument(
        "--fetch-threads",
        type=int,
        default=8,
        help="concurrent config fetches per worker (default 8)",
    )
    g.add_argument(
        "--available-timeout",
        type=float,
        default=120.0,
        help="give up waiting for every node to be available after this many seconds "
        "(plus the ramp; default 120)",
    )
    g.add_argument(
        "--key-cache",
        default=str(provision.default_cache_dir()),
        help="where node keys are kept between runs (default %(default)s)",
    )
    g.add_argument(
        "--results-dir",
        type=Path,
        help="where the JSON goes (default $PUSHY_BENCH_RESULTS or bench/results)",
    )
    s = parser.add_argument_group("server")
    s.add_argument(
        "--interval",
        type=float,
        default=interval,
        help=f"server heartbeat_interval in ms for the server we start (default {interval:g})",
    )
    s.add_argument(
        "--server-setting",
        action="append",
        metavar="KEY=VALUE",
        help="another setting for the server we start (TOML value), repeatable",
    )
    s.add_argument(
        "--server-url",
        help="use this running server instead of starting one (its heartbeat interval applies)",
    )
    s.add_argument("--key", help="with --server-url: the admin's private key file")
    s.add_argument(
        "--user", default="pivotal", help="with --server-url: the admin (default pivotal)"
    )
    s.add_argument(
        "--server-pid",
        type=int,
        help="with --server-url on this machine: its process id, for CPU and memory figures",
    )
    s.add_argument("--org", help="organization for the nodes (default bench, or bench-DATE)")
    s.add_argument(
        "--keep", action="store_true", help="keep the started server's state dir and log"
    )


def _scenario(
    scenarios: Any, name: str, help_text: str, description: str, *, nodes: int = 200
) -> argparse.ArgumentParser:
    """A fleet scenario's parser, with the fleet and server options every one of them takes."""
    parser = scenarios.add_parser(name, help=help_text, description=description)
    _fleet_options(parser, nodes=nodes, interval=1000)
    parser.set_defaults(bench_func=name)
    return parser


def add_parser(sub: Any) -> None:
    """Register ``bench`` and its scenarios on the top-level sub-parsers."""
    bench = sub.add_parser(
        "bench",
        help="benchmarks: a simulated fleet against a server (hold, fanout, storm, api, flood, "
        "fetch, replay, store, failover)",
        description="Measure the server with a protocol-accurate simulated fleet. Every scenario "
        "prints a table and writes JSON under bench/results/ (or $PUSHY_BENCH_RESULTS).",
    )
    scenarios = bench.add_subparsers(dest="scenario", metavar="SCENARIO")
    scenarios.required = True

    hold = _scenario(
        scenarios,
        "hold",
        "N nodes heartbeating for a while: server CPU, memory, heartbeat rate, false offlines",
        "Hold N nodes at a heartbeat interval for a duration; report server CPU %, "
        "RSS, heartbeats/s processed, false offline transitions (must be 0), and the time for "
        "all N to become available.",
    )
    hold.add_argument("--duration", type=float, default=10.0, help="seconds to hold (default 10)")

    fanout = _scenario(
        scenarios,
        "fanout",
        "a `true` job to N nodes: POST -> complete, 50/90/99 %% running, phases",
        "Run a `true` job on all N nodes (--repeat times; medians reported): "
        "POST -> complete, time to 50/90/99 % of nodes running, voting and running phases, "
        "server CPU during the job.",
    )
    fanout.add_argument("--repeat", type=int, default=3, help="jobs to run (default 3)")
    fanout.add_argument("--pause", type=float, default=1.0, help="seconds between jobs (default 1)")
    fanout.add_argument(
        "--job-timeout", type=float, default=120.0, help="give up on a job after (default 120 s)"
    )
    fanout.add_argument(
        "--max-concurrency",
        type=_share,
        metavar="N|N%",
        help="a rolling job: at most N (or N%%) of the nodes run at once (use --job-seconds "
        "for runs that take time)",
    )

    storm = _scenario(
        scenarios,
        "storm",
        "restart the server under N connected nodes: time to all available again",
        "With N nodes connected, stop the server (SIGTERM) and start it again on "
        "the same ports and state; report the time until all N are available again, the peak "
        "heartbeat rate at the server and nodes stuck after the deadline (must be 0).",
    )
    storm.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="seconds after the restart before a node counts as stuck (default 120)",
    )
    storm.add_argument(
        "--down", type=float, default=0.0, help="seconds the server stays down (default 0)"
    )
    storm.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds of steady state before the restart and after recovery (default 3)",
    )

    api = _scenario(
        scenarios,
        "api",
        "REST latency (GET /jobs/ID, /node_states) and SSE delivery while N nodes heartbeat",
        "While N nodes heartbeat, GET /jobs/ID and /node_states at --rate requests/s "
        "(signed, keep-alive, from another process; latency from each request's due time) and "
        "run a small job every --job-every seconds to time SSE event delivery.",
    )
    api.add_argument("--rate", type=float, default=50.0, help="requests/s (default 50)")
    api.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    api.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    api.add_argument(
        "--job-every", type=float, default=1.0, help="a job every N seconds (default 1)"
    )
    api.add_argument(
        "--job-nodes", type=int, default=10, help="nodes in each of those jobs (default 10)"
    )
    api.add_argument(
        "--job-timeout", type=float, default=120.0, help="give up on a job after (default 120 s)"
    )

    flood = _scenario(
        scenarios,
        "flood",
        "live output: N nodes each print --output-bytes at once; server RSS, API latency",
        "One job with capture_output on N nodes, each printing --output-bytes as live output "
        "as fast as the server takes it, while a load generator GETs /node_states and /jobs at "
        "--rate requests/s for --duration seconds. Reports the time to complete, the server's "
        "RSS before, at peak and after, the API latency, and how many nodes' stdout read back "
        "over REST is byte for byte what they printed.",
        nodes=1000,
    )
    flood.add_argument(
        "--output-bytes",
        type=int,
        default=1024 * 1024,
        help="bytes each node prints (default 1 MiB)",
    )
    flood.add_argument("--rate", type=float, default=20.0, help="API requests/s (default 20)")
    flood.add_argument(
        "--duration", type=float, default=20.0, help="seconds of API load (default 20)"
    )
    flood.add_argument("--threads", type=int, default=4, help="load threads (default 4)")
    flood.add_argument(
        "--job-timeout", type=float, default=600.0, help="give up on the job after (default 600 s)"
    )

    fetch = _scenario(
        scenarios,
        "fetch",
        "config fetches/s at the server, requests signed before the clock starts",
        "N nodes fetch their config --rounds times from --threads keep-alive "
        "threads, as fast as the server answers; each request is signed once beforehand, so "
        "the figure is the server's; server and load generator CPU per 1,000 fetches.",
        nodes=1000,
    )
    fetch.add_argument("--rounds", type=int, default=3, help="fetches per node (default 3)")
    fetch.add_argument("--threads", type=int, default=16, help="client threads (default 16)")

    from appliance.bench import failover

    failover.add_arguments(
        _scenario(
            scenarios,
            "failover",
            "kill -9 the active of a PostgreSQL-backed pair under N nodes: failover times",
            (failover.__doc__ or "").strip().splitlines()[0],
            nodes=1000,
        )
    )

    from appliance.bench import peer_salt, replay

    parser = scenarios.add_parser(
        "replay",
        help="event log replay rate, cold start, RSS (before and after a snapshot)",
        description=(replay.__doc__ or "").strip().splitlines()[0],
    )
    replay.add_arguments(parser)
    parser.set_defaults(bench_func="replay")
    from appliance.bench import storebench

    store = scenarios.add_parser(
        "store",
        help="the event log in PostgreSQL vs the file log: appends/s, job POST latency",
        description=(storebench.__doc__ or "").strip().splitlines()[0],
    )
    storebench.add_arguments(store)
    store.set_defaults(bench_func="store")
    salt = scenarios.add_parser(
        "salt",
        help="side by side with SaltStack: salt '*' cmd.run true vs a true job on M real clients",
        description=(peer_salt.__doc__ or "").strip().splitlines()[0],
    )
    peer_salt.add_arguments(salt)
    salt.set_defaults(bench_func="salt")


def run_bench(args: argparse.Namespace) -> int:
    name = getattr(args, "bench_func", None)
    if name == "replay":
        from appliance.bench import replay

        return replay.run(args)
    if name == "salt":
        from appliance.bench import peer_salt

        return peer_salt.run(args)
    if name == "store":
        from appliance.bench import storebench

        return storebench.run(args)
    if name not in SCENARIOS:
        print("pushy bench: name a scenario (pushy bench --help)", file=sys.stderr)
        return 2
    if args.nodes < 1:
        print("pushy bench: --nodes must be at least 1", file=sys.stderr)
        return 2
    if args.ramp is None:
        args.ramp = min(20.0, max(1.0, args.nodes / 500))
    if not args.workers:
        args.workers = os.cpu_count() or 1
    from appliance.bench import fetchrate, harness, scenarios

    if name == "flood":
        from appliance.bench import flood

        return harness.main_guard(flood.flood, args)
    if name == "failover":
        from appliance.bench import failover

        return harness.main_guard(failover.failover, args)
    run = fetchrate.fetch if name == "fetch" else getattr(scenarios, name)
    return harness.main_guard(run, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushy")
    add_parser(parser.add_subparsers(dest="command"))
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
