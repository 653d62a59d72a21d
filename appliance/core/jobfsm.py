"""The job state machine: voting, quorum, running, finishing (server-protocol.md §5).

Shaped like h11: the transition tables are data, the handlers never touch a socket or a
clock. Every handler mutates a Job only through ``apply_change`` (the reducer) and returns
a ``Step``: the durable changes it applied, in order, plus the effects the shell must carry
out (send a commit/run, send a node to rehab, arm a timer, note that the job finished).
The event log stores the changes with the handler's ``now``; replaying them through
``apply_change`` rebuilds an identical Job, SSE events and timestamps included.

Decisions beyond the original (see DESIGN.md):

* messages from a node that is not part of the job are ignored (§10.1 #8: the original
  crashed the job);
* ``abort`` is a new operation: live nodes -> ``aborted`` and rehab, job -> ``aborted``;
  for a job that was never started (status ``new``) no commit went out, so no node is sent
  to rehab;
* ``on_node_lost_job`` (a node that came back after a server restart without this job):
  voting -> a ``new``/``ready`` node becomes ``unavailable`` with a rehab event and no
  vote (the "any other type" row); running -> a ``ready``/``running`` node becomes
  ``crashed`` with a rehab event and ``run_complete`` ``crashed``; a terminal node is left
  alone (it is expected not to hold the job);
* ``crash`` of an already finished job does nothing;
* ``succeeded``/``failed`` output is stored in either phase (§7.2 names no phase);
* rolling execution (``max_concurrency``, ``max_errors``; ``core.rollout``): a rolling job
  sends ``run`` to a window of its committed nodes at a time and records each one
  (``run_sent``); ``_maybe_finished_running`` moves the window, or stops the rollout
  (``stopped``), after every running-phase step. A step that ends a node starts the next in
  the same record, so a replayed rollout never has a free slot to fill.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from appliance.core import jobmodel, rollout
from appliance.core.jobmodel import (  # the model is named through this module too
    FINISHED,
    JOB_STATUSES,
    NODE_STATUSES,
    ArmTimer,
    Finished,
    Job,
    JobFinished,
    Rehab,
    Send,
    Step,
    new_job,  # noqa: F401 (records and tests make jobs through this module)
)
from appliance.core.render import sse_timestamp_us
from appliance.core.wire import node_details

__all__ = [  # the model's names, then the state machine's
    *jobmodel.__all__,
    "abort",
    "add_event",
    "apply_change",
    "crash",
    "event_data",
    "event_time",
    "job_finished",
    "nodes_by_status",
    "on_message",
    "on_node_down",
    "on_node_lost_job",
    "on_run_timeout",
    "on_voting_timeout",
    "running_deadline",
    "shows_events",
    "start",
    "voting_deadline",
]

_JOB_STATUS_SET = frozenset(JOB_STATUSES)
_NODE_STATUS_SET = frozenset(NODE_STATUSES)
_LIVE_NODE = ("new", "ready", "running")
_STARTED = ("ready", "running")  # a node sent ``run`` that has not ended


# ---------------------------------------------------------------------------------------
# The reducer


def event_time(last_event_t: float, t: float) -> float:
    """The time an event at ``t`` is stamped with: at least 1 µs after the job's previous one.

    Pedant wants unique, increasing timestamps within a job, even for events that happen in
    the same microsecond; working in integer microseconds makes the rendered strings differ."""
    us = round(t * 1_000_000)
    floor = round(last_event_t * 1_000_000) + 1
    return (us if us >= floor else floor) / 1_000_000


def event_data(data: dict[str, Any], ts: float) -> dict[str, Any]:
    """An event's data as the feeds show it: its ``timestamp`` (``ts`` from `event_time`) first."""
    return {"timestamp": sse_timestamp_us(round(ts * 1_000_000)), **data}


def add_event(job: Job, name: str, data: dict[str, Any], ts: float) -> None:
    """Append an event stamped ``ts``; its SSE id (job-N) is its position."""
    events = job.events
    events.append((len(events) + 1, name, event_data(data, ts)))


