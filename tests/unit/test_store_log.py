"""The event log on disk: round trips, torn tails, corruption, full disks."""

from __future__ import annotations

import errno
import os
import struct
import tempfile
import zlib
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.migrations import FORMAT
from appliance.store.errors import LogCorruption, StorageError, UnsupportedFormat
from appliance.store.log import EventLog
from appliance.store.replay import read_upto

HEADER = 12
REC = 16


def payload(i: int, size: int = 40) -> bytes:
    return (f"record-{i}-".encode() * size)[: size + i % 7]


def open_log(
    directory: Path, *, recover: bool = False, **kw
) -> tuple[EventLog, bytes | None, list]:
    log = EventLog(directory, **kw)
    snap, it = log.open(recover=recover)
    records = [(seq, payload) for seq, payload, _ in it]
    return log, (snap[0] if snap else None), records


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "log").glob("*.seg"))


def snapshots(directory: Path) -> list[Path]:
    return sorted((directory / "log").glob("snapshot-*.snap"))


def write_records(directory: Path, n: int, *, batch: int = 1) -> list[bytes]:
    log, _, _ = open_log(directory)
    out = [payload(i) for i in range(1, n + 1)]
    for start in range(0, n, batch):
        log.append([(i + 1, out[i]) for i in range(start, min(start + batch, n))])
    log.close()
    return out


def offsets(payloads: list[bytes]) -> list[int]:
    """Byte offset of each record in a single segment."""
    out, off = [], HEADER
    for p in payloads:
        out.append(off)
        off += REC + len(p)
    out.append(off)
    return out


def raw_record(seq: int, data: bytes) -> bytes:
    crc = zlib.crc32(struct.pack("<Q", seq) + data)
    return struct.pack("<IIQ", len(data), crc, seq) + data


def flip(path: Path, offset: int, bit: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


# -- round trips -------------------------------------------------------------------------------


def test_fresh_open_creates_private_directory(tmp_path: Path) -> None:
    log, snap, recs = open_log(tmp_path / "state")
    assert (snap, recs) == (None, [])
    assert log.ready and log.last_seq == 0
    assert (tmp_path / "state" / "log").stat().st_mode & 0o777 == 0o700
    assert [p.name for p in segments(tmp_path / "state")] == [f"{1:020d}.seg"]
    header = b"PUSHYLOG" + struct.pack("<HH", FORMAT, 0)
    assert segments(tmp_path / "state")[0].read_bytes() == header
    log.close()


def test_round_trip_single_segment(tmp_path: Path) -> None:
    written = write_records(tmp_path, 30, batch=4)
    log, snap, recs = open_log(tmp_path)
    assert snap is None
    assert recs == [(i + 1, p) for i, p in enumerate(written)]
    assert log.report.records_replayed == 30 and log.report.last_seq == 30
    assert log.report.truncated_bytes == 0 and not log.report.recovered_from_corruption
    log.close()


def test_round_trip_across_segments_and_snapshots(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path, segment_max_bytes=600)
    taken = []
    for seq in range(1, 121):
        log.append([(seq, payload(seq))])
        if log.needs_snapshot():
            log.write_snapshot(seq, f"state@{seq}".encode())
            taken.append(seq)
    log.close()
    assert len(taken) >= 4
    # Only the newest snapshot and its predecessor (the fallback) survive, and the
    # segments the fallback needs.
    assert [int(p.name[9:29]) for p in snapshots(tmp_path)] == taken[-2:]
    assert int(segments(tmp_path)[0].stem) == taken[-2] + 1

    log, snap, recs = open_log(tmp_path, segment_max_bytes=600)
    last = taken[-1]
    assert snap == f"state@{last}".encode()
    assert recs == [(s, payload(s)) for s in range(last + 1, 121)]
    assert log.report.snapshot_seq == last and log.last_seq == 120
    log.append([(121, b"after reopen")])
    log.close()
    log, snap, recs = open_log(tmp_path, segment_max_bytes=600)
    assert recs[-1] == (121, b"after reopen") and recs[0][0] == last + 1
    log.close()


def test_first_snapshot_keeps_history(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(1, b"a"), (2, b"b")])
    log.write_snapshot(2, b"S2")
    log.append([(3, b"c")])
    log.close()
    # No older snapshot: segment 1 stays as the fallback (replay from seq 1).
    assert [int(p.stem) for p in segments(tmp_path)] == [1, 3]
    log, snap, recs = open_log(tmp_path)
    assert snap == b"S2" and recs == [(3, b"c")]
    log.close()


