"""``GET /metrics``: the server in the Prometheus text format (docs/operations.md, Metrics).

Almost everything is read at scrape time from what the server keeps anyway: the node table,
the jobs, the node messages the sockets (or the edges' reports) already count, the event log's
write and sync timings, the feeds' subscribers, the edges' reports. Two things are counted as
they happen, each at most once per request or job: config fetches by outcome (after each
response) and job durations (as a job finishes). Each app has its own registry, never
prometheus_client's global one.

No Chef signing (Prometheus cannot sign): the peer's address must be in ``metrics_allow``
(default loopback only; an empty list serves no metrics, 404).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache, partial

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from quart import Blueprint, Response, request

from appliance import __version__
from appliance.core import jobfsm
from appliance.core.jobmodel import JOB_STATUSES
from appliance.core.netallow import allowed, parse_networks
from appliance.core.timings import Timings
from appliance.server.apidoc import json_reply, operation, ref, register, resp
from appliance.server.context import ServerContext
from appliance.server.edges import EdgeHub
from appliance.server.pushy_routes import json_response
from appliance.server.schemas import STRING

log = logging.getLogger("pushy.metrics")
METRICS_PATH = "/metrics"
# the config route and its alias, as ``apidoc.register`` names them in the "pushy" blueprint
CONFIG_ENDPOINTS = frozenset({"pushy.getNodeConfig", "pushy.getNodeConnect"})
FETCH_OUTCOMES = (
    "ok", "bad_request", "unauthorized", "forbidden", "not_found", "unavailable", "error"
)  # fmt: skip
# seconds, from a job's creation to its end: a quorum failure at once to a day-long run
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0, 86400.0)
_networks = lru_cache(maxsize=8)(parse_networks)  # the settings' tuple: parsed once


def fetch_outcome(status: int) -> str:
    """A config fetch's outcome label, from its HTTP status."""
    if status < 300:
        return "ok"
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 503: "unavailable"}.get(
        status, "bad_request" if status < 500 else "error"
    )


class Counts:
    """What is counted as it happens (everything else is read at scrape time)."""

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        self.job_durations: dict[str, Timings] = {}

    def job_finished(self, job: jobfsm.Job) -> None:
        timings = self.job_durations.get(job.status)
        if timings is None:
            timings = self.job_durations[job.status] = Timings(JOB_BUCKETS)
        timings.observe(max(0.0, (job.finished_at or job.updated_at) - job.created_at))


def _histogram(name: str, text: str, timings: dict[tuple[str, ...], Timings], labels: list[str]):
    family = HistogramMetricFamily(name, text, labels=labels)
    for values, t in sorted(timings.items()):
        buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in t.cumulative()]
        family.add_metric(list(values), buckets, t.total)
    return family


