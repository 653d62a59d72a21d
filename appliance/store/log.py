"""The append-only event log: framed records in segments, plus snapshots.

The log is the only source of truth for durable state, so it is kept small and boring (the
LevelDB log is the model). Everything here is blocking file I/O; the trio side lives in
`committer.py`, which calls `append` and `write_snapshot` from a worker thread.

On disk, in ``DIR/log``:

- ``<first_seq:020d>.seg``: ``b"PUSHYLOG" <u16 format> <u16 reserved>`` then records
  ``<u32 payload_len> <u32 crc32(seq bytes + payload)> <u64 seq> <payload>``, little-endian.
  Sequence numbers increase by exactly one across all segments, so a lost or duplicated
  record is detectable, not just a damaged one.
- ``snapshot-<seq:020d>.snap``: ``b"PUSHYSNP" <u16 format> <u64 seq> <u32 len> <u32 crc>``
  then the payload; it is the state after every record with seq <= ``seq``.

The format in each header is the format of the records inside (``core.migrations``): this
module hands it out with every record and snapshot, writes new files in the format it was
given, never appends to a segment of an older format (a new segment starts instead), and
refuses a file of a format this release cannot read before anything is written.

Opening tells a torn tail (the unsynced end of the last write, which was never acknowledged,
so cutting it loses nothing) from corruption in the middle (a bad record with good records
after it, a seq gap, a damaged snapshot), which would lose acknowledged data and therefore
stops the start unless the operator asks to recover.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core import migrations

__all__ = [
    "EventLog",
    "LogCorruption",
    "OpenReport",
    "StorageError",
    "UnsupportedFormat",
]

logger = logging.getLogger(__name__)

SEGMENT_MAGIC = b"PUSHYLOG"
SNAPSHOT_MAGIC = b"PUSHYSNP"
MAX_PAYLOAD = 1 << 30

_SEG_HEADER = struct.Struct("<8sHH")
_REC_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
_SNAP_HEADER = struct.Struct("<8sHQII")
_SEG_NAME = re.compile(r"^(\d{20})\.seg$")
_SNAP_NAME = re.compile(r"^snapshot-(\d{20})\.snap$")


class LogCorruption(Exception):
    """Damage that would lose acknowledged data if ignored: mid-log, seq gap, snapshot."""

    def __init__(
        self,
        reason: str,
        *,
        path: Path | str | None = None,
        offset: int | None = None,
        seq: int | None = None,
    ) -> None:
        self.reason = reason
        self.path = str(path) if path is not None else None
        self.offset = offset
        self.seq = seq
        where = [
            f"file {self.path}" if self.path is not None else None,
            f"offset {offset}" if offset is not None else None,
            f"seq {seq}" if seq is not None else None,
        ]
        prefix = ", ".join(w for w in where if w)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)


class UnsupportedFormat(LogCorruption):
    """A file of a format this release cannot read (a newer one, after a downgrade): never
    'recovered' by deleting it. ``found`` is the file's format."""

    def __init__(self, found: int, what: str, *, path: Path | str, seq: int | None = None):
        self.found = found
        if found > migrations.FORMAT:
            why = f"it was written in format {found}, by a newer release of pushy"
        else:
            why = f"it is in format {found}, older than any this release reads"
        super().__init__(
            f"{what} cannot be read: {why}; this release reads formats "
            f"{migrations.OLDEST_FORMAT} to {migrations.FORMAT}",
            path=path,
            offset=8,
            seq=seq,
        )


class StorageError(OSError):
    """A write failed (ENOSPC, EROFS, EIO...); `.errno` says why. Nothing half-written stays."""


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


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.snap"


def _frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
    return _REC_HEADER.pack(len(payload), crc, seq) + payload


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str, path: Path | str) -> StorageError:
    code = exc.errno if exc.errno is not None else errno.EIO
    return StorageError(code, f"{what} failed: {exc.strerror or exc}", str(path))


@dataclass
class _Bad:
    """Where a segment stops being readable, and whether that is certainly corruption."""

    offset: int
    reason: str
    certain: bool  # True: corruption whatever follows; False: may be a torn tail
    header_only: bool = False  # the segment's magic is damaged, its records are intact