def shows_events(job: Job, now: float, linger: float) -> bool:
    """Whether the job's feed still shows its events: not finished, or finished less than
    ``linger`` (``wait_complete_time``) seconds ago; past that it answers with a summary."""
    if job.status not in FINISHED:
        return True
    finished_at = job.finished_at
    if not finished_at:
        return False
    return now - finished_at < linger


def apply_change(job: Job, change: list[Any], t: float) -> None:
    """Apply one durable change at time ``t``: the only code that mutates a Job."""
    # Replay runs this for every change in the log, so the commonest kinds come first.
    kind = change[0]
    if kind == "event":
        _, name, data = change
        ts = event_time(job.last_event_t, t)
        add_event(job, name, data, ts)
        job.last_event_t = ts
    elif kind == "node":
        _, name, status = change
        nodes = job.nodes
        try:
            known = status in _NODE_STATUS_SET
        except TypeError:  # unhashable: certainly not a status
            known = False
        if name not in nodes or not known:
            raise ValueError(f"bad node change {change!r}")
        counts = job.__dict__.get("_counts")  # kept only for jobs the FSM asked about
        if counts is not None:
            counts[nodes[name]] -= 1
            counts[status] += 1
        nodes[name] = status
        window = job.__dict__.get("_rollout")
        if window is not None and status not in _STARTED:
            window.live.discard(name)
    elif kind == "status":
        _, status = change
        try:
            known = status in _JOB_STATUS_SET
        except TypeError:
            known = False
        if not known:
            raise ValueError(f"bad status change {change!r}")
        job.status = status
        job.updated_at = t
        if status == "voting":
            job.voting_at = t
        elif status == "running":
            job.running_at = t
        elif status in FINISHED:
            job.finished_at = t
    elif kind == "output":
        _, node, stdout, stderr = change
        # The original's job_output: NOT NULL columns, unique on (job, node).
        if isinstance(stdout, str) and isinstance(stderr, str) and node not in job.outputs:
            job.outputs[node] = (stdout, stderr)
    elif kind == "run_sent":  # rolling execution: the node got ``run`` (its own run starts)
        _, name = change
        if name not in job.nodes:
            raise ValueError(f"bad run_sent change {change!r}")
        job.dispatched[name] = t
        window = job.__dict__.get("_rollout")
        if window is not None:
            window.live.add(name)
    elif kind == "stopped":  # rolling execution: no further node gets ``run``
        _, reason = change
        job.stopped_by = str(reason)
    elif kind == "detail":  # how a node ended or why it refused (our client only)
        _, name, detail = change
        if name not in job.nodes or not isinstance(detail, dict):
            raise ValueError(f"bad detail change {change!r}")
        job.details[name] = dict(detail)
    else:
        raise ValueError(f"unknown change {change!r}")


# ---------------------------------------------------------------------------------------
# The transition tables (§5.3, §5.5). A cell is a sequence of operations, in order:
#   ("node", status)          node status change
#   ("rehab",)                Rehab effect + ``rehab`` event
#   ("vote", status)          ``quorum_vote`` event
#   ("run_start",)            ``run_start`` event
#   ("run_complete", status)  ``run_complete`` event
# Columns: the node's current status, or "terminal" for anything but new/ready/running.

Op = tuple[str, ...]

_TO_UNAVAILABLE: tuple[Op, ...] = (("node", "unavailable"), ("rehab",))
_DOWN_LIVE: tuple[Op, ...] = (("vote", "down"), *_TO_UNAVAILABLE)
_DIED_VOTING: tuple[Op, ...] = (("rehab",), ("vote", "client_died_while_voting"))

