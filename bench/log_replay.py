"""Event log throughput: replay records/s and append records/s for batch sizes 1/10/100.

Prints numbers only; run with `python bench/log_replay.py`. fsync-bound numbers depend on
the disk (see spec/stack-notes.md §1d for this VM's figures).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import orjson

from appliance.store.log import EventLog

RECORDS = 200_000


def _payload(i: int) -> bytes:
    record = {
        "type": "node_job_status",
        "job_id": "8f1c2e3a4b5d6e7f8091a2b3c4d5e6f7",
        "node": f"node-{i % 5000:05d}.example.com",
        "status": "complete",
        "at": 1767225600.0 + i,
        "seq": i,
    }
    return orjson.dumps(record).ljust(200)


def _open(path: Path) -> tuple[EventLog, int]:
    log = EventLog(path, segment_max_bytes=1 << 40)
    _, records = log.open()
    n = sum(1 for _ in records)
    return log, n


def bench_replay(root: Path) -> None:
    log, _ = _open(root)
    batch = 1000
    seq = 1
    while seq <= RECORDS:
        log.append([(s, _payload(s)) for s in range(seq, min(seq + batch, RECORDS + 1))])
        seq += batch
    size = log.segment_bytes()
    log.close()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        log, n = _open(root)
        best = min(best, time.perf_counter() - start)
        log.close()
    assert n == RECORDS
    print(f"replay: {n} records, {size / 2**20:.1f} MiB, {n / best:,.0f} records/s")

    best = float("inf")
    for _ in range(3):
        log = EventLog(root, segment_max_bytes=1 << 40)
        start = time.perf_counter()
        _, records = log.open()
        n = 0
        for _seq, payload in records:
            orjson.loads(payload)
            n += 1
        best = min(best, time.perf_counter() - start)
        log.close()
    print(f"replay + orjson.loads: {n / best:,.0f} records/s")


def bench_append(root: Path, batch: int, total: int) -> None:
    log, _ = _open(root)
    seq = log.last_seq + 1
    payloads = [_payload(i) for i in range(batch)]
    start = time.perf_counter()
    written = 0
    while written < total:
        log.append([(seq + i, payloads[i]) for i in range(batch)])
        seq += batch
        written += batch
    elapsed = time.perf_counter() - start
    log.close()
    print(
        f"append, batch {batch:>3}: {written / elapsed:,.0f} records/s "
        f"({written / batch / elapsed:,.0f} fdatasyncs/s)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pushy-bench-", dir=".") as tmp:
        bench_replay(Path(tmp) / "replay")
        for batch, total in ((1, 2000), (10, 10_000), (100, 50_000)):
            bench_append(Path(tmp) / f"append{batch}", batch, total)


if __name__ == "__main__":
    main()
