"""Reading the log back at open: the newest usable snapshot, then every record after it.

Tells a torn tail (cut) from damage that would lose acknowledged data (raise, or cut with
``recover``), and reports what it found and did in an `OpenReport`.
"""

from __future__ import annotations

import logging
import mmap
import os
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core import migrations
from appliance.store.errors import LogCorruption, UnsupportedFormat, storage_error
from appliance.store.files import fsync_dir, truncate
from appliance.store.frames import (
    REC_HEADER,
    SEG_HEADER,
    SEGMENT_MAGIC,
    SNAP_HEADER,
    SNAPSHOT_MAGIC,
    find_frame,
    first_record_intact,
    list_segments,
    list_snapshots,
)

# the messages of opening are the event log's: one logger name for operators to follow
logger = logging.getLogger("appliance.store.log")


@dataclass
class OpenReport:
    """What `EventLog.open` found and did; complete once the replay iterator is exhausted."""

    snapshot_seq: int | None = None
    records_replayed: int = 0
    truncated_bytes: int = 0
    truncated_file: str | None = None
    segments: int = 0
    last_seq: int = 0
    formats: set[int] = field(default_factory=set)  # of the files replayed
    recovered_from_corruption: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class _Bad:
    """Where a segment stops being readable, and whether that is certainly corruption."""

    offset: int
    reason: str
    certain: bool  # True: corruption whatever follows; False: may be a torn tail
    header_only: bool = False  # the segment's magic is damaged, its records are intact