VOTING_TABLE: dict[tuple[str, str], tuple[Op, ...]] = {
    ("ack_commit", "new"): (("node", "ready"), ("vote", "success")),
    ("ack_commit", "ready"): (("vote", "unexpected_commit"),),
    ("ack_commit", "terminal"): _DIED_VOTING,
    ("nack_commit", "new"): (("node", "nacked"), ("vote", "failure")),
    ("nack_commit", "ready"): (*_TO_UNAVAILABLE, ("vote", "lost_availibility")),  # sic
    ("nack_commit", "terminal"): _DIED_VOTING,
    ("down", "new"): _DOWN_LIVE,
    ("down", "ready"): _DOWN_LIVE,
    ("down", "terminal"): (("vote", "down"), ("rehab",)),
    ("other", "new"): _TO_UNAVAILABLE,
    ("other", "ready"): _TO_UNAVAILABLE,
    ("other", "terminal"): (("rehab",),),
}

_CRASHED: tuple[Op, ...] = (("node", "crashed"), ("rehab",), ("run_complete", "crashed"))
_DIED_RUNNING: tuple[Op, ...] = (("rehab",), ("run_complete", "client_died_while_running"))

RUNNING_TABLE: dict[tuple[str, str], tuple[Op, ...]] = {
    ("ack_run", "ready"): (("run_start",), ("node", "running")),
    ("ack_run", "running"): (),
    # The one row where run_complete precedes the rehab event.
    ("ack_run", "terminal"): (("run_complete", "client_died_while_running"), ("rehab",)),
    ("nack_run", "ready"): (("node", "failed"), ("rehab",), ("run_complete", "run_nacked")),
    ("nack_run", "running"): (
        ("node", "failed"),
        ("rehab",),
        ("run_complete", "run_nacked_while_running"),
    ),
    ("nack_run", "terminal"): _DIED_RUNNING,
    ("succeeded", "ready"): _CRASHED,
    ("succeeded", "running"): (("node", "succeeded"), ("run_complete", "success")),
    ("succeeded", "terminal"): _DIED_RUNNING,
    ("failed", "ready"): _CRASHED,
    ("failed", "running"): (("node", "failed"), ("run_complete", "failure")),
    ("failed", "terminal"): _DIED_RUNNING,
    ("other", "ready"): _CRASHED,
    ("other", "running"): _CRASHED,
    ("other", "terminal"): _DIED_RUNNING,
}

_VOTING_INPUTS = frozenset({"ack_commit", "nack_commit"})
_DETAILED = frozenset({"succeeded", "failed", "nack_commit", "nack_run"})
_RUNNING_INPUTS = frozenset({"ack_run", "nack_run", "succeeded", "failed"})


# ---------------------------------------------------------------------------------------
# Handlers


class _Tx:
    """Collects the changes (applied as they are recorded) and effects of one Step."""

    def __init__(self, job: Job, now: float) -> None:
        self.job = job
        self.now = now
        self.step = Step()

    def change(self, *change: Any) -> None:
        c = list(change)
        apply_change(self.job, c, self.now)
        self.step.changes.append(c)

    def effect(self, effect: Any) -> None:
        self.step.effects.append(effect)

    def node(self, name: str, status: str) -> None:
        self.change("node", name, status)

    def status(self, status: str) -> None:
        self.change("status", status)

    def event(self, name: str, data: dict[str, Any]) -> None:
        self.change("event", name, data)

    def run_ops(self, node: str, ops: tuple[Op, ...]) -> None:
        for op in ops:
            kind = op[0]
            if kind == "node":
                self.node(node, op[1])
            elif kind == "rehab":
                self.effect(Rehab(node))
                self.event("rehab", {"node": node})
            elif kind == "vote":
                self.event("quorum_vote", {"node": node, "status": op[1]})
            elif kind == "run_start":
                self.event("run_start", {"node": node})
            elif kind == "run_complete":
                self.event("run_complete", {"node": node, "status": op[1]})
            else:  # pragma: no cover - the tables are fixed
                raise ValueError(op)

    def finish(self, status: str, reason: str | None = None) -> None:
        self.event(
            "job_complete", {"status": status, "reason": reason} if reason else {"status": status}
        )
        self.status(status)
        self.effect(Finished(status))


