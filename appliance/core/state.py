"""The server's durable state and its reducer: ``state = fold(apply, records)``.

Every record in the event log is a JSON object with a ``type``; ``apply`` is the only code that
turns records into state, at replay and live alike. A snapshot is itself a list of records
(``to_records``), so the snapshot format is exactly as stable as the log's records. The
reducer knows only the current format (``core.migrations.FORMAT``): records of older formats
are migrated before they get here, and a change to the records is a new format.
"""

from __future__ import annotations

import base64
import dataclasses
import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from appliance.core import identity, jobfsm, records
from appliance.core.nodekeys import NodeKeys

NodeKey = tuple[str, str]
ORG_FEED_EVENTS = ("start", "job_complete")
ORG_EVENTS_KEPT = 10_000
# A snapshot holds jobs as rows of field values (``jobs_restore``), this many per record:
# two thirds of the bytes of one field -> value object per job (format 1's ``job_restore``,
# which ``core.migrations`` turns into rows), and a fraction of the time to write and read.
JOBS_PER_RECORD = 1000
JOB_FIELDS = [f.name for f in dataclasses.fields(jobfsm.Job)]
_job_values = operator.attrgetter(*JOB_FIELDS)
_NODES, _ENV, _EVENTS, _OUTPUTS, _DISPATCHED, _DETAILS = (
    JOB_FIELDS.index(n) for n in ("nodes", "env", "events", "outputs", "dispatched", "details")
)


@dataclass
class ServerIdentity:
    incarnation: str
    curve_public: str
    curve_secret: str
    rsa_public_pem: str
    created_at: float
    # the RSA key itself, only in a PostgreSQL log (``server_key``): every server sharing the
    # log signs with it; a file log's server keeps it in STATE_DIR/server.pem
    rsa_private_pem: str | None = None


@dataclass(frozen=True, slots=True)
class OrgEvent:
    n: int
    org: str
    t: float
    name: str
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"org-{self.n}"


@dataclass
class State:
    server: ServerIdentity | None = None
    identity: identity.IdentityState = field(default_factory=identity.IdentityState)
    jobs: dict[str, jobfsm.Job] = field(default_factory=dict)
    node_keys: dict[NodeKey, NodeKeys] = field(default_factory=dict)
    up_nodes: dict[NodeKey, str] = field(default_factory=dict)
    org_events: deque[OrgEvent] = field(default_factory=lambda: deque(maxlen=ORG_EVENTS_KEPT))
    org_event_count: int = 0
    last_seq: int = 0
    curve_index: dict[str, NodeKey] = field(default_factory=dict)  # ccpk -> node (the allow-list)

    def keys_for(self, key: NodeKey) -> NodeKeys:
        found = self.node_keys.get(key)
        if found is None:
            found = self.node_keys[key] = NodeKeys()
        return found

    def note_job_events(self, job: jobfsm.Job, first_new: int) -> list[OrgEvent]:
        """Copy a job's new ``start`` / ``job_complete`` events into the org feed."""
        added = []
        for _n, name, data in job.events[first_new:]:
            if name not in ORG_FEED_EVENTS:
                continue
            self.org_event_count += 1
            event = org_event(self.org_event_count, job, job.last_event_t, name, data)
            self.org_events.append(event)
            added.append(event)
        return added


def org_event(n: int, job: jobfsm.Job, t: float, name: str, data: dict[str, Any]) -> OrgEvent:
    """The org feed's copy of a job's event (``data`` stamped), which names the job."""
    payload = {"timestamp": data["timestamp"], "job": job.id}
    payload.update((k, v) for k, v in data.items() if k != "timestamp")
    return OrgEvent(n, job.org, t, name, payload)


def apply(state: State, record: dict[str, Any]) -> None:
    kind = record["type"]
    handler = _HANDLERS.get(kind)
    if handler is None:
        identity.apply(state.identity, record)
        if kind == "client_deleted":
            key = (record["org"], record["name"])
            _set_ccpk(state, key, None)
            state.node_keys.pop(key, None)
            state.up_nodes.pop(key, None)
    else:
        handler(state, record)
    seq = record.get("seq")
    if isinstance(seq, int):
        state.last_seq = seq


def _server_init(state: State, r: dict[str, Any]) -> None:
    state.server = ServerIdentity(
        r["incarnation"], r["curve_public"], r["curve_secret"], r["rsa_public_pem"], r["t"]
    )


def _server_key(state: State, r: dict[str, Any]) -> None:
    if state.server is not None:
        state.server.rsa_public_pem = r["rsa_public_pem"]
        state.server.rsa_private_pem = r["rsa_private_pem"]


def _job_created(state: State, r: dict[str, Any]) -> None:
    job = records.job_of(r)
    state.jobs[job.id] = job


def _job_step(state: State, r: dict[str, Any]) -> None:
    job = state.jobs.get(r["job"])
    if job is None:
        return
    events = job.events
    first_new = len(events)
    t = r["t"]
    apply_change = jobfsm.apply_change
    for change in r["changes"]:
        apply_change(job, change, t)
    # most steps add only per-node events, which the org feed does not carry
    for _n, name, _data in events[first_new:]:
        if name in ORG_FEED_EVENTS:
            state.note_job_events(job, first_new)
            break


