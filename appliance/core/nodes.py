"""Node availability outside jobs: the per-node FSM (rehab / idle), liveness and message routing.

server-protocol.md §4, with DESIGN.md's fixes: a node exists only after one of its messages
validated; messages are routed by the identity they were validated for (never by connection);
after a server restart a node that reports what the server expects resumes without an abort.
The table says what to do; the shell does it (sends, log records, job inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.core import liveness
from appliance.core.wire import job_id_of

NodeKey = tuple[str, str]  # (org, node)

MESSAGE_TYPES = frozenset(
    {
        "heartbeat",
        "ack_commit",
        "nack_commit",
        "ack_run",
        "nack_run",
        "succeeded",
        "failed",
        "aborted",
        "output",  # live output (our client only): taken by the server's output store
    }
)
# What a client's heartbeat job_state means in the server's node-in-job terms.
CLIENT_STATE_TO_JOB_STATUS = {"committed": "ready", "running": "running"}


# Effects -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    key: NodeKey
    type: str  # "abort" or "ack"


@dataclass(frozen=True, slots=True)
class Up:
    key: NodeKey
    incarnation: str


@dataclass(frozen=True, slots=True)
class Down:
    key: NodeKey
    reason: str


@dataclass(frozen=True, slots=True)
class ToJob:
    key: NodeKey
    job_id: str
    type: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LostJob:
    key: NodeKey
    job_id: str


@dataclass(frozen=True, slots=True)
class Liveness:
    interval: float
    decay_window: int
    threshold: float
    rehab_interval: float
    restart_grace: float = 60.0  # how long a node that was up may take to return after a restart
    at_edges: bool = False  # edges keep liveness and send only changes (core.edgelink)
    # the shell reads the time at least this often (``attend``): longer gaps are its own
    # standstills, excused from liveness (``liveness.Attention``); None: time as given
    tick: float | None = None


@dataclass(slots=True)
class Node:
    key: NodeKey
    incarnation: str | None
    state: str = "rehab"  # "rehab" | "idle"
    address: bytes | None = None
    health: liveness.Health | None = None
    rehab_due: float | None = None
    ghost: bool = False  # restored from the log after a restart; not online until it speaks
    ghost_until: float | None = None  # a ghost that has not spoken by then is down

    @property
    def available(self) -> bool:
        return not self.ghost and self.state == "idle"


@dataclass(frozen=True, slots=True)
class JobView:
    """What the node table needs to know about jobs, supplied by the shell."""

    is_live: Callable[[str], bool]  # the job exists and has not finished its linger window
    # the live job where the node is new, ready or running: (job_id, status), or None
    assignment: Callable[[NodeKey], tuple[str, str] | None]


@dataclass
class NodeTable:
    params: Liveness
    nodes: dict[NodeKey, Node] = field(default_factory=dict)
    addresses: dict[bytes, NodeKey] = field(default_factory=dict)
    # nodes put in rehab (a superset: the timer drops those that left it), so the timer does
    # not walk every node each time one more is sent ``abort`` (quadratic over a connect storm)
    rehab: dict[NodeKey, None] = field(default_factory=dict)  # ordered: the sends' order
    attention: liveness.Attention = field(init=False)

    def __post_init__(self) -> None:
        self.attention = liveness.Attention(self.params.tick)

    # Queries ---------------------------------------------------------------------------------
    def online(self, key: NodeKey) -> Node | None:
        node = self.nodes.get(key)
        return None if node is None or node.ghost else node

    def online_count(self) -> int:
        return sum(1 for n in self.nodes.values() if not n.ghost)

    # Restart ---------------------------------------------------------------------------------
    def restore(self, key: NodeKey, incarnation: str | None, now: float) -> None:
        """A node that was up when the server stopped: it must speak again within the grace.

        The grace is longer than the liveness window: a client that noticed the server was gone
        may be backing off between config fetches when the server comes back.
        """
        self.nodes[key] = Node(
            key, incarnation, state="idle", ghost=True, ghost_until=now + self.params.restart_grace
        )

    # Inputs ----------------------------------------------------------------------------------
    def attend(self, now: float) -> None:
        """The shell's regular reading of the time (every ``params.tick``)."""
        self.attention.at(now)

    def on_message(
        self, key: NodeKey, address: bytes, body: dict[str, Any], now: float, jobs: JobView
    ) -> list:
        """A message that passed the wire pipeline for ``key``; returns the effects in order."""
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES or kind == "output":
            return []
        beat_time = self.attention.at(now)
        effects: list = []
        node = self.nodes.get(key)
        incarnation = body.get("incarnation_id")
        incarnation = incarnation if isinstance(incarnation, str) else None
        if node is not None and node.ghost:
            node = self._resume_ghost(node, address, body, now, jobs, effects)
        elif node is not None and kind == "heartbeat" and incarnation != node.incarnation:
            self._stop(node, "client restarted (new incarnation)", effects)
            node = None
        if node is None:
            node = self._create(key, incarnation, address, now, effects)
        elif node.address != address:
            self._readdress(node, address)
            effects.append(Send(key, "ack"))
        self._handle(node, kind, body, now, beat_time, jobs, effects)
        return effects

    def on_rehab_timer(self, now: float) -> list:
        """Re-send ``abort`` to every node whose rehab period elapsed."""
        effects: list = []
        for node in self._in_rehab():
            if node.rehab_due is not None and node.rehab_due <= now:
                node.rehab_due = now + self.params.rehab_interval
                effects.append(Send(node.key, "abort"))
        return effects

    def next_rehab_due(self) -> float | None:
        return min((n.rehab_due for n in self._in_rehab() if n.rehab_due), default=None)

    def _in_rehab(self) -> list[Node]:
        found = []
        for key in list(self.rehab):
            node = self.nodes.get(key)
            if node is None or node.state != "rehab":
                del self.rehab[key]
            else:
                found.append(node)
        return found

    def scan(self, now: float) -> list:
        """The liveness scanner: every node whose decayed heartbeat rate fell below the threshold stops."""
        effects: list = []
        p = self.params
        beat_time = self.attention.at(now)
        for node in list(self.nodes.values()):
            if node.ghost and node.ghost_until is not None and now >= node.ghost_until:
                self._stop(node, "did not come back after the server restart", effects)
            elif (
                node.health is not None
                and not p.at_edges
                and liveness.is_dead(
                    node.health, beat_time, p.interval, p.decay_window, p.threshold
                )
            ):
                self._stop(node, "missed heartbeats", effects)
        return effects

    def do_rehab(self, key: NodeKey, now: float) -> list:
        """A job (or a stray message) says the node is in an abnormal state: reset it."""
        node = self.nodes.get(key)
        if node is None or node.ghost or node.state != "idle":
            return []
        node.state = "rehab"
        node.rehab_due = now + self.params.rehab_interval
        self.rehab[key] = None
        return [Send(key, "abort")]

    def edge_down(self, key: NodeKey, address: bytes, reason: str) -> list:
        """The edge at ``address`` saw the node stop beating. Ignored when the node has moved
        on (another edge, a new connection) since: its old edge forgets it late."""
        node = self.nodes.get(key)
        if node is None or node.ghost or node.address != address:
            return []
        effects: list = []
        self._stop(node, reason, effects)
        return effects

    def edge_lost(self, prefix: bytes, now: float) -> list[NodeKey]:
        """An edge died: its nodes reconnect to another one (or to its successor). Until they
        speak they are ghosts, as after a restart, so a node that lost a message on the way is
        reconciled with its job instead of dropped. Returns the nodes made ghosts."""
        lost = []
        for node in self.nodes.values():
            if not node.ghost and node.address is not None and node.address.startswith(prefix):
                node.ghost = True
                node.ghost_until = now + self.params.restart_grace
                lost.append(node.key)
        return lost

    def drop(self, key: NodeKey) -> list:
        """The node's client was deleted: forget it."""
        node = self.nodes.get(key)
        if node is None:
            return []
        effects: list = []
        self._stop(node, "client deleted", effects)
        return effects

    # Internals -------------------------------------------------------------------------------
    def _create(
        self, key: NodeKey, incarnation: str | None, address: bytes, now: float, effects: list
    ) -> Node:
        node = Node(key, incarnation, state="rehab", rehab_due=now + self.params.rehab_interval)
        self.nodes[key] = node
        self.rehab[key] = None
        self._readdress(node, address)
        effects.append(Up(key, incarnation or ""))
        effects.append(Send(key, "abort"))
        return node

    def _resume_ghost(
        self,
        node: Node,
        address: bytes,
        body: dict[str, Any],
        now: float,
        jobs: JobView,
        effects: list,
    ) -> Node | None:
        expected = jobs.assignment(node.key)
        reported = _reported_assignment(body)
        incarnation = body.get("incarnation_id")
        same_client = incarnation == node.incarnation
        implied = _reconcile(expected, reported) if same_client else None
        if implied is not None:
            node.ghost = False
            node.state = "idle"
            node.health = None
            self._readdress(node, address)
            effects.append(Send(node.key, "ack"))
            if expected is not None:
                effects.extend(ToJob(node.key, expected[0], kind, {}) for kind in implied)
            return node
        if expected is not None:
            effects.append(LostJob(node.key, expected[0]))
        self._stop(node, "came back in another state after the server restart", effects)
        return None

    def _handle(
        self,
        node: Node,
        kind: str,
        body: dict[str, Any],
        now: float,
        beat_time: float,
        jobs: JobView,
        effects: list,
    ) -> None:
        p = self.params
        job_id = job_id_of(body)
        if kind == "heartbeat":
            if p.at_edges:
                pass  # the edge counted it (and says when the node stops beating)
            elif node.health is None:
                node.health = liveness.create(beat_time, p.threshold)
            elif not liveness.on_heartbeat(
                node.health, beat_time, p.interval, p.decay_window, p.threshold
            ):
                self._stop(node, "heartbeat rate fell below the threshold", effects)
                return
            if job_id is not None and not jobs.is_live(job_id):
                effects.extend(self.do_rehab(node.key, now))
            return
        if kind == "aborted":
            if node.state == "rehab":
                node.state = "idle"
                node.rehab_due = None
            if job_id is not None and jobs.is_live(job_id):
                effects.append(ToJob(node.key, job_id, kind, body))
            return
        if job_id is not None and jobs.is_live(job_id):
            effects.append(ToJob(node.key, job_id, kind, body))
        else:
            effects.extend(self.do_rehab(node.key, now))

    def _readdress(self, node: Node, address: bytes) -> None:
        if node.address is not None and self.addresses.get(node.address) == node.key:
            del self.addresses[node.address]
        node.address = address
        self.addresses[address] = node.key

    def _stop(self, node: Node, reason: str, effects: list) -> None:
        self.nodes.pop(node.key, None)
        if node.address is not None and self.addresses.get(node.address) == node.key:
            del self.addresses[node.address]
        effects.append(Down(node.key, reason))


