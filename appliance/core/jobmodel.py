"""A push job as the server keeps it, and the effects its state machine asks the shell for.

``core.jobfsm`` decides and is the only code that changes a Job (``apply_change``, the
reducer); this module holds what the decisions are about, so that the rollout arithmetic
(``core.rollout``) and the shells can name them without the transition tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FINISHED",
    "JOB_STATUSES",
    "NODE_STATUSES",
    "ArmTimer",
    "Finished",
    "Job",
    "JobFinished",
    "Rehab",
    "Send",
    "Step",
    "new_job",
]

JOB_STATUSES = (
    "new",
    "voting",
    "running",
    "complete",
    "quorum_failed",
    "aborted",
    "timed_out",
    "crashed",
)
NODE_STATUSES = (
    "new",
    "ready",
    "running",
    "succeeded",
    "failed",
    "aborted",
    "unavailable",
    "nacked",
    "faulty",
    "was_ready",
    "crashed",
    "timed_out",
)
FINISHED = frozenset({"complete", "quorum_failed", "aborted", "timed_out", "crashed"})


class JobFinished(Exception):
    """The operation needs a job that has not finished yet."""


@dataclass
class Job:
    id: str
    org: str
    command: str
    nodes: dict[str, str]  # node name -> node status, in request order
    quorum: int
    run_timeout: int
    user: str | None
    dir: str | None
    env: dict[str, str] | None
    file: str | None
    capture: bool
    requestor: str  # the Chef identity that POSTed (the start event's "user")
    status: str
    created_at: float
    updated_at: float
    voting_at: float | None
    running_at: float | None
    finished_at: float | None
    events: list[tuple[int, str, dict[str, Any]]]  # (n, name, data); SSE id f"job-{n}"
    outputs: dict[str, tuple[str, str]]  # node -> (stdout, stderr)
    last_event_t: float
    # Rolling execution (beyond the original; ``core.rollout``): the request's limits as given
    # (a count or "N%"), when each node was sent ``run``, and why the rollout stopped early.
    max_concurrency: int | str | None = None
    max_errors: int | str | None = None
    dispatched: dict[str, float] = field(default_factory=dict)
    stopped_by: str | None = None
    # what our client told of a node's end or refusal (``wire.node_details``): exit status,
    # signal, reason; original clients tell nothing
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


# Effects: not durable; the shell executes them.


@dataclass(frozen=True)
class Send:
    """A commit or run body, without sequence/timestamp (the shell puts them first)."""

    node: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Rehab:
    """Tell the node's FSM to go to rehab, which sends it ``abort``."""

    node: str


@dataclass(frozen=True)
class ArmTimer:
    kind: str  # "voting" or "running"
    deadline: float


@dataclass(frozen=True)
class Finished:
    status: str


@dataclass
class Step:
    changes: list[list[Any]] = field(default_factory=list)
    effects: list[Any] = field(default_factory=list)


def new_job(
    *,
    id: str,
    org: str,
    command: str,
    nodes: list[str],
    quorum: int,
    run_timeout: int,
    user: str | None = None,
    dir: str | None = None,
    env: dict[str, str] | None = None,
    file: str | None = None,
    capture: bool = False,
    requestor: str,
    now: float,
    max_concurrency: int | str | None = None,
    max_errors: int | str | None = None,
) -> Job:
    """A job as POSTed: status ``new``, every node ``new``."""
    node_map = dict.fromkeys(nodes, "new")
    if len(node_map) != len(nodes):
        raise ValueError("duplicate node name")
    # positionally, in field order: replay makes one per job_created record
    return Job(
        id,
        org,
        command,
        node_map,
        quorum,
        run_timeout,
        user,
        dir,
        dict(env) if env is not None else None,
        file,
        bool(capture),
        requestor,
        "new",  # status
        now,  # created_at
        now,  # updated_at
        None,  # voting_at
        None,  # running_at
        None,  # finished_at
        [],  # events
        {},  # outputs
        0.0,  # last_event_t
        max_concurrency,
        max_errors,
        {},  # dispatched
        None,  # stopped_by
        {},  # details
    )
