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

The pieces: `frames` (bytes and names on disk), `replay` (reading back at open, recovery),
`errors` (what is raised), `files` (fsync and truncate); this module is the `EventLog` that
ties them together and appends.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.core import migrations
from appliance.core.timings import Timings
from appliance.store.errors import StorageError, storage_error
from appliance.store.files import fsync_dir, write_atomically
from appliance.store.frames import (
    MAX_PAYLOAD,
    SEG_HEADER,
    SEGMENT_MAGIC,
    frame,
    header_format,
    list_segments,
    list_snapshots,
    segment_name,
    snapshot_name,
    snapshot_parts,
)
from appliance.store.replay import OpenReport, Replay

__all__ = ["EventLog"]

logger = logging.getLogger(__name__)


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
        # each append's write and its fdatasync (GET /metrics reads them)
        self.write_timings = Timings()
        self.sync_timings = Timings()

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
        reader = Replay(self.path, self.report)
        try:
            segments = list_segments(self.path)
            base, payload = reader.choose_base(segments, recover)
        except BaseException:
            self.close()
            raise
        self.report.snapshot_seq = base if payload is not None else None
        return payload, self._replay(reader, segments, base, recover)

    def _prepare_directory(self) -> None:
        try:
            if not self.path.is_dir():
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700, exist_ok=True)
                os.chmod(self.path, 0o700)
                fsync_dir(self.directory)
            fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error(exc, "creating the log directory", self.path) from exc
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

    def _replay(
        self, reader: Replay, segments: list[tuple[int, Path]], base: int, recover: bool
    ) -> Iterator[tuple[int, bytes, int]]:
        # A failed or abandoned replay releases the directory lock for the next attempt.
        try:
            report = self.report
            expect, tail = yield from reader.records(segments, base, recover)
            self._last_seq = max(expect - 1, base)
            if tail is not None and tail[1].exists() and expect - 1 == self._last_seq:
                self._use_segment(tail[1], tail[0], header_format(tail[1]))
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
            report.segments = len(list_segments(self.path))
            self._ready = True
            logger.info(
                "event log: opened at seq %d (snapshot %s, %d records replayed)",
                self._last_seq,
                report.snapshot_seq,
                report.records_replayed,
            )
        except BaseException:
            self.close()
            raise

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
            parts.append(frame(seq, payload))
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
            started = time.perf_counter()
            written = 0
            while written < len(data):  # each pass writes >= 1 byte or raises
                n = self._write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "write returned no progress")
                written += n
            wrote = time.perf_counter()
            self._fdatasync(self._fd)
            self.write_timings.observe(wrote - started)
            self.sync_timings.observe(time.perf_counter() - wrote)
        except OSError as exc:
            self._rollback()
            raise storage_error(exc, "appending to the event log", self._segment or "") from exc

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

    def seal(self) -> int:
        """Start a new segment after the last record (unless the current one is still empty)
        and return that record's seq: every record up to it now lies in files no append
        touches again, which a snapshot can be built from off the writer's way."""
        self._check_ready()
        if not (self._segment_first == self._last_seq + 1 and self._end == SEG_HEADER.size):
            self._start_segment(self._last_seq + 1)
        return self._last_seq

    def write_snapshot(self, seq: int, payload: bytes) -> None:
        """Store the state after `seq`, drop obsolete files: `write_snapshot_file`, then
        `snapshot_written`. The previous snapshot and the segments after it are kept, so a
        damaged newest snapshot still leaves a full replay path."""
        self.write_snapshot_file(seq, payload)
        self.snapshot_written(seq)

    def write_snapshot_file(self, seq: int, payload: bytes) -> None:
        """The snapshot's file alone. ``seq`` is the last seq or one `seal` returned: then
        this may run in one thread while `append` runs in another (it reads no append state
        but the last seq)."""
        self._check_ready()
        if seq > self._last_seq or (
            seq < self._last_seq and not (self.path / segment_name(seq + 1)).exists()
        ):
            raise ValueError(f"write_snapshot: seq {seq} is neither the last seq nor sealed")
        if len(payload) >= 2**32:
            raise ValueError("write_snapshot: payload too large")
        parts = snapshot_parts(self.format, seq, payload)
        self._write_file_atomically(self.path / snapshot_name(seq), parts, "writing a snapshot")

    def snapshot_written(self, seq: int) -> None:
        """After `write_snapshot_file` (or another process wrote the same file): start the
        segment after ``seq`` unless there is one, then drop what neither this snapshot nor
        the previous one needs."""
        self._check_ready()
        if not (self.path / snapshot_name(seq)).exists():
            raise ValueError(f"snapshot_written: there is no snapshot file of seq {seq}")
        if seq == self._last_seq and not (
            self._segment_first == seq + 1 and self._end == SEG_HEADER.size
        ):
            self._start_segment(seq + 1)
        self._prune(seq)

    def _write_file_atomically(self, final: Path, parts: list[bytes], what: str) -> None:
        try:
            write_atomically(final, parts, self._write)
        except OSError as exc:
            raise storage_error(exc, what, final) from exc

    def _start_segment(self, first: int) -> None:
        path = self.path / segment_name(first)
        header = SEG_HEADER.pack(SEGMENT_MAGIC, self.format, 0)
        self._write_file_atomically(path, [header], "creating a log segment")
        self._use_segment(path, first, self.format)

    def _use_segment(self, path: Path, first: int, fmt: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise storage_error(exc, "opening a log segment", path) from exc
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
        snapshots = [s for s, _ in list_snapshots(self.path)]
        older = [s for s in snapshots if s < newest]
        if not older:
            return
        keep_from = older[-1]
        removed = False
        for seq, path in list_snapshots(self.path):
            if seq < keep_from:
                path.unlink(missing_ok=True)
                removed = True
        segments = list_segments(self.path)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            if next_first <= keep_from + 1 and path != self._segment:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            try:
                fsync_dir(self.path)
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
