"""Sending a job's output while it runs (``output`` messages; beyond the original).

Only to a server that takes it (its config says ``max_output_bytes``); an original server gets
the output at the end, as the original client sent it. What is read from the command goes
into one ``core.output.Outgoing`` per stream; a chunk goes out as soon as a whole one is
pending, and whatever is pending at least every ``FLUSH_SECONDS``. The command's reads wait
for a full chunk to be queued, so a slow server slows the command (a full pipe) rather than
growing this process. A chunk the socket cannot take is tried again for ``SEND_PATIENCE``
seconds, then given up (the server sees the gap in the offsets): a job never hangs on it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from appliance.core import output as coreoutput

log = logging.getLogger("pushy.client")

FLUSH_SECONDS = 0.25
SEND_PATIENCE = 10.0
_RETRY_SECONDS = 0.02
#: room left in a message for everything but the chunk (the fields, the JSON, the header)
_MESSAGE_OVERHEAD = 1024

#: (stream, offset, bytes) -> whether the socket took it
Send = Callable[[str, int, bytes], bool]


def chunk_bytes(max_body_size: int) -> int:
    """The largest chunk whose message fits ``max_body_size`` (base64 is 4 bytes per 3)."""
    return max(1, min(coreoutput.MAX_CHUNK_BYTES, (max_body_size - _MESSAGE_OVERHEAD) * 3 // 4))


class LiveOutput:
    def __init__(self, send: Send, *, limit: int, max_body_size: int) -> None:
        self._send = send
        size = chunk_bytes(max_body_size)
        self.streams = {name: coreoutput.Outgoing(limit, size) for name in coreoutput.STREAMS}
        self.lost = 0  # bytes of chunks the socket never took
        self._lock = trio.Lock()  # one sender at a time keeps each stream's chunks in order

    async def on_output(self, stream: str, data: bytes) -> None:
        """The runner's reads: queued, and sent at once when a whole chunk is pending."""
        out = self.streams[stream]
        out.add(data)
        if out.full():
            await self._flush(final=False)

    async def flush_every(self) -> None:
        """Until cancelled: what is pending goes out at least every ``FLUSH_SECONDS``."""
        while True:
            await trio.sleep(FLUSH_SECONDS)
            await self._flush(final=False)

    async def close(self) -> None:
        """The command ended: send everything left, before its result."""
        await self._flush(final=True)
        dropped = {name: out.dropped for name, out in self.streams.items() if out.dropped}
        if dropped:
            log.info("output past max_output_bytes not sent (bytes): %s", dropped)

    async def _flush(self, *, final: bool) -> None:
        async with self._lock:
            for name, out in self.streams.items():
                for offset, data in out.take(final=final):
                    await self._send_patiently(name, offset, data)

    async def _send_patiently(self, stream: str, offset: int, data: bytes) -> None:
        deadline = time.monotonic() + SEND_PATIENCE
        while not self._send(stream, offset, data):
            if time.monotonic() >= deadline:
                self.lost += len(data)
                log.warning(
                    "%d bytes of %s (offset %d) not sent: the server is not taking messages",
                    len(data),
                    stream,
                    offset,
                )
                return
            await trio.sleep(_RETRY_SECONDS)
