"""GET /metrics end to end: a real server (with its edge processes, the default), real
``pushy client`` nodes, a real job, an SSE feed and a websocket stream; the scrape is parsed
with prometheus_client's own parser and read as an operator's dashboard would.

Who may read it: a server whose ``metrics_allow`` leaves 127.0.0.1 out answers 403, and after
a reload (SIGHUP) to an empty list 404 (``metrics_allow`` is a live key).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from tests.e2e.helpers import Feed, feed_path
from tests.support import ClientFleet, Server, server_fixture, sign, wait_for

ORG = "metricsorg"
NODES = ["m1", "m2"]
WHITELIST = "{'chef-client'=>'true', 'slow'=>'sleep 0.5'}"

server = server_fixture("metrics", keep_alive_time=1, wait_complete_time=0.5)


@pytest.fixture(scope="module")
def fleet(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientFleet]:
    f = ClientFleet(server, ORG, tmp_path_factory.mktemp("metrics-clients"))
    try:
        f.add_available(NODES, whitelist=WHITELIST)
        yield f
    finally:
        f.close()


class Scrape:
    """One scrape, parsed: sample values by sample name and labels."""

    def __init__(self, server: Server) -> None:
        r = httpx.get(f"{server.url}/metrics", timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain"), r.headers
        self.families = {f.name: f for f in text_string_to_metric_families(r.text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The one sample ``name`` whose labels include ``labels`` (le aside, 0 when none)."""
        found = [
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        assert len(found) <= 1, f"{name} {labels}: {len(found)} samples"
        return found[0] if found else 0.0

    def total(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def nodes(scrape: Scrape, status: str, availability: str) -> float:
    return scrape.value("pushy_nodes", org=ORG, status=status, availability=availability)


def test_every_metric_has_help_and_the_pushy_prefix(server: Server) -> None:
    scrape = Scrape(server)
    ours = [f for f in scrape.families.values() if not f.name.startswith("process_")]
    assert {f.name for f in ours} >= {
        "pushy_build_info",
        "pushy_nodes",
        "pushy_jobs",
        "pushy_job_duration_seconds",
        "pushy_heartbeats_received",
        "pushy_config_fetches",
        "pushy_event_log_write_seconds",
        "pushy_event_log_sync_seconds",
        "pushy_sse_clients",
        "pushy_websocket_clients",
        "pushy_edge_up",
        "pushy_edge_nodes",
    }
    for family in ours:
        assert family.name.startswith("pushy_"), family.name
        assert family.documentation, family.name
    assert scrape.value("process_resident_memory_bytes") > 0  # the standard process metrics


def test_nodes_heartbeats_and_config_fetches(server: Server, fleet: ClientFleet) -> None:
    scrape = Scrape(server)
    assert nodes(scrape, "online", "available") == len(NODES)
    assert nodes(scrape, "online", "unavailable") == 0
    assert nodes(scrape, "offline", "unavailable") == 0
    assert scrape.value("pushy_config_fetches_total", outcome="ok") >= len(NODES)
    assert scrape.value("pushy_config_fetches_total", outcome="forbidden") == 0
    # the edges report their counts every 0.25 s (a node is online from its first heartbeat,
    # forwarded at once, so the count may lag it); 2 nodes beat 5 times a second
    beats = wait_for(
        lambda: Scrape(server).value("pushy_heartbeats_received_total"),
        15,
        what="heartbeats counted",
    )
    assert beats > 0
    wait_for(
        lambda: Scrape(server).value("pushy_heartbeats_received_total") > beats,
        15,
        what="more heartbeats counted",
    )
    # every edge is up, and the edges hold the nodes between them
    wait_for(
        lambda: Scrape(server).total("pushy_edge_nodes") == len(NODES),
        15,
        what="the edges report the nodes",
    )
    scrape = Scrape(server)
    up = [s for s in scrape.samples if s.name == "pushy_edge_up"]
    assert up and all(s.value == 1 for s in up), up

    # a fetch of another node's config, refused: counted as forbidden
    other = fleet.clients[NODES[1]]
    response = httpx.get(
        f"{server.url}/organizations/{ORG}/pushy/config/{NODES[0]}",
        headers=sign(
            other.key_path.read_bytes(), NODES[1], "GET", f"/organizations/{ORG}/pushy/config/m1"
        ),
        timeout=10,
    )
    assert response.status_code == 403, response.text
    assert Scrape(server).value("pushy_config_fetches_total", outcome="forbidden") == 1


def test_a_stopped_node_is_counted_offline(server: Server, fleet: ClientFleet) -> None:
    fleet.add_available(["gone"], whitelist=WHITELIST)
    assert nodes(Scrape(server), "online", "available") == len(NODES) + 1
    fleet.clients.pop("gone").kill()
    wait_for(
        lambda: nodes(Scrape(server), "offline", "unavailable") == 1,
        20,
        what="the stopped node counted offline",
    )
    assert nodes(Scrape(server), "online", "available") == len(NODES)


def test_a_job_is_counted_under_its_final_status(server: Server, fleet: ClientFleet) -> None:
    before = Scrape(server)
    job = fleet.run("slow", NODES)
    assert job["status"] == "complete", job
    after = Scrape(server)
    assert after.value("pushy_jobs", org=ORG, status="complete") == (
        before.value("pushy_jobs", org=ORG, status="complete") + 1
    )
    assert after.value("pushy_jobs", org=ORG, status="running") == 0
    count = "pushy_job_duration_seconds_count"
    assert after.value(count, status="complete") == before.value(count, status="complete") + 1
    # the nodes slept 0.5 s: the job took at least that long, and far less than 60 s
    took = after.value("pushy_job_duration_seconds_sum", status="complete") - before.value(
        "pushy_job_duration_seconds_sum", status="complete"
    )
    assert 0.5 <= took < 60, took
    inf = after.value("pushy_job_duration_seconds_bucket", status="complete", le="+Inf")
    assert inf == after.value(count, status="complete")
    # the job's records were written and synced: each counted once per append
    for name in ("pushy_event_log_write_seconds_count", "pushy_event_log_sync_seconds_count"):
        assert after.value(name) > before.value(name) > 0, name
    assert after.value("pushy_event_log_sync_seconds_sum") > 0


def test_a_job_that_fails_quorum_at_once_is_counted(server: Server, fleet: ClientFleet) -> None:
    before = Scrape(server)
    job = fleet.run("chef-client", ["nosuchnode"])
    assert job["status"] == "quorum_failed", job
    after = Scrape(server)
    count = "pushy_job_duration_seconds_count"
    assert (
        after.value(count, status="quorum_failed")
        == before.value(count, status="quorum_failed") + 1
    )
    assert (
        after.value("pushy_jobs", org=ORG, status="quorum_failed")
        == before.value("pushy_jobs", org=ORG, status="quorum_failed") + 1
    )


def test_sse_clients_while_a_feed_is_open(server: Server, fleet: ClientFleet) -> None:
    assert Scrape(server).value("pushy_sse_clients") == 0
    feed = Feed(server, feed_path(ORG, plural=True)).begin()
    try:
        wait_for(lambda: Scrape(server).value("pushy_sse_clients") == 1, 10, what="1 reader")
    finally:
        feed.halt.set()
        feed.join(10)
    # the server finds the reader gone at its next keepalive (keep_alive_time = 1 s)
    wait_for(lambda: Scrape(server).value("pushy_sse_clients") == 0, 15, what="no reader")


async def test_websocket_clients_while_a_stream_is_open(server: Server, fleet: ClientFleet):
    path = f"/organizations/{ORG}/pushy/ws"
    key = server.pivotal_key.read_bytes()
    headers = [(k.encode(), v.encode()) for k, v in sign(key, "pivotal", "GET", path).items()]

    async def clients() -> float:
        return (await trio.to_thread.run_sync(Scrape, server)).value("pushy_websocket_clients")

    assert await clients() == 0
    url = server.url.replace("http://", "ws://") + path
    async with open_websocket_url(url, extra_headers=headers) as ws:
        with trio.fail_after(10):
            hello: dict[str, Any] = json.loads(await ws.get_message())
        assert hello["type"] == "hello"
        assert await clients() == 1
    with trio.fail_after(15):
        while await clients() != 0:
            await trio.sleep(0.1)


def test_a_peer_outside_metrics_allow_gets_403_and_an_empty_list_404(tmp_path) -> None:
    with Server(tmp_path / "state", metrics_allow=["10.0.0.0/8"], edge_processes=0) as srv:
        r = httpx.get(f"{srv.url}/metrics", timeout=10)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"error": ["127.0.0.1 is not allowed to read the metrics"]}
        assert httpx.get(f"{srv.url}/pushy/_status", timeout=10).status_code == 200
        # metrics_allow is live: a reload to [] turns /metrics off
        srv.reload(metrics_allow=[])
        wait_for(
            lambda: httpx.get(f"{srv.url}/metrics", timeout=10).status_code == 404,
            15,
            what="/metrics gone after the reload",
        )
        assert httpx.get(f"{srv.url}/metrics", timeout=10).json() == {"error": "not found"}
        # and back to the loopback: served again
        srv.reload(metrics_allow=["127.0.0.1/32"])
        wait_for(
            lambda: httpx.get(f"{srv.url}/metrics", timeout=10).status_code == 200,
            15,
            what="/metrics served after the second reload",
        )
        assert srv.stop() == 0
