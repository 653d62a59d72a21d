"""The committer: group commit, ordering, draining, and failed writes."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from appliance.store.committer import Committer, CommitterClosed
from appliance.store.errors import StorageError
from appliance.store.frames import segment_name
from appliance.store.log import EventLog
from appliance.store.replay import read_upto


class Disk:
    """Fault and timing seams for the log: count fdatasyncs, hold a write, fail writes."""

    def __init__(self) -> None:
        self.syncs = 0
        self.fail_code: int | None = None
        self.fail_next: int | None = None
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, fd: int, data) -> int:
        fail_code = self.fail_code  # decided on entry, so a held write fails as planned
        if self.fail_next is not None:
            fail_code, self.fail_next = self.fail_next, None
        if self.hold:
            self.entered.set()
            if not self.release.wait(10):
                raise TimeoutError("test gate never opened")
        if fail_code is not None:
            raise OSError(fail_code, os.strerror(fail_code))
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        os.fdatasync(fd)

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


def open_log(directory: Path, disk: Disk | None = None, **kw) -> EventLog:
    if disk is not None:
        kw.update(write=disk.write, fdatasync=disk.fdatasync)
    log = EventLog(directory, **kw)
    _, records = log.open()
    for _ in records:
        pass
    return log


def replay(directory: Path) -> tuple[bytes | None, list[tuple[int, dict]]]:
    log = EventLog(directory)
    snap, records = log.open()
    out = [(seq, orjson.loads(payload)) for seq, payload, _ in records]
    log.close()
    return (snap[0] if snap else None), out


async def test_append_and_wait_round_trip(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        records = [{"type": "job", "n": 1}, {"type": "job", "n": 2}]
        last = await committer.append_and_wait(records)
        assert last == 2 and committer.synced_seq == 2
        assert [r["seq"] for r in records] == [1, 2]
        await committer.wait_synced(1)  # already durable
        committer.close()
    log.close()
    _, got = replay(tmp_path)
    # the seq is in the frame only (format 2), not repeated in the payload
    assert got == [(1, {"type": "job", "n": 1}), (2, {"type": "job", "n": 2})]


async def test_continues_after_existing_records(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append([(1, b'{"old":1}'), (2, b'{"old":2}')])
    committer = Committer(log)
    assert committer.synced_seq == 2 and committer.last_seq == 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run)
        assert await committer.append_and_wait([{"new": 3}]) == 3
        committer.close()
    log.close()
    assert [s for s, _ in replay(tmp_path)[1]] == [1, 2, 3]


async def test_needs_a_replayed_log(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.open()
    with pytest.raises(RuntimeError):
        Committer(log)
    log.close()


async def test_group_commit(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    syncs_before = disk.syncs
    results: list[int] = []

    async def writer(i: int) -> None:
        results.append(await committer.append_and_wait([{"i": i}]))

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        disk.hold = True
        nursery.start_soon(writer, 0)
        await disk.wait_entered()  # the first batch is in its write
        for i in range(1, 100):
            nursery.start_soon(writer, i)
        await trio.testing.wait_all_tasks_blocked()
        disk.release.set()
        with trio.fail_after(10):
            while len(results) < 100:
                await trio.sleep(0.01)
        committer.close()
    log.close()
    # 100 durable records, two fdatasyncs: the first alone, the 99 others together.
    assert disk.syncs - syncs_before == 2 and committer.batches == 2
    assert sorted(results) == list(range(1, 101))
    _, got = replay(tmp_path)
    assert [s for s, _ in got] == list(range(1, 101))


async def test_many_writers_fewer_syncs_than_records(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    syncs_before = disk.syncs

    async def writer(i: int) -> None:
        for j in range(5):
            await committer.append_and_wait([{"writer": i, "j": j}])

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as writers:
            for i in range(50):
                writers.start_soon(writer, i)
        committer.close()
    log.close()
    assert disk.syncs - syncs_before < 250
    _, got = replay(tmp_path)
    assert len(got) == 250
    for i in range(50):  # each writer's records in its own order
        assert [r["j"] for _, r in got if r["writer"] == i] == list(range(5))


async def test_order_of_appends_is_the_order_on_disk(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = Committer(log)
    expected = []
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(300):
            seq = committer.append({"i": i})
            expected.append((seq, i))
            if i % 37 == 0:
                await trio.sleep(0)  # let batches of various sizes form
        await committer.wait_synced(expected[-1][0])
        committer.close()
    log.close()
    _, got = replay(tmp_path)
    assert [(s, r["i"]) for s, r in got] == expected == [(i + 1, i) for i in range(300)]


async def test_close_drains_the_queue(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(100):
            committer.append({"i": i})
        committer.close()
        with pytest.raises(CommitterClosed):
            committer.append({"late": True})
        with pytest.raises(CommitterClosed):
            await committer.append_and_wait([{"late": True}])
    assert committer.synced_seq == 100
    log.close()
    assert len(replay(tmp_path)[1]) == 100


async def test_unencodable_record_is_refused_at_append(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        with pytest.raises(TypeError):
            committer.append({"bad": object()})
        with pytest.raises(TypeError):
            await committer.append_and_wait([{"ok": 1}, {"bad": object()}])
        assert await committer.append_and_wait([{"ok": 2}]) == 1
        committer.close()
    log.close()
    assert replay(tmp_path)[1] == [(1, {"ok": 2})]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
async def test_storage_error_reaches_waiters_and_committer_keeps_running(
    tmp_path: Path, code: int
) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        assert await committer.append_and_wait([{"n": "a"}]) == 1
        disk.fail_code = code
        with pytest.raises(StorageError) as info:
            await committer.append_and_wait([{"n": "lost1"}, {"n": "lost2"}])
        assert info.value.errno == code
        assert committer.synced_seq == 1 and committer.failures == 1
        with pytest.raises(StorageError):
            await committer.append_and_wait([{"n": "lost3"}])
        disk.fail_code = None  # space came back
        rec = {"n": "b"}
        assert await committer.append_and_wait([rec]) == 2  # the failed seqs are reused
        assert rec["seq"] == 2
        committer.close()
    log.close()
    _, got = replay(tmp_path)
    assert got == [(1, {"n": "a"}), (2, {"n": "b"})]


async def test_records_queued_behind_a_failed_batch_are_renumbered(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    outcome: dict[str, object] = {}

    async def first() -> None:
        try:
            await committer.append_and_wait([{"n": "A1"}, {"n": "A2"}])
        except StorageError as exc:
            outcome["A"] = exc

    async def second() -> None:
        outcome["B"] = await committer.append_and_wait([{"n": "B"}])

    async def waits_for(seq: int, key: str) -> None:
        try:
            await committer.wait_synced(seq)
            outcome[key] = "ok"
        except StorageError as exc:
            outcome[key] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        disk.hold = True
        disk.fail_code = errno.ENOSPC
        nursery.start_soon(first)
        await disk.wait_entered()  # batch A (seqs 1-2) is in its write, about to fail
        disk.hold = False
        nursery.start_soon(second)  # seq 3 for now
        await trio.testing.wait_all_tasks_blocked()
        record_c = {"n": "C"}
        assert committer.append(record_c) == 4
        nursery.start_soon(waits_for, 2, "wait A2")
        nursery.start_soon(waits_for, 4, "wait C")
        await trio.testing.wait_all_tasks_blocked()
        disk.fail_code = None
        disk.release.set()
        with trio.fail_after(10):
            while len(outcome) < 4:
                await trio.sleep(0.01)
        committer.close()
    log.close()
    assert isinstance(outcome["A"], StorageError) and outcome["A"].errno == errno.ENOSPC
    assert isinstance(outcome["wait A2"], StorageError)
    assert outcome["B"] == 1 and record_c["seq"] == 2 and outcome["wait C"] == "ok"
    _, got = replay(tmp_path)
    assert got == [(1, {"n": "B"}), (2, {"n": "C"})]


async def test_unwaited_records_survive_a_full_disk_and_are_written_when_space_returns(
    tmp_path: Path,
) -> None:
    """Job steps and node transitions are already in memory: a full disk must not drop them
    from the log. They are retried (in order) while REST writes fail fast with StorageError."""
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    outcome: dict[str, object] = {}

    async def waits_for(seq: int) -> None:
        await committer.wait_synced(seq)
        outcome["step"] = "synced"

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        disk.fail_code = errno.ENOSPC
        assert committer.append({"n": "step1"}) == 1
        nursery.start_soon(waits_for, 1)
        with pytest.raises(StorageError):
            await committer.append_and_wait([{"n": "rest"}])
        assert committer.append({"n": "step2"}) == 2  # step1 kept seq 1, "rest" was refused
        with trio.fail_after(5):
            while committer.failures < 3:  # it keeps retrying while the disk is full
                await trio.sleep(0.01)
        assert committer.synced_seq == 0 and "step" not in outcome
        disk.fail_code = None
        with trio.fail_after(10):
            await committer.wait_synced(2)
        await trio.testing.wait_all_tasks_blocked()
        assert outcome["step"] == "synced"
        committer.close()
    log.close()
    _, got = replay(tmp_path)
    assert got == [(1, {"n": "step1"}), (2, {"n": "step2"})]


async def test_wait_synced_rejects_unassigned_seq(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    committer = Committer(log)
    await committer.wait_synced(0)
    with pytest.raises(ValueError):
        await committer.wait_synced(1)
    log.close()


async def test_cancelled_waiter_does_not_stop_the_write(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        disk.hold = True
        with trio.CancelScope() as scope:

            async def cancel_when_entered() -> None:
                await disk.wait_entered()
                scope.cancel()

            nursery.start_soon(cancel_when_entered)
            await committer.append_and_wait([{"n": 1}])
        assert scope.cancelled_caught
        assert committer._waiters == [] and committer.synced_seq == 0  # still in its write
        disk.release.set()
        await committer.append_and_wait([{"n": 2}])
        committer.close()
    log.close()
    assert [r["n"] for _, r in replay(tmp_path)[1]] == [1, 2]


async def test_stopped_committer_fails_its_waiters(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    outcome: dict[str, object] = {}

    async def waiter() -> None:
        try:
            await committer.append_and_wait([{"n": "queued"}])
        except CommitterClosed as exc:
            outcome["queued"] = exc

    committer_scope = trio.CancelScope()
    committer_done = trio.Event()

    async def run_committer() -> None:
        with committer_scope:
            await committer.run()
        committer_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_committer)
        await trio.testing.wait_all_tasks_blocked()
        disk.hold = True
        committer.append({"n": "in flight"})
        await disk.wait_entered()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        committer_scope.cancel()
        disk.release.set()
        with trio.fail_after(10):
            await committer_done.wait()
    log.close()
    assert isinstance(outcome["queued"], CommitterClosed)
    assert committer.synced_seq == 1  # the write in its thread finished before the stop
    with pytest.raises(CommitterClosed):
        committer.append({"n": "after"})
    assert [r["n"] for _, r in replay(tmp_path)[1]] == ["in flight"]


def state_from_files(directory: Path, seq: int) -> list[int]:
    """What a snapshot hook may use: the log's files up to a sealed seq (never live state)."""
    snap, records = read_upto(directory / "log", seq)
    return (orjson.loads(snap[0]) if snap else []) + [orjson.loads(p)["i"] for _, p, _ in records]


