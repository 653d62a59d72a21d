"""The log's bytes on disk: headers, framed records with CRCs, file names, frame scanning.

The layout is described in `store.log`; everything that knows an offset or a struct lives here.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

SEGMENT_MAGIC = b"PUSHYLOG"
SNAPSHOT_MAGIC = b"PUSHYSNP"
MAX_PAYLOAD = 1 << 30

SEG_HEADER = struct.Struct("<8sHH")
REC_HEADER = struct.Struct("<IIQ")
_SEQ = struct.Struct("<Q")
SNAP_HEADER = struct.Struct("<8sHQII")
SEG_NAME = re.compile(r"^(\d{20})\.seg$")
SNAP_NAME = re.compile(r"^snapshot-(\d{20})\.snap$")


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of the segments in ``directory``, oldest first."""
    found = []
    for entry in directory.iterdir():
        m = SEG_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found)


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(seq, path) of the snapshots in ``directory``, oldest first."""
    found = []
    for entry in directory.iterdir():
        m = SNAP_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
    return sorted(found)


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.snap"


def snapshot_parts(fmt: int, seq: int, payload: bytes) -> list[bytes]:
    """A snapshot file's bytes: its header (with the CRC of header and payload), then the
    payload itself (not copied into one buffer: it may be tens of MiB)."""
    head = struct.pack("<HQI", fmt, seq, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return [SNAPSHOT_MAGIC + head + struct.pack("<I", crc), payload]


def frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(_SEQ.pack(seq)))
    return REC_HEADER.pack(len(payload), crc, seq) + payload


def header_format(path: Path) -> int:
    """The format named in a segment's header (already checked by the replay)."""
    with open(path, "rb") as f:
        return SEG_HEADER.unpack(f.read(SEG_HEADER.size))[1]


def first_record_intact(f, size: int, expect: int) -> bool:  # noqa: ANN001 (a binary file)
    """Whether the segment ``f`` is empty or starts with a valid record of seq ``expect``."""
    if size == SEG_HEADER.size:
        return True
    f.seek(SEG_HEADER.size)
    head = f.read(REC_HEADER.size)
    if len(head) < REC_HEADER.size:
        return False
    length, crc, seq = REC_HEADER.unpack(head)
    if seq != expect or length > size - SEG_HEADER.size - REC_HEADER.size:
        return False
    return zlib.crc32(f.read(length), zlib.crc32(head[8:])) == crc


def find_frame(buf: memoryview, start: int, size: int, after_seq: int) -> int | None:
    """Offset of a plausible valid record at or after `start` (sane length, CRC, seq), or None."""
    limit = after_seq + (size - start) // REC_HEADER.size + 1
    unpack = REC_HEADER.unpack_from
    for p in range(start, size - REC_HEADER.size + 1):
        length, crc, seq = unpack(buf, p)
        if after_seq < seq <= limit:
            end = p + REC_HEADER.size + length
            if end <= size and zlib.crc32(buf[p + 8 : end]) == crc:
                return p
    return None
