"""The event log's pieces below `EventLog`: the bytes of a frame, file names, frame scanning,
the errors' texts and the file helpers. Written from the layout in store/log.py's docstring."""

from __future__ import annotations

import errno
import io
import struct
import zlib
from pathlib import Path

from appliance.core import migrations
from appliance.store.errors import LogCorruption, StorageError, UnsupportedFormat, storage_error
from appliance.store.files import fsync_dir, truncate
from appliance.store.frames import (
    REC_HEADER,
    SEG_HEADER,
    SEGMENT_MAGIC,
    find_frame,
    first_record_intact,
    frame,
    header_format,
    list_segments,
    list_snapshots,
    segment_name,
    snapshot_name,
)


def spec_frame(seq: int, payload: bytes) -> bytes:
    """``<u32 payload_len> <u32 crc32(seq bytes + payload)> <u64 seq> <payload>``, little-endian."""
    crc = zlib.crc32(struct.pack("<Q", seq) + payload)
    return struct.pack("<IIQ", len(payload), crc, seq) + payload


def segment(first: int, payloads: list[bytes], fmt: int = migrations.FORMAT) -> bytes:
    head = SEGMENT_MAGIC + struct.pack("<HH", fmt, 0)
    return head + b"".join(spec_frame(first + i, p) for i, p in enumerate(payloads))


def test_frame_is_the_documented_layout() -> None:
    for seq, payload in ((1, b""), (7, b'{"type":"x"}'), (2**40, b"\x00" * 300)):
        assert frame(seq, payload) == spec_frame(seq, payload)
    assert REC_HEADER.size == 16 and SEG_HEADER.size == 12


def test_file_names_sort_by_seq(tmp_path: Path) -> None:
    assert segment_name(12) == "00000000000000000012.seg"
    assert snapshot_name(12) == "snapshot-00000000000000000012.snap"
    for name in (segment_name(10), segment_name(2), snapshot_name(9), snapshot_name(30)):
        (tmp_path / name).write_bytes(b"")
    for stray in ("1.seg", "00000000000000000003.seg.corrupt", "snapshot-1.snap", "x.tmp"):
        (tmp_path / stray).write_bytes(b"")
    assert list_segments(tmp_path) == [
        (2, tmp_path / segment_name(2)),
        (10, tmp_path / segment_name(10)),
    ]
    assert list_snapshots(tmp_path) == [
        (9, tmp_path / snapshot_name(9)),
        (30, tmp_path / snapshot_name(30)),
    ]


def test_header_format_reads_the_segment_header(tmp_path: Path) -> None:
    path = tmp_path / segment_name(1)
    path.write_bytes(segment(1, [b"a"], fmt=migrations.OLDEST_FORMAT))
    assert header_format(path) == migrations.OLDEST_FORMAT


def test_first_record_intact() -> None:
    data = segment(5, [b"first", b"second"])
    assert first_record_intact(io.BytesIO(data), len(data), 5)
    assert not first_record_intact(io.BytesIO(data), len(data), 6)  # wrong seq
    empty = segment(5, [])
    assert first_record_intact(io.BytesIO(empty), len(empty), 5)
    damaged = bytearray(data)
    damaged[SEG_HEADER.size + REC_HEADER.size] ^= 1  # a payload byte
    assert not first_record_intact(io.BytesIO(bytes(damaged)), len(data), 5)
    cut = data[: SEG_HEADER.size + 4]
    assert not first_record_intact(io.BytesIO(cut), len(cut), 5)


def test_find_frame_finds_the_next_valid_record_after_damage() -> None:
    good = [spec_frame(s, f"payload {s}".encode()) for s in (1, 2, 3)]
    buf = memoryview(b"".join(good))
    second = len(good[0])
    assert find_frame(buf, 1, len(buf), 1) == second
    assert find_frame(buf, second + 1, len(buf), 2) == second + len(good[1])
    assert find_frame(buf, 1, len(buf), 3) is None  # no record with a later seq
    assert find_frame(memoryview(b"\xff" * 64), 0, 64, 0) is None


def test_error_texts() -> None:
    exc = LogCorruption("record checksum mismatch", path="/x/1.seg", offset=28, seq=3)
    assert str(exc) == "file /x/1.seg, offset 28, seq 3: record checksum mismatch"
    assert str(LogCorruption("bare")) == "bare"
    newer = UnsupportedFormat(migrations.FORMAT + 1, "the snapshot", path="/x/s.snap")
    assert isinstance(newer, LogCorruption) and newer.found == migrations.FORMAT + 1
    assert "by a newer release of pushy" in str(newer) and newer.offset == 8
    err = storage_error(OSError(errno.ENOSPC, "No space left on device"), "writing", "/x/f")
    assert isinstance(err, StorageError) and err.errno == errno.ENOSPC
    assert err.strerror == "writing failed: No space left on device" and err.filename == "/x/f"
    assert storage_error(OSError("odd"), "writing", "/x").errno == errno.EIO


def test_truncate_and_fsync_dir(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    truncate(path, 4)
    assert path.read_bytes() == b"0123"
    fsync_dir(tmp_path)  # must not raise on a directory
