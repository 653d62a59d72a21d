"""A fleet past one source address's ephemeral ports connects its nodes from loopback
addresses of their own (a 50,000-node run stopped at 28,228 connections per server port:
Linux's 32768-60999 range, for one source and one destination)."""

from __future__ import annotations

from appliance.bench.fleet import PORTS_PER_SOURCE, _from_source, worker_source


def test_loopback_addresses_are_reached_from_the_workers_source() -> None:
    assert _from_source("tcp://127.0.0.1:10002", "127.0.0.3") == "tcp://127.0.0.3:0;127.0.0.1:10002"
    # anything else is left to the kernel: a remote server, IPv6, another scheme
    for other in ("tcp://10.0.0.1:10002", "tcp://[::1]:10002", "ipc:///tmp/x"):
        assert _from_source(other, "127.0.0.3") == other


def test_only_a_fleet_past_the_ports_of_one_source_spreads_its_sources() -> None:
    assert worker_source(0, PORTS_PER_SOURCE) is None  # tests and small fleets: 127.0.0.1
    sources = [worker_source(w, 50_000) for w in range(16)]
    assert sources[0] == "127.0.0.2" and len(set(sources)) == 16
