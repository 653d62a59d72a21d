"""Live output: the rules for one node's stdout or stderr arriving in chunks.

Everything that decides what of a chunk is kept lives here; the server's ``outputs`` module
only writes what this returns and publishes the event. It knows nothing of files or sockets.

* Our client sends a stream as ``output`` messages, each ``offset`` (the bytes of that stream
  sent before it) and ``base64`` (the raw bytes). Chunks arrive in order over one socket, but a
  resent or overlapping one must not be kept twice: only bytes past what is kept are taken,
  and a chunk ahead of what is kept (one was lost) is taken where it says it goes.
* A stream keeps at most ``limit`` bytes (the ``max_output_bytes`` setting). The first chunk
  that goes past it is cut there and followed by ``truncation_marker(limit)``; nothing after
  that is kept. The marker is text a reader sees in the stream itself, as ``tail -c`` users
  expect, not a flag they have to look up.
* Events and the REST answer show text: UTF-8 with invalid bytes replaced. Our client cuts
  chunks at character boundaries (``Outgoing``), so a chunk decodes on its own as the whole
  would.
* The sending side (``Outgoing``, our client) sends at most ``limit + 1`` bytes of a stream:
  the one byte more is how the server learns the stream went past the limit; the rest is only
  counted, so a runaway command does not flood the network.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_CHUNK_BYTES",
    "STREAMS",
    "Chunk",
    "ChunkError",
    "Kept",
    "StreamState",
    "Outgoing",
    "accept",
    "chunk_fields",
    "parse_chunk",
    "truncation_marker",
]

STREAMS = ("stdout", "stderr")
#: the largest chunk our client sends, and the largest the server takes (raw bytes)
MAX_CHUNK_BYTES = 32 * 1024


class ChunkError(ValueError):
    """An ``output`` message that cannot be a chunk of a stream."""


@dataclass(frozen=True, slots=True)
class Chunk:
    job_id: str
    stream: str
    offset: int
    data: bytes


@dataclass(slots=True)
class StreamState:
    """What is kept of one stream: ``length`` bytes of it (the marker not counted)."""

    length: int = 0
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Kept:
    """What to append to the stream (``data``, then ``marker`` if any) and the event to show:
    ``offset`` counts the stream's bytes before ``data``."""

    offset: int
    data: bytes
    marker: bytes = b""

    def text(self) -> str:
        return (self.data + self.marker).decode("utf-8", "replace")


def truncation_marker(limit: int) -> bytes:
    return f"\n[pushy: output truncated at {limit} bytes; the rest was not kept]\n".encode()


def chunk_fields(stream: str, offset: int, data: bytes) -> dict[str, Any]:
    """The fields of an ``output`` message beyond the common ones (``parse_chunk`` reads them)."""
    return {"stream": stream, "offset": offset, "base64": base64.b64encode(data).decode("ascii")}


def parse_chunk(body: dict[str, Any]) -> Chunk:
    """The chunk an ``output`` message carries, or ``ChunkError`` saying what is wrong."""
    job_id, stream, offset, encoded = (
        body.get("job_id"),
        body.get("stream"),
        body.get("offset"),
        body.get("base64"),
    )
    if not isinstance(job_id, str) or not job_id:
        raise ChunkError("no job_id")
    if stream not in STREAMS:
        raise ChunkError(f"stream must be stdout or stderr, not {stream!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ChunkError(f"offset must be an integer >= 0, not {offset!r}")
    if not isinstance(encoded, str) or len(encoded) > (MAX_CHUNK_BYTES + 2) // 3 * 4:
        raise ChunkError(f"base64 must be a string of at most {MAX_CHUNK_BYTES} bytes")
    try:
        data = binascii.a2b_base64(encoded, strict_mode=True)  # a quarter faster than b64decode
    except (binascii.Error, ValueError) as exc:
        raise ChunkError(f"base64 does not decode: {exc}") from None
    if len(data) > MAX_CHUNK_BYTES:
        raise ChunkError(f"a chunk holds at most {MAX_CHUNK_BYTES} bytes, not {len(data)}")
    return Chunk(job_id, stream, offset, data)


def accept(state: StreamState, offset: int, data: bytes, limit: int) -> Kept | None:
    """Take a chunk into ``state`` (updated in place); None when nothing of it is kept."""
    if state.truncated:
        return None
    end = offset + len(data)
    if end <= state.length:
        return None  # already kept (a resend)
    if offset < state.length:
        data, offset = data[state.length - offset :], state.length
    if end > limit:
        state.truncated = True
        state.length = max(state.length, min(end, limit))
        return Kept(offset, data[: max(0, limit - offset)], truncation_marker(limit))
    state.length = end
    return Kept(offset, data)


class Outgoing:
    """One stream on the sending side: bytes in as the command writes them, chunks out."""

    def __init__(self, limit: int, chunk_bytes: int = MAX_CHUNK_BYTES) -> None:
        self.cap = limit + 1  # see the module docstring
        self.chunk_bytes = max(1, chunk_bytes)
        self.pending = bytearray()
        self.sent = 0  # bytes handed out as chunks (the next chunk's offset)
        self.dropped = 0  # bytes past the cap, only counted

    def add(self, data: bytes) -> None:
        room = self.cap - self.sent - len(self.pending)
        if room > 0:
            self.pending += data[:room]
        self.dropped += max(0, len(data) - max(room, 0))

    def full(self) -> bool:
        """A whole chunk is waiting: send before reading more."""
        return len(self.pending) >= self.chunk_bytes

    def take(self, *, final: bool = False) -> list[tuple[int, bytes]]:
        """(offset, bytes) chunks of what is pending, each cut at a character boundary; unless
        ``final``, an unfinished character at the end waits for the rest of it."""
        chunks = []
        while (chunk := self.peek(final=final)) is not None:
            chunks.append(chunk)
            self.advance(len(chunk[1]))
        return chunks

    def peek(self, *, final: bool = False) -> tuple[int, bytes] | None:
        """The next chunk (as `take` cuts them), left pending until `advance`: a sender
        cancelled before it is done loses nothing."""
        pending = self.pending
        end = len(pending) if final else complete_prefix(pending)
        if end == 0:
            return None
        cut = min(end, self.chunk_bytes)
        if cut < end:
            cut = max(1, _char_start(pending, cut))
        return self.sent, bytes(pending[:cut])

    def advance(self, size: int) -> None:
        """The next ``size`` pending bytes are dealt with (sent, or given up)."""
        del self.pending[:size]
        self.sent += size


def complete_prefix(data: bytes | bytearray) -> int:
    """The length of ``data`` without a UTF-8 character cut off at its end."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:  # the last lead (or ASCII) byte
            need = (
                2
                if byte & 0xE0 == 0xC0
                else 3
                if byte & 0xF0 == 0xE0
                else 4
                if byte & 0xF8 == 0xF0
                else 1
            )
            return n - back if back < need else n
    return n  # only continuation bytes: not UTF-8 anyway


def _char_start(data: bytes | bytearray, n: int) -> int:
    """``n`` moved back to the start of the character it falls in (at most 3 bytes)."""
    for _ in range(3):
        if 0 < n < len(data) and data[n] & 0xC0 == 0x80:
            n -= 1
    return n