class Replay:
    """One open of the log directory ``path``: picks the base, yields records, cuts damage."""

    def __init__(self, path: Path, report: OpenReport) -> None:
        self.path = path
        self.report = report

    def choose_base(
        self, segments: list[tuple[int, Path]], recover: bool
    ) -> tuple[int, tuple[bytes, int] | None]:
        """Pick the newest usable snapshot; only `recover` may fall back past a bad one."""
        rejected: list[Path] = []
        for seq, path in reversed(list_snapshots(self.path)):
            try:
                payload = self._read_snapshot(path, seq)
                if segments and segments[0][0] > seq + 1:
                    raise LogCorruption(
                        f"segments after the snapshot are missing (first segment starts at "
                        f"seq {segments[0][0]})",
                        path=path,
                        seq=seq + 1,
                    )
            except UnsupportedFormat:
                raise
            except LogCorruption as exc:
                if not recover:
                    raise
                logger.error("event log: %s; falling back to an older state", exc)
                self.report.notes.append(str(exc))
                self.report.recovered_from_corruption = True
                rejected.append(path)
                continue
            self._set_aside(rejected)
            return seq, payload
        if segments and segments[0][0] != 1:
            raise LogCorruption(
                f"no usable snapshot and the oldest segment starts at seq {segments[0][0]}, "
                "not 1: the state before it is lost",
                path=segments[0][1],
                seq=1,
            )
        self._set_aside(rejected)
        return 0, None

    def _read_snapshot(self, path: Path, seq: int) -> tuple[bytes, int]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise storage_error(exc, "reading a snapshot", path) from exc
        if len(data) < SNAP_HEADER.size:
            raise LogCorruption("snapshot header is truncated", path=path, offset=0, seq=seq)
        magic, version, hseq, length, crc = SNAP_HEADER.unpack_from(data)
        if magic != SNAPSHOT_MAGIC:
            raise LogCorruption(f"bad snapshot magic {magic!r}", path=path, offset=0, seq=seq)
        if not migrations.readable(version):
            raise UnsupportedFormat(version, "the snapshot", path=path, seq=seq)
        if hseq != seq:
            raise LogCorruption(f"header says seq {hseq}, file name says {seq}", path=path)
        if length != len(data) - SNAP_HEADER.size:
            raise LogCorruption(
                f"snapshot length {length} but {len(data) - SNAP_HEADER.size} payload bytes",
                path=path,
                offset=SNAP_HEADER.size,
                seq=seq,
            )
        body = memoryview(data)[SNAP_HEADER.size :]
        if zlib.crc32(body, zlib.crc32(data[8:22])) != crc:
            raise LogCorruption("snapshot checksum mismatch", path=path, offset=0, seq=seq)
        self.report.formats.add(version)
        return bytes(body), version

    def records(
        self, segments: list[tuple[int, Path]], base: int, recover: bool
    ) -> Generator[tuple[int, bytes, int], None, tuple[int, tuple[int, Path] | None]]:
        """Yield (seq, payload, format) after ``base``; return (next seq, the segment appends
        may continue, or None)."""
        report = self.report
        start = 0
        for i, (first, _) in enumerate(segments):
            if first <= base + 1:
                start = i
        relevant = segments[start:]
        expect = relevant[0][0] if relevant else base + 1
        tail: tuple[int, Path] | None = None  # the segment appends may continue
        for idx, (first, path) in enumerate(relevant):
            is_last = idx == len(relevant) - 1
            if first != expect:
                problem = LogCorruption(
                    f"seq gap: segment starts at seq {first}, expected {expect}",
                    path=path,
                    offset=0,
                    seq=expect,
                )
                self._corrupt(problem, recover, None, 0, [p for _, p in relevant[idx:]])
                break
            scanner = self._scan_segment(path, expect, base, is_last)
            bad, expect = yield from scanner
            if bad is not None and bad.header_only and recover:
                self._repair_magic(path, bad.reason)
                bad, expect = yield from self._scan_segment(path, expect, base, is_last)
            if bad is None:
                tail = (first, path)
                continue
            if not bad.certain:
                size = path.stat().st_size
                side = self._cut(path, bad.offset, keep_required=False)
                logger.warning(
                    "event log: torn tail in %s at offset %d (%s); truncating %d bytes%s",
                    path,
                    bad.offset,
                    bad.reason,
                    size - bad.offset,
                    f" (kept in {side})" if side else "",
                )
                report.truncated_bytes += size - bad.offset
                report.truncated_file = str(path)
                tail = (first, path)
                break
            problem = LogCorruption(bad.reason, path=path, offset=bad.offset, seq=expect)
            later = [p for _, p in relevant[idx + 1 :]]
            if bad.offset < SEG_HEADER.size:
                self._corrupt(problem, recover, None, 0, [path, *later])
            else:
                self._corrupt(problem, recover, path, bad.offset, later)
                tail = (first, path)
            break
        return expect, tail

    def _scan_segment(
        self, path: Path, expect: int, base: int, is_last: bool
    ) -> Iterator[tuple[int, bytes, int]]:
        """Yield the valid records of one segment; return (problem or None, next seq)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(SEG_HEADER.size)
            if len(header) < SEG_HEADER.size:
                return _Bad(0, "segment header is truncated", True), expect
            magic, version, _reserved = SEG_HEADER.unpack(header)
            if magic != SEGMENT_MAGIC:
                if migrations.readable(version) and first_record_intact(f, size, expect):
                    # one damaged header in front of good records: --recover rewrites it
                    reason = f"bad segment magic {magic!r}; the records after it are intact"
                    return _Bad(0, reason, True, header_only=True), expect
                return _Bad(0, f"bad segment magic {magic!r}: not a pushy log", True), expect
            if not migrations.readable(version):
                raise UnsupportedFormat(version, "the log segment", path=path)
            self.report.formats.add(version)
            if size == SEG_HEADER.size:
                return None, expect
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mv = memoryview(mm)
        bad = None
        replayed = 0
        try:
            unpack = REC_HEADER.unpack_from
            crc32 = zlib.crc32
            head = REC_HEADER.size
            off = SEG_HEADER.size
            while off < size:
                if size - off < head:
                    bad = _Bad(off, "partial record header", False)
                    break
                length, crc, seq = unpack(mm, off)
                end = off + head + length
                if end > size:
                    bad = _Bad(off, f"record length {length} runs past the end of file", False)
                    break
                if crc32(mv[off + 8 : end]) != crc:
                    bad = _Bad(off, "record checksum mismatch", False)
                    break
                if seq != expect:
                    bad = _Bad(off, f"record has seq {seq}, expected {expect}", True)
                    break
                if seq > base:
                    replayed += 1
                    yield seq, mm[off + head : end], version
                expect += 1
                off = end
            if bad is not None and not bad.certain:
                if not is_last:
                    bad.certain = True
                else:
                    found = find_frame(mv, bad.offset + 1, size, expect - 1)
                    if found is not None:
                        bad.certain = True
                        bad.reason += f"; a valid record follows at offset {found}"
            return bad, expect
        finally:
            self.report.records_replayed += replayed  # counted here: one add per segment
            mv.release()
            mm.close()

    def _corrupt(
        self,
        problem: LogCorruption,
        recover: bool,
        cut_path: Path | None,
        cut_offset: int,
        drop: list[Path],
    ) -> None:
        """Raise `problem`, or (recover) cut the log at it, keeping the cut bytes aside."""
        if not recover:
            raise problem
        logger.error("event log: %s; recovering to the last good record", problem)
        self.report.notes.append(str(problem))
        self.report.recovered_from_corruption = True
        if cut_path is not None:
            size = cut_path.stat().st_size
            side = self._cut(cut_path, cut_offset, keep_required=True)
            logger.error(
                "event log: dropped %d bytes (seq %s and after) at offset %d of %s; they are "
                "kept in %s",
                size - cut_offset,
                problem.seq,
                cut_offset,
                cut_path,
                side,
            )
            self.report.notes.append(f"dropped {size - cut_offset} bytes, kept in {side}")
            self.report.truncated_bytes += size - cut_offset
            self.report.truncated_file = str(cut_path)
        self._set_aside(drop)

    def _cut(self, path: Path, offset: int, *, keep_required: bool) -> str | None:
        """Truncate ``path`` at ``offset``, keeping the cut bytes in ``NAME.corrupt-OFFSET``;
        returns that name. A torn tail (``keep_required`` False: never acknowledged) is cut even
        when the copy cannot be written, e.g. on a full disk."""
        side = path.with_name(f"{path.name}.corrupt-{offset}")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                tail = f.read()
            # the cut records may hold session keys: as private as the log itself
            fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(fd, 0o600)
                out.write(tail)
        except OSError as exc:
            if keep_required:
                raise
            logger.warning("event log: cannot keep the cut bytes in %s: %s", side.name, exc)
            side.unlink(missing_ok=True)
            truncate(path, offset)
            return None
        truncate(path, offset)
        return side.name

    def _repair_magic(self, path: Path, reason: str) -> None:
        logger.error("event log: %s: %s; rewriting the header (recover)", path, reason)
        self.report.notes.append(f"rewrote the damaged header of {path.name}")
        self.report.recovered_from_corruption = True
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.pwrite(fd, SEGMENT_MAGIC, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _set_aside(self, paths: list[Path]) -> None:
        for path in paths:
            aside = path.with_name(path.name + ".corrupt")
            logger.error("event log: dropped %s: moved aside to %s", path, aside.name)
            self.report.notes.append(f"moved {path.name} aside to {aside.name}")
            os.replace(path, aside)
        if paths:
            fsync_dir(self.path)


def read_upto(
    path: Path, seq: int
) -> tuple[tuple[bytes, int] | None, Iterator[tuple[int, bytes, int]]]:
    """The state at ``seq`` as `EventLog.open` gives it, read from the log directory ``path``
    while a server appends to it: the newest snapshot at or before ``seq``, then the records
    after it up to ``seq`` (which must all be on disk, in segments no longer written to).

    Strictly read-only (no lock, nothing cut or repaired): any damage raises `LogCorruption`,
    and so does a log that ends before ``seq``."""
    reader = Replay(path, OpenReport())
    base, payload = 0, None
    snapshots = [(s, p) for s, p in list_snapshots(path) if s <= seq]
    if snapshots:
        base, snap_path = snapshots[-1]
        payload = reader._read_snapshot(snap_path, base)
    segments = [(first, p) for first, p in list_segments(path) if first <= seq]
    return payload, _records_upto(reader, segments, base, seq)


def _records_upto(
    reader: Replay, segments: list[tuple[int, Path]], base: int, seq: int
) -> Iterator[tuple[int, bytes, int]]:
    expect = base + 1
    if expect > seq:
        return
    start = max((i for i, (first, _) in enumerate(segments) if first <= expect), default=0)
    for first, path in segments[start:]:
        if first > expect:
            raise LogCorruption(f"seq gap: segment starts at seq {first}", path=path, seq=expect)
        scanner = reader._scan_segment(path, first, base, False)
        while True:
            try:
                record = next(scanner)
            except StopIteration as stop:
                bad, expect = stop.value
                break
            yield record
            if record[0] >= seq:  # not a byte further: what follows may be being written
                scanner.close()
                return
        if bad is not None:
            raise LogCorruption(bad.reason, path=path, offset=bad.offset, seq=expect)
    if expect <= seq:
        raise LogCorruption(f"the log ends at seq {expect - 1}, before seq {seq}", path=reader.path)