def test_snapshot_without_new_records_reuses_empty_segment(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(1, b"a")])
    log.write_snapshot(1, b"one")
    log.write_snapshot(1, b"one again")
    log.close()
    assert [int(p.stem) for p in segments(tmp_path)] == [1, 2]
    log, snap, recs = open_log(tmp_path)
    assert snap == b"one again" and recs == [] and log.last_seq == 1
    log.close()


def test_crash_between_snapshot_and_new_segment(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(s, payload(s)) for s in range(1, 6)])
    log.write_snapshot(5, b"five")
    log.close()
    (tmp_path / "log" / f"{6:020d}.seg").unlink()  # as if the crash came before it
    log, snap, recs = open_log(tmp_path)
    assert snap == b"five" and recs == [] and log.last_seq == 5
    log.append([(6, b"six")])
    log.close()
    log, snap, recs = open_log(tmp_path)
    assert snap == b"five" and recs == [(6, b"six")]
    log.close()


def test_snapshot_ahead_of_a_cut_log_starts_a_fresh_segment(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    written = [payload(s) for s in range(1, 6)]
    log.append([(s, written[s - 1]) for s in range(1, 6)])
    log.write_snapshot(5, b"five")
    log.close()
    (tmp_path / "log" / f"{6:020d}.seg").unlink()
    os.truncate(segments(tmp_path)[0], offsets(written)[3] + 2)  # records 4-5 lost, not state
    log, snap, recs = open_log(tmp_path)
    assert snap == b"five" and recs == [] and log.last_seq == 5
    log.append([(6, b"six")])  # must not land after record 3 in segment 1
    log.close()
    assert [int(p.stem) for p in segments(tmp_path)] == [1, 6]
    log, snap, recs = open_log(tmp_path)
    assert snap == b"five" and recs == [(6, b"six")]
    log.close()


def test_report_is_complete_only_after_the_iterator(tmp_path: Path) -> None:
    write_records(tmp_path, 5)
    log = EventLog(tmp_path)
    _, it = log.open()
    first = next(it)
    assert first[0] == 1 and not log.ready
    with pytest.raises(RuntimeError):
        log.append([(6, b"x")])
    rest = list(it)
    assert len(rest) == 4 and log.ready and log.report.records_replayed == 5
    log.close()


def test_append_checks_seq(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    with pytest.raises(ValueError):
        log.append([(2, b"x")])
    with pytest.raises(ValueError):
        log.append([(1, b"x"), (3, b"y")])
    with pytest.raises(ValueError):
        log.write_snapshot(7, b"")
    log.append([(1, b"x")])
    assert log.last_seq == 1
    log.close()


def test_second_opener_is_refused(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    with pytest.raises(StorageError) as info:
        open_log(tmp_path)
    assert info.value.errno == errno.EBUSY
    log.close()
    open_log(tmp_path)[0].close()


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=12),  # append a batch of that size
            st.just("snapshot"),
            st.just("reopen"),
        ),
        max_size=40,
    )
)
def test_random_histories_replay_to_the_same_state(ops: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        history: list[bytes] = []
        log, _, _ = open_log(directory, segment_max_bytes=300)
        for op in ops:
            if op == "snapshot":
                log.write_snapshot(len(history), orjson.dumps([h.decode() for h in history]))
            elif op == "reopen":
                log.close()
                log, snap, recs = open_log(directory, segment_max_bytes=300)
                state = [s.encode() for s in orjson.loads(snap)] if snap else []
                assert state + [p for _, p in recs] == history
            else:
                start = len(history) + 1
                batch = [(s, payload(s, 10)) for s in range(start, start + op)]
                log.append(batch)
                history.extend(p for _, p in batch)
        log.close()
        log, snap, recs = open_log(directory, segment_max_bytes=300)
        state = [s.encode() for s in orjson.loads(snap)] if snap else []
        assert state + [p for _, p in recs] == history
        assert [s for s, _ in recs] == list(range(len(state) + 1, len(history) + 1))
        log.close()


# -- torn tails --------------------------------------------------------------------------------


def test_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = write_records(source, 5)
    full = segments(source)[0].read_bytes()
    offs = offsets(written)
    last_start, end = offs[4], offs[5]
    assert end == len(full)
    for cut in range(last_start, end):
        directory = tmp_path / f"cut{cut}"
        (directory / "log").mkdir(parents=True)
        seg = directory / "log" / f"{1:020d}.seg"
        seg.write_bytes(full[:cut])
        log, snap, recs = open_log(directory)
        assert recs == [(i + 1, p) for i, p in enumerate(written[:4])], cut
        assert log.report.truncated_bytes == cut - last_start
        if cut > last_start:
            assert log.report.truncated_file == str(seg)
        assert not log.report.recovered_from_corruption
        assert seg.stat().st_size == last_start
        log.append([(5, b"replacement")])
        log.close()
        log, _, recs = open_log(directory)
        assert recs[-1] == (5, b"replacement") and len(recs) == 5
        assert log.report.truncated_bytes == 0
        log.close()


def test_zero_filled_tail_is_cut(tmp_path: Path) -> None:
    write_records(tmp_path, 3)
    seg = segments(tmp_path)[0]
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\0" * 5000)
    log, _, recs = open_log(tmp_path)
    assert len(recs) == 3 and log.report.truncated_bytes == 5000
    assert seg.stat().st_size == size
    log.close()


def test_torn_tail_of_a_multi_record_batch(tmp_path: Path) -> None:
    written = write_records(tmp_path, 6, batch=3)
    seg = segments(tmp_path)[0]
    offs = offsets(written)
    os.truncate(seg, offs[4] + 3)  # batch 2 half on disk: record 4 whole, record 5 torn
    log, _, recs = open_log(tmp_path)
    assert [s for s, _ in recs] == [1, 2, 3, 4]
    log.close()


# -- corruption in the middle -----------------------------------------------------------------


def test_every_byte_of_a_middle_record_damaged_is_corruption(tmp_path: Path) -> None:
    source = tmp_path / "source"
    written = write_records(source, 9)
    full = segments(source)[0].read_bytes()
    offs = offsets(written)
    start, end = offs[4], offs[5]  # record 5
    for pos in range(start, end):
        directory = tmp_path / f"flip{pos}"
        (directory / "log").mkdir(parents=True)
        seg = directory / "log" / f"{1:020d}.seg"
        data = bytearray(full)
        data[pos] ^= 0x04
        seg.write_bytes(bytes(data))
        log = EventLog(directory)
        _, it = log.open()
        got = []
        with pytest.raises(LogCorruption) as info:
            for rec in it:
                got.append(rec)
        assert got == [(i + 1, p, FORMAT) for i, p in enumerate(written[:4])], pos
        assert info.value.offset == start and info.value.seq == 5
        assert str(seg) in str(info.value) and f"offset {start}" in str(info.value)
        assert seg.read_bytes() == bytes(data)  # nothing was cut
        log.close()


def test_recover_cuts_at_the_bad_record(tmp_path: Path) -> None:
    written = write_records(tmp_path, 9)
    seg = segments(tmp_path)[0]
    offs = offsets(written)
    flip(seg, offs[4] + REC + 3)
    size = seg.stat().st_size
    log, _, recs = open_log(tmp_path, recover=True)
    assert recs == [(i + 1, p) for i, p in enumerate(written[:4])]
    report = log.report
    assert report.recovered_from_corruption and report.last_seq == 4
    assert report.truncated_file == str(seg) and report.truncated_bytes == size - offs[4]
    assert seg.stat().st_size == offs[4]
    side = seg.with_name(f"{seg.name}.corrupt-{offs[4]}")
    assert side.stat().st_size == size - offs[4]  # the cut bytes are kept for inspection
    log.append([(5, b"new five")])
    log.close()
    log, _, recs = open_log(tmp_path)
    assert [s for s, _ in recs] == [1, 2, 3, 4, 5] and recs[-1][1] == b"new five"
    log.close()


def test_damage_in_a_non_last_segment(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(s, payload(s)) for s in range(1, 4)])
    log.write_snapshot(3, b"S3")  # first snapshot: segment 1 stays as the fallback
    log.append([(s, payload(s)) for s in range(4, 7)])
    log.close()
    first = segments(tmp_path)[0]
    # A cut at the end of a non-last segment is not a torn tail: records after it exist.
    os.truncate(first, first.stat().st_size - 5)
    snapshots(tmp_path)[0].write_bytes(b"junk")  # force replay from segment 1
    with pytest.raises(LogCorruption):
        open_log(tmp_path, recover=False)
    log, snap, recs = open_log(tmp_path, recover=True)
    assert snap is None and [s for s, _ in recs] == [1, 2]
    assert log.report.recovered_from_corruption and log.last_seq == 2
    assert [int(p.stem) for p in segments(tmp_path)] == [1]
    assert (tmp_path / "log" / f"{4:020d}.seg.corrupt").exists()
    log.append([(3, b"three")])
    log.close()
    log, snap, recs = open_log(tmp_path)
    assert [s for s, _ in recs] == [1, 2, 3]
    log.close()