async def settled(committer: Committer) -> None:
    """Until the committer is idle and no snapshot is under way."""
    await trio.testing.wait_all_tasks_blocked()
    while committer.snapshot_under_way:
        await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()


async def test_snapshot_hook_bounds_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_max_bytes=2000)
    taken: list[int] = []

    async def snapshot(seq: int) -> None:
        # sealed: every record up to seq is in files no append touches again
        assert seq <= committer.synced_seq
        assert log.last_seq == seq or (tmp_path / "log" / segment_name(seq + 1)).exists()
        await trio.sleep(0.001)  # built off the committer's way: appends go on meanwhile
        state = state_from_files(tmp_path, seq)
        assert state == list(range(seq))
        taken.append(seq)
        await trio.to_thread.run_sync(log.write_snapshot_file, seq, orjson.dumps(state))

    committer = Committer(log, snapshot=snapshot)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(400):
            seq = committer.append({"i": i, "pad": "x" * 40})
            if i % 9 == 0:
                await committer.wait_synced(seq)
                await settled(committer)
        await committer.wait_synced(400)
        await settled(committer)
        committer.close()
    log.close()
    assert committer.snapshots >= 3 and len(taken) == committer.snapshots
    assert taken == sorted(taken)
    snap, got = replay(tmp_path)
    assert snap is not None
    restored = orjson.loads(snap) + [r["i"] for _, r in got]
    assert restored == list(range(400))
    assert len(list((tmp_path / "log").glob("*.seg"))) <= 4


