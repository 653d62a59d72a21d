"""The server loop's longest stall while the log is snapshotted (``pushy bench replay --stall``).

Loads a built state directory the way the server does (events settled, the heap frozen), then
runs the store's committer on a trio loop with small segments: one task appends node records
in bursts, as heartbeats and job steps do, another sleeps 1 ms at a time and notes every gap
between its wakeups. The longest gap while snapshots are taken is what every request, SSE
stream and heartbeat would have waited.
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


def measure(directory: Path, *, segment_bytes: int, snapshots: int, timeout: float) -> dict:
    """Stall figures while ``snapshots`` snapshots are taken of the state in ``directory``."""
    store = Store(directory, segment_max_bytes=segment_bytes, retention_days=0, linger=LINGER)
    gc.disable()
    store.load(defer_events=True)
    now = time.time()
    store.settle_events(lambda job: jobfsm.shows_events(job, now, LINGER))
    gc.freeze()
    gc.enable()
    try:
        return trio.run(_run, store, snapshots, timeout)
    finally:
        store.log.close()


async def _run(store: Store, snapshots: int, timeout: float) -> dict[str, Any]:
    gaps: list[float] = []
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
                last = now

        nursery.start_soon(monitor)
        started = time.perf_counter()
        with trio.move_on_after(timeout):
            while committer.snapshots < snapshots:
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
        "max_gap_ms": round(gaps[-1] * 1000, 1) if gaps else None,
        "p99_gap_ms": round(gaps[int(len(gaps) * 0.99)] * 1000, 1) if gaps else None,
        "ticks": len(gaps),
    }