def _two_snapshots(directory: Path) -> None:
    log, _, _ = open_log(directory)
    log.append([(s, payload(s)) for s in range(1, 6)])
    log.write_snapshot(5, b"S5")
    log.append([(s, payload(s)) for s in range(6, 11)])
    log.write_snapshot(10, b"S10")
    log.append([(s, payload(s)) for s in range(11, 14)])
    log.close()


def test_corrupt_snapshot_refuses_and_recover_falls_back(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)
    newest = tmp_path / "log" / f"snapshot-{10:020d}.snap"
    flip(newest, 27)
    with pytest.raises(LogCorruption) as info:
        open_log(tmp_path)
    assert newest.name in str(info.value)
    log, snap, recs = open_log(tmp_path, recover=True)
    # The fallback snapshot and its segments give back every record: nothing is lost.
    assert snap == b"S5" and [s for s, _ in recs] == list(range(6, 14))
    assert log.report.snapshot_seq == 5 and log.report.recovered_from_corruption
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    log.write_snapshot(13, b"S13")
    log.close()
    log, snap, recs = open_log(tmp_path)
    assert snap == b"S13" and recs == []
    log.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "seq"])
def test_snapshot_damage_kinds(tmp_path: Path, damage: str) -> None:
    _two_snapshots(tmp_path)
    newest = tmp_path / "log" / f"snapshot-{10:020d}.snap"
    if damage == "flip":
        flip(newest, len(newest.read_bytes()) - 1)
    elif damage == "truncate":
        os.truncate(newest, 20)
    elif damage == "magic":
        flip(newest, 0)
    else:
        flip(newest, 10)  # header seq no longer matches the file name
    with pytest.raises(LogCorruption):
        open_log(tmp_path)
    log, snap, _ = open_log(tmp_path, recover=True)
    assert snap == b"S5"
    log.close()