class EventLog:
    """Segments + snapshots in ``directory/log``; see the module docstring for the format."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_max_bytes: int = 64 * 2**20,
        write: Callable[[int, memoryview], int] = os.write,
        fdatasync: Callable[[int], None] = os.fdatasync,
        format: int | None = None,
    ) -> None:
        # `write` and `fdatasync` are seams for fault injection (ENOSPC, EROFS, EIO) in tests;
        # `format` is the format new files are written in (default: the current one; an older
        # one only in tests)
        if segment_max_bytes <= 0:
            raise ValueError("segment_max_bytes must be positive")
        if format is None:
            format = migrations.FORMAT
        if not migrations.readable(format):
            raise ValueError(f"format {format} is not one this release knows")
        self.format = format
        self.directory = Path(directory)
        self.path = self.directory / "log"
        self.segment_max_bytes = segment_max_bytes
        self.report = OpenReport()
        self._write = write
        self._fdatasync = fdatasync
        self._opened = False
        self._ready = False
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment: Path | None = None
        self._segment_first = 0
        self._segment_format = format
        self._end = 0
        self._dirty = False
        self._rollback_error: OSError | None = None  # why the last rollback failed
        self._last_seq = 0

    # -- open and replay -------------------------------------------------------------------

    def open(
        self, *, recover: bool = False
    ) -> tuple[tuple[bytes, int] | None, Iterator[tuple[int, bytes, int]]]:
        """Return ((snapshot payload, its format) or None, iterator of (seq, payload, format)
        of the records after the snapshot).

        Snapshot problems raise here; record problems raise from the iterator, after the good
        records before them were yielded. With ``recover=True`` damage is cut off (moved aside
        as ``*.corrupt*`` files) instead, keeping everything up to the last good record.
        """
        if self._opened:
            raise RuntimeError("EventLog.open called twice")
        self._opened = True
        self._prepare_directory()
        try:
            segments = self._list_segments()
            base, payload = self._choose_base(segments, recover)
        except BaseException:
            self.close()
            raise
        self.report.snapshot_seq = base if payload is not None else None
        return payload, self._replay_or_close(segments, base, recover)

    def _replay_or_close(
        self, segments: list[tuple[int, Path]], base: int, recover: bool
    ) -> Iterator[tuple[int, bytes, int]]:
        # A failed or abandoned replay releases the directory lock for the next attempt.
        try:
            yield from self._replay(segments, base, recover)
        except BaseException:
            self.close()
            raise

    def _prepare_directory(self) -> None:
        try:
            if not self.path.is_dir():
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700, exist_ok=True)
                os.chmod(self.path, 0o700)
                _fsync_dir(self.directory)
            fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _storage_error(exc, "creating the log directory", self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                errno.EBUSY, "event log is in use by another process", str(self.path)
            ) from exc
        self._lock_fd = fd
        for leftover in self.path.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    def _list_segments(self) -> list[tuple[int, Path]]:
        found = []
        for entry in self.path.iterdir():
            m = _SEG_NAME.match(entry.name)
            if m:
                found.append((int(m.group(1)), entry))
        return sorted(found)

    def _list_snapshots(self) -> list[tuple[int, Path]]:
        found = []
        for entry in self.path.iterdir():
            m = _SNAP_NAME.match(entry.name)
            if m:
                found.append((int(m.group(1)), entry))
        return sorted(found)

    def _choose_base(
        self, segments: list[tuple[int, Path]], recover: bool
    ) -> tuple[int, tuple[bytes, int] | None]:
        """Pick the newest usable snapshot; only `recover` may fall back past a bad one."""
        rejected: list[Path] = []
        for seq, path in reversed(self._list_snapshots()):
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
            raise _storage_error(exc, "reading a snapshot", path) from exc
        if len(data) < _SNAP_HEADER.size:
            raise LogCorruption("snapshot header is truncated", path=path, offset=0, seq=seq)
        magic, version, hseq, length, crc = _SNAP_HEADER.unpack_from(data)
        if magic != SNAPSHOT_MAGIC:
            raise LogCorruption(f"bad snapshot magic {magic!r}", path=path, offset=0, seq=seq)
        if not migrations.readable(version):
            raise UnsupportedFormat(version, "the snapshot", path=path, seq=seq)
        if hseq != seq:
            raise LogCorruption(f"header says seq {hseq}, file name says {seq}", path=path)
        if length != len(data) - _SNAP_HEADER.size:
            raise LogCorruption(
                f"snapshot length {length} but {len(data) - _SNAP_HEADER.size} payload bytes",
                path=path,
                offset=_SNAP_HEADER.size,
                seq=seq,
            )
        body = memoryview(data)[_SNAP_HEADER.size :]
        if zlib.crc32(body, zlib.crc32(data[8:22])) != crc:
            raise LogCorruption("snapshot checksum mismatch", path=path, offset=0, seq=seq)
        self.report.formats.add(version)
        return bytes(body), version

    def _replay(
        self, segments: list[tuple[int, Path]], base: int, recover: bool
    ) -> Iterator[tuple[int, bytes, int]]:
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
            if bad.offset < _SEG_HEADER.size:
                self._corrupt(problem, recover, None, 0, [path, *later])
            else:
                self._corrupt(problem, recover, path, bad.offset, later)
                tail = (first, path)
            break
        self._last_seq = max(expect - 1, base)
        if tail is not None and tail[1].exists() and expect - 1 == self._last_seq:
            self._use_segment(tail[1], tail[0], _header_format(tail[1]))
        if self._fd is None or self._segment_format != self.format:
            # never append records of one format to a segment of another: an older release
            # must meet this segment's header (and refuse), not misread its records
            if self._fd is not None:
                logger.info(
                    "event log: %s is in format %d; new records go to a new segment in format "
                    "%d (the older files stay, read through the migration, until snapshots "
                    "cover them)",
                    self._segment.name if self._segment else "?",
                    self._segment_format,
                    self.format,
                )
            self._start_segment(self._last_seq + 1)
        report.last_seq = self._last_seq
        report.segments = len(self._list_segments())
        self._ready = True
        logger.info(
            "event log: opened at seq %d (snapshot %s, %d records replayed)",
            self._last_seq,
            report.snapshot_seq,
            report.records_replayed,
        )

    def _scan_segment(
        self, path: Path, expect: int, base: int, is_last: bool
    ) -> Iterator[tuple[int, bytes, int]]:
        """Yield the valid records of one segment; return (problem or None, next seq)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header = f.read(_SEG_HEADER.size)
            if len(header) < _SEG_HEADER.size:
                return _Bad(0, "segment header is truncated", True), expect
            magic, version, _reserved = _SEG_HEADER.unpack(header)
            if magic != SEGMENT_MAGIC:
                if migrations.readable(version) and _first_record_intact(f, size, expect):
                    # one damaged header in front of good records: --recover rewrites it
                    reason = f"bad segment magic {magic!r}; the records after it are intact"
                    return _Bad(0, reason, True, header_only=True), expect
                return _Bad(0, f"bad segment magic {magic!r}: not a pushy log", True), expect
            if not migrations.readable(version):
                raise UnsupportedFormat(version, "the log segment", path=path)
            self.report.formats.add(version)
            if size == _SEG_HEADER.size:
                return None, expect
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mv = memoryview(mm)
        bad = None
        try:
            unpack = _REC_HEADER.unpack_from
            crc32 = zlib.crc32
            off = _SEG_HEADER.size
            while off < size:
                if size - off < _REC_HEADER.size:
                    bad = _Bad(off, "partial record header", False)
                    break
                length, crc, seq = unpack(mm, off)
                end = off + _REC_HEADER.size + length
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
                    self.report.records_replayed += 1
                    yield seq, mm[off + _REC_HEADER.size : end], version
                expect += 1
                off = end
            if bad is not None and not bad.certain:
                if not is_last:
                    bad.certain = True
                else:
                    found = _find_frame(mv, bad.offset + 1, size, expect - 1)
                    if found is not None:
                        bad.certain = True
                        bad.reason += f"; a valid record follows at offset {found}"
            return bad, expect
        finally:
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
            self._truncate(path, offset)
            return None
        self._truncate(path, offset)
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
            _fsync_dir(self.path)

    def _truncate(self, path: Path, offset: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- appends ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the replay iterator has been exhausted: appends are allowed."""
        return self._ready

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def _check_ready(self) -> None:
        if not self._ready or self._fd is None:
            raise RuntimeError("event log is not open (consume the replay iterator first)")

    def append(self, records: list[tuple[int, bytes]]) -> None:
        """Write `records` (consecutive seqs after `last_seq`) in one write + fdatasync."""
        self._check_ready()
        if not records:
            return
        parts = []
        expect = self._last_seq + 1
        for seq, payload in records:
            if seq != expect:
                raise ValueError(f"append: seq {seq}, expected {expect}")
            if len(payload) > MAX_PAYLOAD:
                raise ValueError(f"append: payload of {len(payload)} bytes is too large")
            parts.append(_frame(seq, payload))
            expect += 1
        data = b"".join(parts)
        self._write_all(data)
        self._end += len(data)
        self._last_seq = expect - 1

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        if self._dirty:
            self._rollback()
            if self._dirty:
                cause = self._rollback_error
                raise StorageError(
                    (cause.errno if cause is not None else None) or errno.EIO,
                    "cannot cut a failed write off the log"
                    + (f" ({cause.strerror or cause})" if cause is not None else ""),
                    str(self._segment),
                )
        view = memoryview(data)
        try:
            written = 0
            while written < len(data):  # each pass writes >= 1 byte or raises
                n = self._write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "write returned no progress")
                written += n
            self._fdatasync(self._fd)
        except OSError as exc:
            self._rollback()
            raise _storage_error(exc, "appending to the event log", self._segment or "") from exc

    def _rollback(self) -> None:
        """Cut the file back to the last good record so no later write lands after garbage."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._end)
            if os.fstat(self._fd).st_size != self._end:
                raise OSError(errno.EIO, "truncate did not take")
            self._dirty = False
        except OSError as exc:
            self._dirty = True
            self._rollback_error = exc
            logger.error(
                "event log: cannot truncate %s back to %d: %s", self._segment, self._end, exc
            )
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            logger.warning("event log: fdatasync after rollback failed: %s", exc)

    def segment_bytes(self) -> int:
        """Size of the segment appends go to (header included)."""
        return self._end

    def needs_snapshot(self) -> bool:
        return self._ready and self._end >= self.segment_max_bytes

    # -- snapshots and segments ------------------------------------------------------------

    def write_snapshot(self, seq: int, payload: bytes) -> None:
        """Store the state after `seq` (== last_seq), start segment seq+1, drop obsolete files.

        The previous snapshot and the segments after it are kept, so a damaged newest
        snapshot still leaves a full replay path.
        """
        self._check_ready()
        if seq != self._last_seq:
            raise ValueError(f"write_snapshot: seq {seq} is not the last seq {self._last_seq}")
        if len(payload) >= 2**32:
            raise ValueError("write_snapshot: payload too large")
        final = self.path / _snapshot_name(seq)
        head = struct.pack("<HQI", self.format, seq, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(head))
        data = SNAPSHOT_MAGIC + head + struct.pack("<I", crc) + payload
        self._write_file_atomically(final, data, "writing a snapshot")
        if not (self._segment_first == seq + 1 and self._end == _SEG_HEADER.size):
            self._start_segment(seq + 1)
        self._prune(seq)

    def _write_file_atomically(self, final: Path, data: bytes, what: str) -> None:
        tmp = final.with_name(final.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                written = 0
                while written < len(data):  # each pass writes >= 1 byte or raises
                    n = self._write(fd, view[written:])
                    if n <= 0:
                        raise OSError(errno.EIO, "write returned no progress")
                    written += n
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self.path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise _storage_error(exc, what, final) from exc

    def _start_segment(self, first: int) -> None:
        path = self.path / _segment_name(first)
        header = _SEG_HEADER.pack(SEGMENT_MAGIC, self.format, 0)
        self._write_file_atomically(path, header, "creating a log segment")
        self._use_segment(path, first, self.format)

    def _use_segment(self, path: Path, first: int, fmt: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise _storage_error(exc, "opening a log segment", path) from exc
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._segment = path
        self._segment_first = first
        self._segment_format = fmt
        self._end = os.fstat(fd).st_size
        self._dirty = False

    def _prune(self, newest: int) -> None:
        """Delete what neither the newest nor the previous snapshot needs."""
        snapshots = [s for s, _ in self._list_snapshots()]
        older = [s for s in snapshots if s < newest]
        if not older:
            return
        keep_from = older[-1]
        removed = False
        for seq, path in self._list_snapshots():
            if seq < keep_from:
                path.unlink(missing_ok=True)
                removed = True
        segments = self._list_segments()
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            if next_first <= keep_from + 1 and path != self._segment:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            try:
                _fsync_dir(self.path)
            except OSError as exc:
                logger.warning("event log: fsync of %s failed: %s", self.path, exc)

    def close(self) -> None:
        self._ready = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _header_format(path: Path) -> int:
    """The format named in a segment's header (already checked by the replay)."""
    with open(path, "rb") as f:
        return _SEG_HEADER.unpack(f.read(_SEG_HEADER.size))[1]


def _first_record_intact(f, size: int, expect: int) -> bool:  # noqa: ANN001 (a binary file)
    """Whether the segment ``f`` is empty or starts with a valid record of seq ``expect``."""
    if size == _SEG_HEADER.size:
        return True
    f.seek(_SEG_HEADER.size)
    head = f.read(_REC_HEADER.size)
    if len(head) < _REC_HEADER.size:
        return False
    length, crc, seq = _REC_HEADER.unpack(head)
    if seq != expect or length > size - _SEG_HEADER.size - _REC_HEADER.size:
        return False
    return zlib.crc32(f.read(length), zlib.crc32(head[8:])) == crc


def _find_frame(buf: memoryview, start: int, size: int, after_seq: int) -> int | None:
    """Offset of a plausible valid record at or after `start` (sane length, CRC, seq), or None."""
    limit = after_seq + (size - start) // _REC_HEADER.size + 1
    unpack = _REC_HEADER.unpack_from
    for p in range(start, size - _REC_HEADER.size + 1):
        length, crc, seq = unpack(buf, p)
        if after_seq < seq <= limit:
            end = p + _REC_HEADER.size + length
            if end <= size and zlib.crc32(buf[p + 8 : end]) == crc:
                return p
    return None