def _reconcile(
    expected: tuple[str, str] | None, reported: tuple[str, str] | None
) -> list[str] | None:
    """Can a node that reports ``reported`` resume where the server has it (``expected``)?

    Returns the job messages its report implies (replies whose record the server lost when it
    was killed: the node voted or started but the change never reached the log), or None when
    the two cannot be reconciled and the node must be reset.
    """
    if reported == expected:
        return []
    if expected is None:
        return None
    job_id, status = expected
    if status == "new" and reported is None:
        return []  # the commit may still be on its way, or was lost: the voting timer decides
    if status == "new" and reported == (job_id, "ready"):
        return ["ack_commit"]
    if status == "ready" and reported == (job_id, "running"):
        return ["ack_run"]
    return None


def _reported_assignment(body: dict[str, Any]) -> tuple[str, str] | None:
    """What the node says it is doing, in the server's terms: (job_id, ready|running) or None."""
    job_id = job_id_of(body)
    kind = body.get("type")
    if kind == "heartbeat":
        job_state = body.get("job_state")  # any JSON value: a list is unhashable
        status = CLIENT_STATE_TO_JOB_STATUS.get(job_state) if isinstance(job_state, str) else None
        if job_id is None or status is None:
            return None
        return (job_id, status)
    if job_id is None:
        return None
    if kind in ("succeeded", "failed", "nack_run"):
        return (job_id, "running")
    if kind == "ack_run":
        return (job_id, "ready")
    return None