def test_only_snapshot_corrupt_replays_from_seq_one(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(s, payload(s)) for s in range(1, 4)])
    log.write_snapshot(3, b"S3")
    log.append([(4, b"four")])
    log.close()
    flip(snapshots(tmp_path)[0], 27)
    with pytest.raises(LogCorruption):
        open_log(tmp_path)
    log, snap, recs = open_log(tmp_path, recover=True)
    assert snap is None and [s for s, _ in recs] == [1, 2, 3, 4]
    assert log.report.recovered_from_corruption and log.report.snapshot_seq is None
    log.close()


def test_no_usable_snapshot_and_history_gone_refuses_even_to_recover(tmp_path: Path) -> None:
    _two_snapshots(tmp_path)
    for snap_path in snapshots(tmp_path):
        flip(snap_path, 27)
    for recover in (False, True):
        with pytest.raises(LogCorruption):
            open_log(tmp_path, recover=recover)


def test_garbage_segment_header(tmp_path: Path) -> None:
    write_records(tmp_path, 3)
    seg = segments(tmp_path)[0]
    data = seg.read_bytes()
    seg.write_bytes(b"NOTALOG!" + data[8:])
    with pytest.raises(LogCorruption, match="magic"):
        open_log(tmp_path)
    assert seg.read_bytes()[:8] == b"NOTALOG!"  # untouched


def test_newer_format_version_is_never_recovered_away(tmp_path: Path) -> None:
    write_records(tmp_path, 3)
    seg = segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    data[8] = FORMAT + 1
    seg.write_bytes(bytes(data))
    for recover in (False, True):
        with pytest.raises(UnsupportedFormat, match=f"written in format {FORMAT + 1}, by a newer"):
            log = EventLog(tmp_path)
            try:
                list(log.open(recover=recover)[1])
            finally:
                log.close()
    assert seg.exists()