class PushyCollector:
    """The server's metrics, read from ``ctx`` at each scrape."""

    def __init__(self, ctx: ServerContext, counts: Counts) -> None:
        self.ctx = ctx
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        info = GaugeMetricFamily(
            "pushy_build_info", "The running pushy release.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        orgs = sorted(ctx.state.identity.orgs)
        yield self._nodes(orgs)
        yield self._jobs(orgs)
        yield _histogram(
            "pushy_job_duration_seconds",
            "Seconds from a job's creation to its end, by final status (jobs finished since "
            "this server started).",
            {(status,): t for status, t in self.counts.job_durations.items()},
            ["status"],
        )
        received, dropped = ctx.reactor.counters()
        yield CounterMetricFamily(
            "pushy_heartbeats_received",
            "Node heartbeats that passed the wire checks (at the edges, when there are edges).",
            value=received.get("heartbeat", 0),
        )
        lost = CounterMetricFamily(
            "pushy_node_messages_dropped",
            "Node messages dropped, by reason (bad_signature, bad_timestamp, ...).",
            labels=["reason"],
        )
        for reason, n in sorted(dropped.items()):
            lost.add_metric([reason], n)
        yield lost
        fetches = CounterMetricFamily(
            "pushy_config_fetches",
            "Node config fetches (GET .../pushy/config/NODE), by outcome.",
            labels=["outcome"],
        )
        for outcome in sorted({*FETCH_OUTCOMES, *self.counts.fetches}):
            fetches.add_metric([outcome], self.counts.fetches.get(outcome, 0))
        yield fetches
        store_log = ctx.store.log
        yield _histogram(
            "pushy_event_log_write_seconds",
            "Seconds each append to the event log took to write (file: write(2); PostgreSQL: "
            "the statements before COMMIT).",
            {(): store_log.write_timings},
            [],
        )
        yield _histogram(
            "pushy_event_log_sync_seconds",
            "Seconds each append to the event log took to reach the disk (file: fdatasync; "
            "PostgreSQL: the COMMIT).",
            {(): store_log.sync_timings},
            [],
        )
        readers = ctx.hub.readers()
        yield GaugeMetricFamily(
            "pushy_sse_clients", "Server-Sent Events feeds open.", value=readers.get("sse", 0)
        )
        yield GaugeMetricFamily(
            "pushy_websocket_clients",
            "Websocket streams open.",
            value=readers.get("websocket", 0),
        )
        if isinstance(ctx.reactor, EdgeHub):
            yield from _edges(ctx.reactor)

    def _nodes(self, orgs: list[str]) -> Metric:
        ctx = self.ctx
        counts: Counter[tuple[str, str, str]] = Counter()
        online = set()
        for key, node in ctx.dispatcher.table.nodes.items():
            if not node.ghost:
                online.add(key)
                counts[key[0], "online", "available" if node.available else "unavailable"] += 1
        for key in ctx.state.node_keys:
            if key not in online:
                counts[key[0], "offline", "unavailable"] += 1
        family = GaugeMetricFamily(
            "pushy_nodes",
            "Nodes by organization, status (online: heard from within the liveness window; "
            "offline: known from a config fetch, not online) and availability (available: "
            "idle, ready for a job), as node_states tells them.",
            labels=["org", "status", "availability"],
        )
        combos = [("online", "available"), ("online", "unavailable"), ("offline", "unavailable")]
        for org in sorted({*orgs, *(k[0] for k in counts)}):
            for status, availability in combos:
                family.add_metric([org, status, availability], counts[org, status, availability])
        return family

    def _jobs(self, orgs: list[str]) -> Metric:
        counts = Counter((job.org, job.status) for job in self.ctx.state.jobs.values())
        family = GaugeMetricFamily(
            "pushy_jobs",
            "Jobs the server keeps (finished ones for job_retention_days), by organization and "
            "status.",
            labels=["org", "status"],
        )
        for org in sorted({*orgs, *(org for org, _ in counts)}):
            for status in JOB_STATUSES:
                family.add_metric([org, status], counts[org, status])
        return family


def _edges(hub: EdgeHub) -> Iterator[Metric]:
    """The edges' own reports (once a second): who is there, what each holds and costs."""
    joined = sorted(hub.edges.values(), key=lambda i: i.name)
    names = {i.name for i in joined}
    up = GaugeMetricFamily(
        "pushy_edge_up",
        "1 for each edge process joined to this server; 0 for a local edge that is not "
        "(starting, restarting, or gone silent).",
        labels=["edge"],
    )
    for name in sorted(names | {f"local-{i}" for i in range(hub.count)}):
        up.add_metric([name], 1 if name in names else 0)
    yield up
    per_edge = {
        "nodes": GaugeMetricFamily(
            "pushy_edge_nodes", "Nodes whose sockets the edge holds.", labels=["edge"]
        ),
        "cpu_seconds": CounterMetricFamily(
            "pushy_edge_cpu_seconds", "CPU seconds the edge process used.", labels=["edge"]
        ),
        "rss_kib": GaugeMetricFamily(
            "pushy_edge_resident_memory_bytes",
            "Resident memory of the edge process.",
            labels=["edge"],
        ),
        "fds": GaugeMetricFamily(
            "pushy_edge_open_fds", "Open file descriptors of the edge process.", labels=["edge"]
        ),
    }
    for info in joined:
        for key, family in per_edge.items():
            value = info.stats.get(key)
            if isinstance(value, int | float):
                family.add_metric([info.name], value * 1024 if key == "rss_kib" else value)
    yield from per_edge.values()
    yield CounterMetricFamily(
        "pushy_edge_restarts",
        "Local edge processes restarted after they exited.",
        value=hub.restarts,
    )


@operation(
    "GET",
    "getMetrics",
    "status",
    "Prometheus metrics (no signing: allowed by address)",
    {
        "200": {
            "description": "The metrics in the Prometheus text format (OpenMetrics when the "
            "Accept header asks for it).",
            "content": {
                "text/plain": {"schema": STRING},
                "application/openmetrics-text": {"schema": STRING},
            },
        },
        "403": json_reply("The peer's address is not in metrics_allow.", ref("ErrorList")),
        "404": json_reply("metrics_allow is empty: no metrics are served.", ref("ErrorString")),
        "500": resp("InternalError"),
    },
    description="Read by address, not by signature: only peers in the metrics_allow networks "
    "(default 127.0.0.0/8 and ::1) get them. The peer is the TCP peer (behind a proxy, the "
    "proxy). docs/operations.md lists the metrics.",
    signed=False,
)
async def metrics(ctx: ServerContext, *, registry: CollectorRegistry) -> Response:
    networks = ctx.settings.metrics_allow  # live: a reload changes it
    if not networks:
        return json_response({"error": "not found"}, status=404)
    client = request.scope.get("client")
    peer = client[0] if client else None
    if not allowed(peer, _networks(networks)):
        log.info("refused GET /metrics from %s: not in metrics_allow", peer or "(unknown)")
        return json_response(
            {"error": [f"{peer or 'this address'} is not allowed to read the metrics"]},
            status=403,
        )
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), content_type=content_type)


def blueprint(ctx: ServerContext) -> Blueprint:
    bp = Blueprint("metrics", __name__)
    counts = Counts()
    registry = CollectorRegistry()
    registry.register(PushyCollector(ctx, counts))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
    register(bp, [(METRICS_PATH, partial(metrics, registry=registry))], ctx)

    @bp.before_app_serving
    async def count_finished_jobs() -> None:
        ctx.dispatcher.on_job_finished = counts.job_finished

    @bp.after_app_request
    async def count_fetches(response: Response) -> Response:
        if request.endpoint in CONFIG_ENDPOINTS:
            counts.fetches[fetch_outcome(response.status_code)] += 1
        return response

    return bp
