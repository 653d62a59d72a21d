"""Storage faults against the real server process (issue 7): the CI slice of
``python -m tests.campaigns.storage`` (same code, fewer cases).

Each test damages a copy of a state directory that real traffic produced, starts the real
server on it and checks what an operator would: torn tails are cut and reported and lose
nothing acknowledged; a flipped bit in the middle of the log or in a snapshot stops the start
with the file, the offset and the advice to use ``--recover``, which then keeps exactly the
good records (or, for a snapshot, everything); a full disk and a read-only state directory
refuse writes with a 503 and a JSON error while reads go on. The disk cases mount file
systems and are skipped when that is not permitted.
"""

from __future__ import annotations

import os
import random
import re
import threading
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from appliance.store.committer import Committer
from appliance.store.log import EventLog
from appliance.store.replay import read_upto
from tests.campaigns import storage
from tests.campaigns.storage import History, Tally


def assert_clean(tally: Tally) -> None:
    assert tally.cases, "no case ran"
    assert not tally.failures, "\n\n".join(tally.failures)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """A stopped server's state: identity changes, a job a node ran with output, failed jobs,
    and last a job creation (its job_created + start step are the last batch)."""
    workdir = tmp_path_factory.mktemp("history")
    built = storage.build_history(workdir, last="job")
    storage.full_view(built, workdir)
    return built


@pytest.fixture(scope="module")
def snapshot_history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """The same kind of state with 4 KiB segments: two snapshots and the segments after them."""
    workdir = tmp_path_factory.mktemp("snaphistory")
    built = storage.build_history(workdir, snapshots_every=4096)
    storage.full_view(built, workdir)
    return built


# ---- torn tails ------------------------------------------------------------------------------


def test_torn_tail_at_sampled_offsets_of_the_last_record(history: History, tmp_path: Path):
    """The log cut inside its last record (at the first byte, around the header's end, in the
    middle and at the last byte) and just before it: the server starts, reports the cut, and serves exactly the state
    of the log without that record (every job acknowledged before it included)."""
    tally = Tally("torn tail")
    storage.check_torn_tails(history, tmp_path, every=False, tally=tally)
    assert_clean(tally)
    assert tally.cases == len(storage.torn_tail_offsets(100, every=False))


def test_job_whose_creation_batch_was_torn_is_crashed_not_left_new(
    history: History, tmp_path: Path
):
    """Regression: a crash in the middle of the [job_created, start step] write left a job that
    no client was told about in status "new" forever after the restart, holding its nodes.
    It is now marked crashed at start."""
    segment = history.last_segment()
    records = storage.read_records(segment)
    created, step = records[-2], records[-1]
    assert created.record["type"] == "job_created" and step.record["type"] == "job_step"
    job_id = created.record["job"]["id"]
    out = storage.start_copy(
        history,
        tmp_path,
        "torn-creation",
        lambda state: storage.truncate(state / "log" / segment.name, step.start + 3),
    )
    assert out.started, out.log
    assert out.view is not None
    job = out.view[storage.ORG]["jobs"][job_id]
    assert job["status"] == "crashed", job
    # the job everyone was told about before it is untouched
    earlier = history.full[storage.ORG]["jobs"]
    for other, detail in out.view[storage.ORG]["jobs"].items():
        if other != job_id:
            assert detail == earlier[other]


# ---- flipped bits in the log -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["segment-magic", "segment-version", "record-length", "record-payload"]
)
def test_flipped_bit_in_the_log(history: History, tmp_path: Path, kind: str):
    """A flipped bit before the last record: refused (exit 1) naming the file, the offset and
    --recover; with --recover exactly the records before the damage are served and the log
    says what was dropped and where it is kept.

    Regressions: ``segment-magic``: --recover used to move the whole segment aside (losing
    every record, all intact) instead of rewriting the damaged header; ``segment-version``:
    the refusal advised --recover, which refuses that too; ``record-*``: --recover did not
    say how much it dropped nor where the cut bytes went."""
    flip = storage.log_flip(history, random.Random(f"{kind}-1"), kind)
    tally = Tally(f"log flip {kind}")
    storage.check_log_flips(history, tmp_path, [flip], tally)
    assert_clean(tally)


# ---- flipped bits in a snapshot --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["snapshot-payload", "snapshot-version", "older-snapshot"])
def test_flipped_bit_in_a_snapshot(snapshot_history: History, tmp_path: Path, kind: str):
    """A damaged newest snapshot: refused naming the file; --recover falls back to the older
    snapshot and the log after it and loses nothing. A damaged older snapshot is not read.
    Regression (``snapshot-version``): the refusal no longer advises a useless --recover."""
    flip = storage.snapshot_flip(snapshot_history, random.Random(f"{kind}-1"), kind)
    tally = Tally(f"snapshot flip {kind}")
    storage.check_snapshot_flips(snapshot_history, tmp_path, [flip], tally)
    assert_clean(tally)


# ---- full and read-only disks ----------------------------------------------------------------


def mounts_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")