def _handmade(directory: Path, seqs: list[int], name: int = 1) -> Path:
    (directory / "log").mkdir(parents=True, exist_ok=True)
    seg = directory / "log" / f"{name:020d}.seg"
    seg.write_bytes(b"PUSHYLOG\x01\x00\x00\x00" + b"".join(raw_record(s, b"x%d" % s) for s in seqs))
    return seg


@pytest.mark.parametrize(
    "seqs, bad_seq",
    [([1, 2, 4, 5], 3), ([1, 2, 2, 3], 3), ([2, 3], 1), ([1, 2, 3, 7], 4)],
)
def test_seq_gap_or_duplicate_is_corruption(tmp_path: Path, seqs: list[int], bad_seq: int) -> None:
    seg = _handmade(tmp_path, seqs)
    with pytest.raises(LogCorruption, match=f"expected {bad_seq}"):
        open_log(tmp_path)
    log, _, recs = open_log(tmp_path, recover=True)
    assert [s for s, _ in recs] == list(range(1, bad_seq))
    assert log.last_seq == bad_seq - 1 and log.report.recovered_from_corruption
    assert seg.stat().st_size == HEADER + sum(REC + len(b"x%d" % s) for s in range(1, bad_seq))
    log.close()


def test_seq_gap_between_segments(tmp_path: Path) -> None:
    _handmade(tmp_path, [1, 2, 3], name=1)
    later = _handmade(tmp_path, [5, 6], name=5)
    with pytest.raises(LogCorruption, match="expected 4"):
        open_log(tmp_path)
    log, _, recs = open_log(tmp_path, recover=True)
    assert [s for s, _ in recs] == [1, 2, 3] and not later.exists()
    log.close()


def test_missing_first_segment_without_snapshot(tmp_path: Path) -> None:
    _handmade(tmp_path, [4, 5], name=4)
    with pytest.raises(LogCorruption, match="not 1"):
        open_log(tmp_path, recover=True)


# -- failing writes ----------------------------------------------------------------------------


class FlakyWrite:
    """os.write that fails with `code` while `failing`, optionally after writing a part."""

    def __init__(self, code: int = errno.ENOSPC, partial: int = 0) -> None:
        self.code = code
        self.partial = partial
        self.failing = False
        self.half_written = False
        self.calls = 0

    def __call__(self, fd: int, data) -> int:
        self.calls += 1
        if not self.failing:
            return os.write(fd, data)
        if self.partial and not self.half_written:
            self.half_written = True  # the next call of this append fails
            return os.write(fd, bytes(data)[: min(self.partial, len(data) - 1)])
        self.half_written = False
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
@pytest.mark.parametrize("partial", [0, 7, 30])
def test_failed_append_leaves_no_half_record(tmp_path: Path, code: int, partial: int) -> None:
    flaky = FlakyWrite(code, partial)
    log, _, _ = open_log(tmp_path, write=flaky)
    log.append([(1, b"one"), (2, b"two")])
    size = log.segment_bytes()
    flaky.failing = True
    with pytest.raises(StorageError) as info:
        log.append([(3, b"three" * 10), (4, b"four")])
    assert info.value.errno == code
    assert segments(tmp_path)[0].stat().st_size == size and log.last_seq == 2
    with pytest.raises(StorageError):  # still failing: still nothing half-written
        log.append([(3, b"again")])
    assert segments(tmp_path)[0].stat().st_size == size
    flaky.failing = False  # space came back
    log.append([(3, b"three"), (4, b"four")])
    log.close()
    log, _, recs = open_log(tmp_path)
    assert recs == [(1, b"one"), (2, b"two"), (3, b"three"), (4, b"four")]
    assert log.report.truncated_bytes == 0
    log.close()


def test_failed_fdatasync_cuts_the_batch(tmp_path: Path) -> None:
    state = {"fail": False}

    def fdatasync(fd: int) -> None:
        if state["fail"]:
            raise OSError(errno.EIO, "I/O error")
        os.fdatasync(fd)

    log, _, _ = open_log(tmp_path, fdatasync=fdatasync)
    log.append([(1, b"one")])
    size = log.segment_bytes()
    state["fail"] = True
    with pytest.raises(StorageError) as info:
        log.append([(2, b"two")])
    assert info.value.errno == errno.EIO
    assert segments(tmp_path)[0].stat().st_size == size
    state["fail"] = False
    log.append([(2, b"deux")])
    log.close()
    log, _, recs = open_log(tmp_path)
    assert recs == [(1, b"one"), (2, b"deux")]
    log.close()