def _column(status: str, live: tuple[str, ...]) -> str:
    return status if status in live else "terminal"


def _commit_body(job: Job, server_name: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "commit",
        "job_id": job.id,
        "server": server_name,
        "command": job.command,
    }
    if job.user is not None:
        body["user"] = job.user
    if job.dir is not None:
        body["dir"] = job.dir
    if job.env is not None:
        body["env"] = dict(job.env)
    if job.file is not None:
        body["file"] = job.file
    body["capture"] = bool(job.capture)
    return body


def _start_data(job: Job) -> dict[str, Any]:
    data: dict[str, Any] = {
        "command": job.command,
        "run_timeout": job.run_timeout,
        "quorum": job.quorum,
        "node_count": len(job.nodes),
        "user": job.requestor,
    }
    if job.user is not None:
        data["job_user"] = job.user
    if job.dir is not None:
        data["dir"] = job.dir
    if job.env is not None:
        data["env"] = dict(job.env)
    if job.file is not None:
        data["file_specified"] = True
    data["capture"] = bool(job.capture)
    if job.max_concurrency is not None:
        data["max_concurrency"] = job.max_concurrency
    if job.max_errors is not None:
        data["max_errors"] = job.max_errors
    return data


def _status_counts(job: Job) -> Counter[str]:
    """How many of the job's nodes are in each status: counted once, then kept up to date by
    ``apply_change`` (a non-field attribute: never logged, never in a snapshot). Scanning the
    nodes after every message instead made a 20,000-node job quadratic (16 s of votes and
    results)."""
    counts = job.__dict__.get("_counts")
    if counts is None:
        counts = job.__dict__["_counts"] = Counter(job.nodes.values())
    return counts


@dataclass
class _Window:
    """A rolling job's progress, derived from its durable fields and kept up to date by
    ``apply_change`` (a non-field attribute, like ``_counts``): the nodes in request order, how
    far the rollout looked, the started nodes still live, and the limits as counts."""

    order: list[str]
    cursor: int
    live: set[str]
    size: int | None
    max_errors: int | None


def rolling(job: Job) -> bool:
    """Whether the job starts its nodes through a window (``max_concurrency``/``max_errors``)."""
    return job.max_concurrency is not None or job.max_errors is not None


def _window(job: Job) -> _Window:
    window = job.__dict__.get("_rollout")
    if window is None:
        n = len(job.nodes)
        live = {name for name in job.dispatched if job.nodes[name] in _STARTED}
        limit = rollout.limit
        window = _Window(
            list(job.nodes), 0, live, limit(job.max_concurrency, n), limit(job.max_errors, n)
        )
        job.__dict__["_rollout"] = window
    return window


def _roll(tx: _Tx) -> None:
    """Rolling execution (``core.rollout``): stop once the errors pass ``max_errors``, then
    abort the nodes not started; otherwise start as many as the window has room for."""
    job, window = tx.job, _window(tx.job)
    if job.stopped_by is None and rollout.over_errors(_status_counts(job), window.max_errors):
        tx.change("stopped", rollout.STOPPED_BY_ERRORS)
        tx.event("rollout_stopped", {"reason": rollout.STOPPED_BY_ERRORS})
    everyone = len(window.order)
    room = everyone if window.size is None else window.size - len(window.live)
    if job.stopped_by is not None:
        room = everyone
    names, window.cursor = rollout.next_to_start(
        window.order, job.nodes, job.dispatched, window.cursor, room
    )
    for name in names:
        if job.stopped_by is not None:
            tx.node(name, "aborted")  # committed, never started: told to abort
            tx.effect(Rehab(name))
        else:
            tx.change("run_sent", name)
            tx.effect(Send(name, {"type": "run", "job_id": job.id}))


def _maybe_finished_running(tx: _Tx) -> None:
    job = tx.job
    if job.status != "running":
        return
    if rolling(job):
        _roll(tx)
    counts = _status_counts(job)
    if counts["ready"] == 0 and counts["running"] == 0:
        tx.finish("aborted" if job.stopped_by else "complete", job.stopped_by)