def test_full_disk_refuses_writes_with_503_keeps_reads_and_recovers_without_restart(
    tmp_path: Path,
):
    """A tmpfs state dir filled to the last page: job creation, client/user/group/org creation
    and a node's config fetch (a new session key) get 503 with a JSON error; reads and the
    node protocol go on; a job acknowledged before finishes meanwhile; once the filler is
    deleted the same writes succeed without a restart, and after a restart everything
    acknowledged is there and the log opens without a cut."""
    mounts_or_skip()
    try:
        facts = storage.run_full_disk(tmp_path, abort=False)
    except storage.MountUnavailable as exc:
        pytest.skip(str(exc))
    assert set(facts["errors"]) == {"job", "client", "user", "group", "org", "config"}
    for error in facts["errors"].values():
        assert "No space left on device" in error


def test_read_only_state_dir_at_start_is_a_clear_error(tmp_path: Path):
    """An existing state and a first start on a read-only file system: exit status 1 and one
    line naming the directory and the cause, no traceback."""
    mounts_or_skip()
    try:
        lines = storage.run_read_only_at_start(tmp_path)
    except storage.MountUnavailable as exc:
        pytest.skip(str(exc))
    assert set(lines) == {"existing", "first start"}


def test_state_dir_going_read_only_while_running_refuses_writes_and_keeps_reads(tmp_path: Path):
    """ext4 with errors=remount-ro turned read-only under the running server (the kernel's
    answer to a disk error; a plain ``mount -o remount,ro`` is refused while the log is open
    for writing): every write kind gets 503 naming the cause, reads go on, the server stops
    cleanly; after fsck and a restart everything acknowledged is there.

    Regression: after the first failure every later 503 said only "cannot cut a failed write
    off the log"; it now names the cause (Read-only file system)."""
    mounts_or_skip()
    try:
        facts = storage.run_read_only_while_running(tmp_path)
    except storage.MountUnavailable as exc:
        pytest.skip(str(exc))
    assert set(facts["errors"]) == {"job", "client", "user", "group", "org", "config"}
    for error in facts["errors"].values():
        assert re.search("Read-only file system", error), facts["errors"]
    assert facts["stop_status"] == 0


# ---- in process: the committer's snapshot (found by the snapshot fallback campaign) -----------


class _GatedDisk:
    """A write seam that holds one write until released (a slow fdatasync in real life)."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, fd: int, data: memoryview) -> int:
        if self.hold:
            self.hold = False
            self.entered.set()
            if not self.release.wait(10):
                raise TimeoutError("the test never released the write")
        return os.write(fd, data)


async def test_snapshot_never_claims_a_durable_record_it_does_not_contain(tmp_path: Path):
    """Regression: a REST write (``append_and_wait``) queued while the committer wrote the
    batch that filled the segment was covered by the snapshot's seq but missing from its
    payload (durable records are applied only once written), so a restart from that snapshot
    lost an acknowledged job. Found as "the fallback lost data" by the snapshot flip
    campaign (the older snapshot lacked a job). Snapshots are built from the sealed files
    now (``read_upto``), never from the live state: the same race must still lose nothing."""
    disk = _GatedDisk()
    log = EventLog(tmp_path, segment_max_bytes=4096, write=disk.write)
    _, records = log.open()
    assert list(records) == []
    state: list[int] = []  # the "state": the seqs whose effect was applied

    async def snapshot(seq: int) -> None:
        snap, records = read_upto(tmp_path / "log", seq)
        older = orjson.loads(snap[0]) if snap is not None else []
        payload = orjson.dumps(older + [s for s, _, _ in records])
        await trio.to_thread.run_sync(log.write_snapshot_file, seq, payload)

    committer = Committer(log, snapshot=snapshot)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        disk.hold = True
        state.append(1)  # a job step: applied first, logged without waiting
        committer.append({"pad": "x" * 5000})  # fills the segment
        assert await trio.to_thread.run_sync(disk.entered.wait, 10)
        done = trio.Event()

        async def rest_write() -> None:  # a POST /jobs arriving during that write
            seq = await committer.append_and_wait([{"job": 2}], lambda: state.append(2))
            assert seq == 2
            done.set()

        nursery.start_soon(rest_write)
        await trio.testing.wait_all_tasks_blocked()
        disk.release.set()
        with trio.fail_after(10):
            await done.wait()
            while committer.snapshots == 0:
                await trio.sleep(0.01)
        committer.close()
    log.close()
    assert committer.snapshots == 1
    reopened = EventLog(tmp_path)
    snapshot, rest = reopened.open()
    assert snapshot is not None
    restored = orjson.loads(snapshot[0]) + [seq for seq, _, _ in rest]
    reopened.close()
    assert sorted(restored) == [1, 2], (reopened.report.snapshot_seq, restored)


def test_log_cut_right_after_server_init_still_has_a_superuser(history: History, tmp_path: Path):
    """Regression: a first start torn after its server_init record (or ``--recover`` cutting
    there, as the flip campaign did) left a server nobody could authenticate to: the superuser
    record was gone and only a missing server_init re-created it. It is re-created now."""
    segment = history.last_segment()
    records = storage.read_records(segment)
    assert records[0].record["type"] == "server_init"
    assert records[1].record["type"] == "user_created"
    out = storage.start_copy(
        history,
        tmp_path,
        "torn-first-start",
        lambda state: storage.truncate(state / "log" / segment.name, records[1].start + 5),
    )
    assert out.started, out.log
    assert out.view == {"orgs": [], "users": ["pivotal"]}, (out.view, out.log)
    assert "created it again" in out.log
