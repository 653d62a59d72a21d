"""Rolling execution, beyond the original: how many of a job's nodes may run at once, and when
a rollout stops early.

Voting is unchanged: every node commits, the quorum counts all of them. Then, with
``max_concurrency``, the committed nodes get ``run`` in request order, at most that many
running at any moment (a sliding window: one ends, the next starts), each bounded by the job's
``run_timeout`` from its own ``run``. With ``max_errors``, once more nodes than that ended
``failed``, ``crashed`` or ``timed_out``, no further node gets ``run``: the committed nodes not
started end ``aborted`` (and are told to abort), the running ones finish, and the job ends
``aborted`` with ``stopped_by: "max_errors"``. A job with neither limit runs as the original.

Pure arithmetic over a job's statuses; ``core.jobfsm`` records what it decides (``run_sent``
and ``stopped`` changes), so a replayed job, or a restarted server, resumes the window where
it was.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from appliance.core.jobspec import share_of

__all__ = ["ERROR_STATUSES", "STOPPED_BY_ERRORS", "limit", "next_to_start", "over_errors"]

#: The node outcomes ``max_errors`` counts.
ERROR_STATUSES = ("failed", "crashed", "timed_out")
STOPPED_BY_ERRORS = "max_errors"


def limit(value: int | str | None, nodes: int) -> int | None:
    """A request's limit as a count of the job's nodes (``"N%"`` rounded up); None: no limit."""
    return None if value is None else share_of(value, nodes)


def over_errors(counts: Mapping[str, int], max_errors: int | None) -> bool:
    """Whether the nodes that ended in error are more than ``max_errors`` allows."""
    if max_errors is None:
        return False
    return sum(counts.get(status, 0) for status in ERROR_STATUSES) > max_errors


def next_to_start(
    order: Sequence[str],
    nodes: Mapping[str, str],
    dispatched: Container[str],
    cursor: int,
    room: int,
) -> tuple[list[str], int]:
    """Up to ``room`` committed nodes (``ready``) not yet sent ``run``, in request order from
    ``cursor``, and the cursor past the last node looked at. Once running, no node becomes
    ``ready`` again: a node passed over never has to be looked at twice, so a whole rollout
    walks the job's nodes once."""
    found: list[str] = []
    while cursor < len(order) and len(found) < room:
        name = order[cursor]
        cursor += 1
        if nodes[name] == "ready" and name not in dispatched:
            found.append(name)
    return found, cursor
