"""Live output in PostgreSQL (``server.pgoutputs``) against a real PostgreSQL: durable before
visible, the truncation rules of the file version, a new active resuming the lengths of the
live jobs' streams, and writes fenced by the lease like the log's appends."""

from __future__ import annotations

import time

import pytest

from appliance.core.output import Kept, truncation_marker
from appliance.server.pgoutputs import PgOutputs
from appliance.store.pglog import PgLog

J, K = "a" * 32, "b" * 32


_dbs = iter(range(1, 10_000))


def active(url: str, holder: str = "a") -> PgLog:
    log = PgLog(url, holder=holder, lease_seconds=60)
    _, records = log.open()
    for _ in records:
        pass
    assert log.try_acquire() is not None
    return log


@pytest.fixture
def pglog(cluster):
    log = active(cluster.createdb(f"out{next(_dbs)}"))
    yield log
    log.close()


async def test_a_chunk_is_readable_and_acknowledged_once_its_pass_committed(pglog):
    out = PgOutputs(pglog, 100)
    acked: list[str] = []
    assert out.take(J, "n", "stdout", 0, b"hello ") == Kept(0, b"hello ")
    out.when_synced(lambda: acked.append("first"))
    assert await out.read(J, "n", "stdout") is None  # not committed yet
    assert acked == []
    assert await out.sync()
    assert acked == ["first"]
    assert await out.read(J, "n", "stdout") == b"hello "
    assert out.take(J, "n", "stdout", 3, b"lo world") == Kept(6, b"world")  # overlap kept once
    assert out.take(J, "n", "stdout", 0, b"hel") is None  # a resend: nothing new
    assert await out.sync()
    assert await out.read(J, "n", "stdout") == b"hello world"
    assert await out.read(J, "n", "stderr") is None
    assert await out.streamed(J, "n") and not await out.streamed(J, "m")
    out.close()


async def test_the_limit_cuts_with_the_marker_and_a_new_active_resumes_the_lengths(pglog):
    out = PgOutputs(pglog, 8)
    out.take(J, "n", "stdout", 0, b"12345")
    out.take(J, "n", "stderr", 0, b"0123456789")
    out.take(K, "n", "stdout", 0, b"other")
    assert await out.sync()
    assert await out.read(J, "n", "stderr") == b"01234567" + truncation_marker(8)
    out.close()
    # the next active knows where each live stream stands, truncated or not
    again = PgOutputs(pglog, 8)
    await again.preload([J])
    assert again.take(J, "n", "stdout", 0, b"12345678") == Kept(5, b"678")
    assert again.take(J, "n", "stderr", 10, b"more") is None  # cut already
    assert await again.sync()
    assert await again.read(J, "n", "stdout") == b"12345678"
    assert await again.read(J, "n", "stderr") == b"01234567" + truncation_marker(8)
    await again.remove([J])
    assert await again.read(J, "n", "stdout") is None
    assert await again.read(K, "n", "stdout") == b"other"
    again.close()


async def test_a_deposed_active_writes_no_output(cluster):
    url = cluster.createdb(f"out{next(_dbs)}")
    old = PgLog(url, holder="old", lease_seconds=1)
    _, records = old.open()
    for _ in records:
        pass
    assert old.try_acquire() is not None
    out = PgOutputs(old, 100)
    out.take(J, "n", "stdout", 0, b"before")
    assert await out.sync()
    time.sleep(1.2)  # the lease expires; another server takes it
    new = active(url, "new")
    acked: list[int] = []
    out.take(J, "n", "stdout", 6, b" after")
    out.when_synced(lambda: acked.append(1))
    assert not await out.sync()  # fenced: nothing written, nothing acknowledged
    assert acked == []
    reader = PgOutputs(new, 100)
    assert await reader.read(J, "n", "stdout") == b"before"
    for each in (out, reader):
        each.close()
    old.close()
    new.close()
