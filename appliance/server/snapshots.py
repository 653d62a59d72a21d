"""Snapshots built beside the server, not on its loop: from the files, in a child process.

A snapshot at seq S is the state after S. The running server's state has moved on by the time
one is written, and building and serialising it on the trio thread held every request and
heartbeat back (about 0.35 s of CPU per 100,000 jobs, each time a segment filled). So the
committer seals the full segment, and a child process (``pushy _snapshot``: its own
interpreter, so it holds no lock the server's loop needs) replays the previous snapshot and
the sealed segments up to S with the server's own reducer, settles the jobs' events and the
retention as the server would at ``now``, and writes the snapshot file itself: its tens of MiB
never pass through the server.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import trio

import appliance
from appliance.core import jobfsm
from appliance.core import state as corestate
from appliance.core.replayfold import DeferredFold
from appliance.localserver import pushy_command
from appliance.store.files import write_atomically
from appliance.store.frames import snapshot_name, snapshot_parts
from appliance.store.replay import read_upto

log = logging.getLogger("pushy.store")
CHILD_COMMAND = "_snapshot"  # the hidden ``pushy`` command the child runs
CHILD_NICENESS = 5  # the child yields the CPU to the server's loop


def payload(state: corestate.State) -> bytes:
    """The encoded snapshot of ``state``: its records (`state.to_records`)."""
    return orjson.dumps(corestate.to_records(state))


def build(directory: Path, seq: int, *, now: float, linger: float, retention: float) -> bytes:
    """The snapshot at ``seq`` of the server state in ``directory``, read from its log's
    files while the server runs: what a restart at ``now`` would rebuild from them, the
    events of jobs past their linger window and the jobs past retention left out."""
    snapshot, records = read_upto(directory / "log", seq)
    return fold(snapshot, records, now=now, linger=linger, retention=retention)


def fold(
    snapshot: tuple[bytes, int] | None,
    records: Iterable[tuple[int, bytes, int]],
    *,
    now: float,
    linger: float,
    retention: float,
) -> bytes:
    """The snapshot payload of a previous snapshot and the records after it (either engine)."""
    state = corestate.State()
    collecting = gc.isenabled()
    gc.disable()  # nothing replay makes is garbage (see Store.load)
    try:
        fold = DeferredFold(state, ended_before=now - linger)
        fold.replay(snapshot, records)
        fold.settle(lambda job: jobfsm.shows_events(job, now, linger))
        corestate.prune_jobs(state, now=now, retention=retention)
        return payload(state)
    finally:
        if collecting:
            gc.enable()


def write(directory: Path, seq: int, fmt: int, payload: bytes) -> Path:
    """The snapshot file of ``seq`` in format ``fmt``, as `EventLog.write_snapshot_file`
    writes it (synced, renamed into place: whole or absent)."""
    path = directory / "log" / snapshot_name(seq)
    write_atomically(path, snapshot_parts(fmt, seq, payload))
    return path


async def build_in_child(
    source: dict[str, Any], seq: int, *, fmt: int, now: float, linger: float, retention: float
) -> None:
    """`build` and `write` in a child process. ``source``: ``{"dir": STATE_DIR}`` for the file
    log, or ``{"url": URL, "password_file": PATH or None}`` for PostgreSQL (the child reads
    the records and stores the snapshot there itself). Raises
    `subprocess.CalledProcessError` if it failed (it says why on the server's stderr)."""
    args = {**source, "seq": seq, "fmt": fmt, "now": now, "linger": linger}
    args["retention"] = retention
    command = [*pushy_command(), CHILD_COMMAND, orjson.dumps(args).decode()]
    await trio.run_process(command, stdin=b"", env=_child_env())


def _child_env() -> dict[str, str]:
    """The server's environment, with this very ``appliance`` package first on the path: the
    child must run the code the server runs, whatever its working directory."""
    env = dict(os.environ)
    if not getattr(sys, "frozen", False):
        root = str(Path(appliance.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def child_main(argv: list[str]) -> int:
    """``pushy _snapshot JSON``: `build` and `write` one snapshot (never run by hand)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.nice(CHILD_NICENESS)
    args = orjson.loads(argv[0])
    seq, timing = args["seq"], {k: args[k] for k in ("now", "linger", "retention")}
    if "url" in args:
        from appliance.store.pgstore import open_pglog  # psycopg: only for a PostgreSQL store

        pglog = open_pglog(args["url"], args.get("password_file"), holder="snapshot")
        try:
            snapshot, records = pglog.read_upto(seq)
            pglog.write_snapshot(seq, fold(snapshot, records, **timing), fmt=args["fmt"])
        finally:
            pglog.close()
        return 0
    directory = Path(args["dir"])
    write(directory, seq, args["fmt"], build(directory, seq, **timing))
    return 0