def _maybe_finished_voting(tx: _Tx) -> None:
    """§5.4, checked after every voting-phase input."""
    job = tx.job
    if job.status != "voting" or _status_counts(job)["new"]:
        return
    ready = [n for n, s in job.nodes.items() if s == "ready"]
    if len(ready) >= job.quorum:
        tx.event("quorum_succeeded", {})
        tx.status("running")
        if not rolling(job):  # a rolling job starts its first window in the check below
            for name in ready:
                tx.effect(Send(name, {"type": "run", "job_id": job.id}))
        tx.effect(ArmTimer("running", tx.now + job.run_timeout))
        _maybe_finished_running(tx)
    else:
        for name in ready:
            tx.node(name, "was_ready")
            tx.effect(Rehab(name))
        tx.finish("quorum_failed")


def _voting_input(tx: _Tx, node: str, kind: str) -> None:
    column = _column(tx.job.nodes[node], ("new", "ready"))
    tx.run_ops(node, VOTING_TABLE[(kind, column)])
    _maybe_finished_voting(tx)


def _running_input(tx: _Tx, node: str, kind: str) -> None:
    column = _column(tx.job.nodes[node], ("ready", "running"))
    tx.run_ops(node, RUNNING_TABLE[(kind, column)])
    _maybe_finished_running(tx)


def _live(job: Job) -> bool:
    return job.status in ("voting", "running")


def start(
    job: Job, unavailable: set[str], now: float, *, server_name: str, voting_timeout: float
) -> Step:
    """§5.2: the start event, voting, commits to the reachable nodes, then ``down`` for the rest."""
    if job.status != "new":
        raise ValueError(f"job {job.id} already started")
    tx = _Tx(job, now)
    tx.event("start", _start_data(job))
    tx.status("voting")
    commit = _commit_body(job, server_name)
    for name in job.nodes:
        if name not in unavailable:
            tx.effect(Send(name, dict(commit)))
    tx.effect(ArmTimer("voting", now + voting_timeout))
    # ``down`` for each unreachable node, checking the end of voting once afterwards: the
    # reachable nodes are still ``new`` until then, so voting cannot end earlier, and checking
    # after each node would make a large job's start quadratic (seconds at 20,000 nodes)
    for name in list(job.nodes):
        if name in unavailable:
            tx.run_ops(name, VOTING_TABLE[("down", "new")])
    _maybe_finished_voting(tx)
    return tx.step


def on_message(job: Job, node: str, msg_type: str, body: dict[str, Any], now: float) -> Step:
    """A validated node message naming this job."""
    if node not in job.nodes or not _live(job):
        return Step()
    tx = _Tx(job, now)
    if msg_type in ("succeeded", "failed") and node not in job.outputs:
        stdout, stderr = body.get("stdout"), body.get("stderr")
        if isinstance(stdout, str) and isinstance(stderr, str):
            tx.change("output", node, stdout, stderr)
    if msg_type in _DETAILED and node not in job.details:
        detail = node_details(body)
        if detail is not None:
            tx.change("detail", node, detail)
    if job.status == "voting":
        _voting_input(tx, node, msg_type if msg_type in _VOTING_INPUTS else "other")
    else:
        _running_input(tx, node, msg_type if msg_type in _RUNNING_INPUTS else "other")
    return tx.step


def on_node_down(job: Job, node: str, now: float) -> Step:
    """The node's FSM stopped (liveness timeout or a new client incarnation)."""
    if node not in job.nodes or not _live(job):
        return Step()
    tx = _Tx(job, now)
    if job.status == "voting":
        _voting_input(tx, node, "down")
    else:
        _running_input(tx, node, "other")
    return tx.step


