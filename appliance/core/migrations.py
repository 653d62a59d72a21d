"""The formats of the event log's records, and the migrations between them.

Rules (everything about record formats lives in this file):

- Every log segment and every snapshot names, in its header, the format of the records inside
  it. ``FORMAT`` is what this release writes; it reads every format from ``OLDEST_FORMAT`` to
  ``FORMAT``. A file of any other format is refused (``store.errors.UnsupportedFormat``): it is
  never guessed at, never "recovered", never written over.
- Any change to the records that an older release would misread bumps ``FORMAT``: a new
  record type, a new or renamed field, a changed meaning. The same change adds one entry to
  ``_RECORD_STEPS`` and ``_SNAPSHOT_STEPS``: a pure function from the records of format N to
  those of format N + 1. Older formats are migrated as they are read; nothing on disk is
  rewritten, so the files of the older format stay until snapshots make them obsolete (a
  release that writes format N + 1 starts a new segment of that format at its first start).
- A release refuses a log holding any file of a newer format than its own ``FORMAT``, before
  it writes anything: a downgrade across a format change stops with a message, never with
  lost data. Reinstalling the newer release picks up where it was.

History (docs/operations.md keeps the same table for operators):

  format  first written by  change
  1       0.1.0             the first format
  2       0.2.0             a record's seq lives only in its frame (format 1 also repeated it
                            in the JSON payload); snapshots hold jobs only as ``jobs_restore``
                            rows (format 1 snapshots may hold ``job_restore`` objects); rolling
                            jobs (``max_concurrency``/``max_errors`` in ``job_created``, the
                            ``run_sent`` and ``stopped`` changes: added before 0.2.0 was
                            released, which no release reads wrongly)

The ``server_key`` record (the server's RSA key) is written only into a PostgreSQL log, which no
older release can read at all (``store.pglog``): it needed no new format.

The reducer (``core.state``) knows only ``FORMAT``: every older form is turned into it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "FORMAT",
    "OLDEST_FORMAT",
    "readable",
    "upgrade_record",
    "upgrade_snapshot",
]

FORMAT = 2
OLDEST_FORMAT = 1

Record = dict[str, Any]


def readable(fmt: int) -> bool:
    """Whether this release can read (possibly by migrating) records of format ``fmt``."""
    return OLDEST_FORMAT <= fmt <= FORMAT


def upgrade_record(record: Record, fmt: int) -> Record:
    """A log record of format ``fmt`` as a record of ``FORMAT``."""
    while fmt < FORMAT:
        record = _RECORD_STEPS[fmt](record)
        fmt += 1
    return record


def upgrade_snapshot(records: list[Record], fmt: int) -> list[Record]:
    """A snapshot's records of format ``fmt`` as records of ``FORMAT``."""
    while fmt < FORMAT:
        records = _SNAPSHOT_STEPS[fmt](records)
        fmt += 1
    return records


# -- 1 -> 2 ----------------------------------------------------------------------------------


def _record_1_to_2(record: Record) -> Record:
    # the frame's seq is the record's seq; the payload's copy was redundant
    record.pop("seq", None)
    return record


def _snapshot_1_to_2(records: list[Record]) -> list[Record]:
    out = []
    for record in records:
        if record.get("type") == "job_restore":
            # one job as a field -> value object: the same job as a one-row jobs_restore
            job = record["job"]
            out.append({"type": "jobs_restore", "fields": list(job), "rows": [list(job.values())]})
        else:
            out.append(record)
    return out


_RECORD_STEPS: dict[int, Callable[[Record], Record]] = {1: _record_1_to_2}
_SNAPSHOT_STEPS: dict[int, Callable[[list[Record]], list[Record]]] = {1: _snapshot_1_to_2}