def test_failed_rollback_blocks_appends_until_it_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = FlakyWrite(errno.ENOSPC, partial=9)
    log, _, _ = open_log(tmp_path, write=flaky)
    log.append([(1, b"one")])
    size = log.segment_bytes()
    real_ftruncate = os.ftruncate

    def broken_ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "ftruncate", broken_ftruncate)
    flaky.failing = True
    with pytest.raises(StorageError):
        log.append([(2, b"two")])
    seg = segments(tmp_path)[0]
    assert seg.stat().st_size == size + 9  # the half record is still there...
    flaky.failing = False
    with pytest.raises(StorageError):  # ...so nothing may be appended after it
        log.append([(2, b"two")])
    assert seg.stat().st_size == size + 9
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    log.append([(2, b"two")])
    log.close()
    log, _, recs = open_log(tmp_path)
    assert recs == [(1, b"one"), (2, b"two")] and log.report.truncated_bytes == 0
    log.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_snapshot_changes_nothing(tmp_path: Path, code: int) -> None:
    flaky = FlakyWrite(code)
    log, _, _ = open_log(tmp_path, write=flaky)
    log.append([(1, b"one")])
    flaky.failing = True
    with pytest.raises(StorageError) as info:
        log.write_snapshot(1, b"state")
    assert info.value.errno == code
    assert snapshots(tmp_path) == [] and list((tmp_path / "log").glob("*.tmp")) == []
    flaky.failing = False
    log.append([(2, b"two")])
    log.write_snapshot(2, b"state2")
    log.close()
    log, snap, recs = open_log(tmp_path)
    assert snap == b"state2" and recs == []
    log.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(1, b"one")])
    os.chmod(tmp_path / "log", 0o500)
    try:
        with pytest.raises(StorageError) as info:
            log.write_snapshot(1, b"state")
        assert info.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
    finally:
        os.chmod(tmp_path / "log", 0o700)
    log.close()


def test_unwritable_state_directory_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError):
        EventLog(blocker / "state").open()


# -- read_upto: a snapshot builder reading the files beside a writer -------------------------


def test_seal_then_read_upto_gives_the_state_at_the_sealed_seq(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path, segment_max_bytes=2**20)
    log.append([(s, payload(s)) for s in range(1, 6)])
    log.write_snapshot(5, b"S5")
    log.append([(s, payload(s)) for s in range(6, 11)])
    assert log.seal() == 10
    assert log.seal() == 10  # the new segment is still empty: no other one
    log.append([(s, payload(s)) for s in range(11, 14)])  # the writer goes on
    snap, records = read_upto(tmp_path / "log", 10)
    assert snap == (b"S5", FORMAT)
    assert [(s, p) for s, p, _ in records] == [(s, payload(s)) for s in range(6, 11)]
    log.write_snapshot(10, b"S10")  # sealed: allowed although records came after it
    log.close()
    log, snap, recs = open_log(tmp_path)
    assert snap == b"S10" and [s for s, _ in recs] == [11, 12, 13]
    log.close()


def test_read_upto_touches_nothing_and_refuses_what_is_not_there(tmp_path: Path) -> None:
    log, _, _ = open_log(tmp_path)
    log.append([(s, payload(s)) for s in range(1, 4)])
    log.seal()
    log.append([(4, payload(4))])
    segment = segments(tmp_path)[-1]
    with open(segment, "ab") as f:
        f.write(b"\x07torn")  # a write in progress past the sealed seq
    size = segment.stat().st_size
    snap, records = read_upto(tmp_path / "log", 3)
    assert snap is None and [s for s, _, _ in records] == [1, 2, 3]
    assert segment.stat().st_size == size  # not cut: the writer owns it
    assert [s for s, _, _ in read_upto(tmp_path / "log", 4)[1]] == [1, 2, 3, 4]
    with pytest.raises(LogCorruption, match="partial record header"):
        list(read_upto(tmp_path / "log", 9)[1])  # not there: the torn bytes are in the way
    segment.write_bytes(segment.read_bytes()[:-5])
    with pytest.raises(LogCorruption, match="ends at seq 4"):
        list(read_upto(tmp_path / "log", 9)[1])
    with pytest.raises(ValueError, match="neither the last seq nor sealed"):
        log.write_snapshot(2, b"S2")
    log.close()