def on_node_lost_job(job: Job, node: str, now: float) -> Step:
    """After a server restart the node came back without this job (see the module doc)."""
    if node not in job.nodes or not _live(job):
        return Step()
    tx = _Tx(job, now)
    status = job.nodes[node]
    if job.status == "voting":
        if status in ("new", "ready"):
            tx.run_ops(node, _TO_UNAVAILABLE)
        _maybe_finished_voting(tx)
    else:
        if status in ("ready", "running"):
            tx.run_ops(node, _CRASHED)
        _maybe_finished_running(tx)
    return tx.step


def on_voting_timeout(job: Job, now: float) -> Step:
    """Every node still ``new`` votes ``voting_timeout`` and becomes unavailable."""
    if job.status != "voting":
        return Step()  # a stale timer
    tx = _Tx(job, now)
    silent = [n for n, s in job.nodes.items() if s == "new"]
    for name in silent:
        tx.event("quorum_vote", {"node": name, "status": "voting_timeout"})
    for name in silent:
        tx.node(name, "unavailable")
        tx.effect(Rehab(name))
    _maybe_finished_voting(tx)
    return tx.step


def on_run_timeout(job: Job, now: float) -> Step:
    """Nodes still ``ready``/``running`` time out (no per-node events); the job ends timed_out.
    With ``max_concurrency`` each node's own run times out (a ``run_complete`` event each) and
    the rollout goes on."""
    if job.status != "running":
        return Step()  # a stale timer
    tx = _Tx(job, now)
    if job.max_concurrency is not None:
        late = [n for n in _window(job).live if job.dispatched[n] + job.run_timeout <= now]
        for name in sorted(late, key=lambda n: (job.dispatched[n], n)):
            tx.node(name, "timed_out")
            tx.effect(Rehab(name))
            tx.event("run_complete", {"node": name, "status": "timed_out"})
        _maybe_finished_running(tx)
        return tx.step
    for name, status in list(job.nodes.items()):
        if status in ("ready", "running"):
            tx.node(name, "timed_out")
            tx.effect(Rehab(name))
    tx.finish("timed_out")
    return tx.step


def abort(job: Job, now: float) -> Step:
    """Cancel a job (new in this port): live nodes -> ``aborted`` and rehab; job -> aborted."""
    if job_finished(job):
        raise JobFinished(job.id)
    tx = _Tx(job, now)
    started = job.status != "new"
    for name, status in list(job.nodes.items()):
        if status in _LIVE_NODE:
            tx.node(name, "aborted")
            if started:
                tx.effect(Rehab(name))
    tx.finish("aborted")
    return tx.step


def crash(job: Job, now: float) -> Step:
    """The job's supervisor failed: like the original's job monitor, node rows stay as they are."""
    if job_finished(job):
        return Step()
    tx = _Tx(job, now)
    for name, status in job.nodes.items():
        if status in _LIVE_NODE:
            tx.effect(Rehab(name))
    tx.finish("crashed")
    return tx.step


# ---------------------------------------------------------------------------------------
# Read helpers


def job_finished(job: Job) -> bool:
    return job.status in FINISHED


def nodes_by_status(job: Job) -> dict[str, list[str]]:
    """GET /jobs/ID ``nodes``: only the statuses that occur, names sorted."""
    out: dict[str, list[str]] = {}
    for status in NODE_STATUSES:
        names = sorted(n for n, s in job.nodes.items() if s == status)
        if names:
            out[status] = names
    return out


def voting_deadline(job: Job, voting_timeout: float) -> float | None:
    """When the voting timer fires, or None when the job is not voting (timer to re-arm)."""
    if job.status != "voting" or job.voting_at is None:
        return None
    return job.voting_at + voting_timeout


def running_deadline(job: Job) -> float | None:
    """When the run timer fires, or None when the job is not running (or, rolling, when no
    started node is live: a later step starts one)."""
    if job.status != "running" or job.running_at is None:
        return None
    if job.max_concurrency is None:
        return job.running_at + job.run_timeout
    started = [job.dispatched[name] for name in _window(job).live]
    return min(started) + job.run_timeout if started else None
