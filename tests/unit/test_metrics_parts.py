"""The pure parts of GET /metrics: who may read it (``core.netallow``), the bucketed timings
the event log keeps (``core.timings``), a config fetch's outcome label and the feed readers'
count."""

from __future__ import annotations

import math

import pytest

from appliance.core.netallow import allowed, parse_networks
from appliance.core.timings import Timings
from appliance.server.feeds import Hub
from appliance.server.metrics import FETCH_OUTCOMES, fetch_outcome

LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer of a dual-stack socket
        ("10.0.0.1", False),
        ("::2", False),
        ("::ffff:10.0.0.1", False),
        ("", False),
        (None, False),
        ("not-an-address", False),
        ("unix:/run/pushy.sock", False),
    ],
)
def test_loopback_only(peer: str | None, expected: bool) -> None:
    assert allowed(peer, LOOPBACK) is expected


def test_networks_and_single_addresses() -> None:
    nets = parse_networks(["10.0.0.0/8", "192.0.2.7", "fe80::/10"])
    assert allowed("10.255.0.1", nets) and allowed("192.0.2.7", nets)
    assert not allowed("192.0.2.8", nets) and not allowed("11.0.0.1", nets)
    assert allowed("fe80::1%eth0", nets)  # a link-local peer with its zone
    assert not allowed("127.0.0.1", nets)
    assert not allowed("127.0.0.1", ())  # nothing allowed


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.0/33", "localhost", "", "::1/129"])
def test_a_bad_network_is_named(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_networks(["127.0.0.0/8", bad])
    assert str(info.value).startswith(f"{bad!r} is not a CIDR network")


def test_timings_are_cumulative_buckets_with_a_sum() -> None:
    t = Timings((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 2.0, 30.0):
        t.observe(seconds)
    assert t.cumulative() == [(0.01, 2), (0.1, 3), (1.0, 4), (math.inf, 6)]
    assert t.count == 6
    assert t.total == pytest.approx(32.565)
    assert Timings((1.0,)).cumulative() == [(1.0, 0), (math.inf, 0)]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (400, "bad_request"),
        (406, "bad_request"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (503, "unavailable"),
        (500, "error"),
    ],
)
def test_fetch_outcomes(status: int, outcome: str) -> None:
    assert fetch_outcome(status) == outcome
    assert outcome in FETCH_OUTCOMES  # every label a fetch can get is exported from the start


def test_readers_count_each_subscriber_once_by_kind() -> None:
    hub = Hub()
    sse = hub.subscribe(("job", "j1"), "sse")
    hub.subscribe(("org", "acme"), "sse")
    ws = hub.subscribe_many([("jobs", "acme"), ("org", "acme"), ("nodes", "acme")], 8, "websocket")
    assert hub.readers() == {"sse": 2, "websocket": 1}
    hub.unsubscribe(("job", "j1"), sse)
    hub.unsubscribe(("jobs", "acme"), ws)  # still on its other topics: still connected
    assert hub.readers() == {"sse": 1, "websocket": 1}
    for topic in (("org", "acme"), ("nodes", "acme")):
        hub.unsubscribe(topic, ws)
    assert hub.readers() == {"sse": 1}