async def test_failed_snapshot_is_retried_later(tmp_path: Path) -> None:
    disk = Disk()
    log = open_log(tmp_path, disk, segment_max_bytes=500)
    calls: list[int] = []

    async def snapshot(seq: int) -> None:
        calls.append(seq)
        if len(calls) == 1:
            disk.fail_next = errno.ENOSPC  # the snapshot write hits a full disk
        payload = orjson.dumps(state_from_files(tmp_path, seq))
        await trio.to_thread.run_sync(log.write_snapshot_file, seq, payload)

    committer = Committer(log, snapshot=snapshot)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(40):
            await committer.append_and_wait([{"i": i, "pad": "y" * 30}])
            await settled(committer)  # the injected failure must hit the snapshot
        committer.close()
    log.close()
    assert committer.snapshots >= 1 and len(calls) == committer.snapshots + 1  # 1st failed
    assert disk.fail_next is None  # the failure was really injected
    snap, got = replay(tmp_path)
    assert orjson.loads(snap) + [r["i"] for _, r in got] == list(range(40))


async def test_a_slow_write_is_said_in_the_log(tmp_path: Path, monkeypatch, caplog) -> None:
    """A stalled disk stalls every answer that waits for the log: the operator reads why."""
    monkeypatch.setattr("appliance.store.committer.SLOW_WRITE_SECONDS", 0.2)
    disk = Disk()
    log = open_log(tmp_path, disk)
    committer = Committer(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        assert await committer.append_and_wait([{"n": "fast"}]) == 1
        assert "took" not in caplog.text
        disk.hold = True
        nursery.start_soon(committer.append_and_wait, [{"n": "slow"}, {"n": "er"}])
        await disk.wait_entered()
        await trio.sleep(0.3)  # the disk holds the write this long
        disk.release.set()
        while committer.synced_seq < 3:
            await trio.sleep(0.01)
        committer.close()
    log.close()
    slow = [r for r in caplog.records if "took" in r.getMessage()]
    assert len(slow) == 1 and slow[0].levelname == "WARNING"
    assert "2 records (seq 2..3" in slow[0].getMessage()