def _jobs_restore(state: State, r: dict[str, Any]) -> None:
    """Many jobs as rows of values in the order of ``fields`` (the compact snapshot form)."""
    fields = r["fields"]
    positional = fields == JOB_FIELDS
    jobs = state.jobs
    job_type = jobfsm.Job
    for row in r["rows"]:
        job = job_type(*row) if positional else job_type(**dict(zip(fields, row, strict=True)))
        if job.events:  # most jobs in a snapshot are past their linger window: none
            job.events = [tuple(e) for e in job.events]
        if job.outputs:
            job.outputs = {k: tuple(v) for k, v in job.outputs.items()}
        jobs[job.id] = job


def _session_key(state: State, r: dict[str, Any]) -> None:
    keys = state.keys_for((r["org"], r["node"]))
    new = base64.b64decode(r["key"])
    if keys.session_key is not None and keys.session_key != new:
        keys.previous_key = keys.session_key
        keys.previous_until = r["t"] + r.get("grace", 60.0)
    keys.session_key = new


def _ccpk(state: State, r: dict[str, Any]) -> None:
    _set_ccpk(state, (r["org"], r["node"]), r["key"])


def _set_ccpk(state: State, key: NodeKey, ccpk: str | None) -> None:
    """A node's latest authenticated CURVE key replaces its previous one in the allow-list."""
    keys = state.node_keys.get(key)
    if keys is not None and keys.ccpk is not None and state.curve_index.get(keys.ccpk) == key:
        del state.curve_index[keys.ccpk]
    if ccpk is not None:
        state.keys_for(key).ccpk = ccpk
        state.curve_index[ccpk] = key
    elif keys is not None:
        keys.ccpk = None


def _node_up(state: State, r: dict[str, Any]) -> None:
    state.up_nodes[(r["org"], r["node"])] = r.get("incarnation", "")


def _node_down(state: State, r: dict[str, Any]) -> None:
    state.up_nodes.pop((r["org"], r["node"]), None)


def _node_keys_restore(state: State, r: dict[str, Any]) -> None:
    keys = state.keys_for((r["org"], r["node"]))
    keys.session_key = base64.b64decode(r["key"]) if r.get("key") else None
    keys.previous_key = base64.b64decode(r["previous"]) if r.get("previous") else None
    keys.previous_until = r.get("previous_until", 0.0)
    _set_ccpk(state, (r["org"], r["node"]), r.get("ccpk"))


def _counters(state: State, r: dict[str, Any]) -> None:
    state.org_event_count = r["org_event_count"]


_HANDLERS = {
    "server_init": _server_init,
    "server_key": _server_key,
    "job_created": _job_created,
    "job_step": _job_step,
    "jobs_restore": _jobs_restore,
    "session_key": _session_key,
    "ccpk": _ccpk,
    "node_up": _node_up,
    "node_down": _node_down,
    "node_keys_restore": _node_keys_restore,
    "counters": _counters,
}


def prune_jobs(state: State, *, now: float, retention: float) -> list[str]:
    """Forget finished jobs that ended more than ``retention`` seconds ago (0 keeps all)."""
    if retention <= 0:
        return []
    horizon = now - retention
    expired = [
        job_id
        for job_id, job in state.jobs.items()
        if job.finished_at is not None and job.finished_at < horizon
    ]
    for job_id in expired:
        del state.jobs[job_id]
    return expired


def to_records(state: State) -> list[dict[str, Any]]:
    """The state as a list of records that rebuild it (a snapshot)."""
    out: list[dict[str, Any]] = []
    if state.server is not None:
        s = state.server
        out.append(
            records.server_init(
                incarnation=s.incarnation,
                curve_public=s.curve_public,
                curve_secret=s.curve_secret,
                rsa_public_pem=s.rsa_public_pem,
                t=s.created_at,
            )
        )
        if s.rsa_private_pem is not None:
            out.append(records.server_key(s.rsa_private_pem, s.rsa_public_pem))
    out.extend(identity.export_records(state.identity))
    jobs = list(state.jobs.values())
    for i in range(0, len(jobs), JOBS_PER_RECORD):
        rows = [_job_row(job) for job in jobs[i : i + JOBS_PER_RECORD]]
        out.append(records.jobs_restore(list(JOB_FIELDS), rows))
    for (org, node), keys in state.node_keys.items():
        out.append(
            records.node_keys_restore(
                org,
                node,
                key=_b64(keys.session_key),
                previous=_b64(keys.previous_key),
                previous_until=keys.previous_until,
                ccpk=keys.ccpk,
            )
        )
    for (org, node), incarnation in state.up_nodes.items():
        out.append(records.node_up(org, node, incarnation))
    out.append(records.counters(state.org_event_count))
    return out


def _job_row(job: jobfsm.Job) -> list[Any]:
    """A job's field values in ``JOB_FIELDS`` order, sharing nothing mutable with it."""
    row = list(_job_values(job))
    row[_NODES] = dict(job.nodes)
    if job.env is not None:
        row[_ENV] = dict(job.env)
    row[_EVENTS] = [[n, name, dict(data)] for n, name, data in job.events] if job.events else []
    row[_OUTPUTS] = {node: list(pair) for node, pair in job.outputs.items()} if job.outputs else {}
    row[_DISPATCHED] = dict(job.dispatched) if job.dispatched else {}
    row[_DETAILS] = {node: dict(d) for node, d in job.details.items()} if job.details else {}
    return row


def _b64(value: bytes | None) -> str | None:
    return base64.b64encode(value).decode("ascii") if value else None
