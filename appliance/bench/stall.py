"""The server loop's longest stall while the log is snapshotted (``pushy bench replay --stall``).

Loads a built state directory the way the server does (events settled, the heap frozen), then
runs the store's committer on a trio loop: one task appends node records in bursts, as
heartbeats and job steps do, another sleeps 1 ms at a time and notes every gap between its
wakeups. First a few seconds with segments too large to fill (the machine's own noise), then
small segments, so that snapshots are taken. The longest gap while one is under way is what
every request, SSE stream and heartbeat would have waited.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import trio

from appliance.core import jobfsm
from appliance.server.clock import Clock
from appliance.server.store import Store

TICK_SECONDS = 0.001
BURST = 50  # records appended between two pauses of the writer
LINGER = 5.0  # wait_complete_time's default


def measure(
    directory: Path, *, segment_bytes: int, snapshots: int, timeout: float, control: float = 5.0
) -> dict:
    """Stall figures while ``snapshots`` snapshots are taken of the state in ``directory``,
    after ``control`` seconds of the same load without any (the machine's own noise)."""
    store = Store(directory, segment_max_bytes=2**40, retention_days=0, linger=LINGER)
    gc.disable()
    store.load(defer_events=True)
    now = time.time()
    store.settle_events(lambda job: jobfsm.shows_events(job, now, LINGER))
    gc.freeze()
    gc.enable()
    try:
        return trio.run(_run, store, segment_bytes, snapshots, timeout, control)
    finally:
        store.log.close()


async def _run(
    store: Store, segment_bytes: int, snapshots: int, timeout: float, control: float
) -> dict[str, Any]:
    gaps: list[float] = []
    quiet: list[float] = []  # the control: before any segment could fill
    during: list[float] = []  # the gaps that ended while a snapshot was under way
    appended = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run, Clock())
        committer = store.committer
        assert committer is not None
        done = trio.Event()

        async def monitor() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await trio.sleep(TICK_SECONDS)
                now = time.perf_counter()
                gaps.append(now - last)
                if store.log.segment_max_bytes != segment_bytes:
                    quiet.append(now - last)
                elif committer.snapshot_under_way:
                    during.append(now - last)
                last = now

        nursery.start_soon(monitor)
        started = time.perf_counter()
        with trio.move_on_after(timeout):
            while committer.snapshots < snapshots:
                if time.perf_counter() - started > control:
                    store.log.segment_max_bytes = segment_bytes  # the next batch snapshots
                for _ in range(BURST):
                    node = f"node-{appended % 1000:06d}.bench.example"
                    store.record({"type": "node_up", "org": "x", "node": node, "incarnation": "i"})
                    appended += 1
                await trio.sleep(0.002)
        seconds = time.perf_counter() - started
        done.set()
        store.close()
    gaps.sort()
    return {
        "snapshots": committer.snapshots,
        "records_appended": appended,
        "seconds": round(seconds, 2),
        "max_gap_ms": _ms(max(gaps, default=None)),
        "p99_gap_ms": _ms(gaps[int(len(gaps) * 0.99)] if gaps else None),
        "max_gap_without_snapshot_ms": _ms(max(quiet, default=None)),
        "max_gap_during_snapshot_ms": _ms(max(during, default=None)),
        "ticks": len(gaps),
        "ticks_during_snapshot": len(during),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
