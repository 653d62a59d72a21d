"""Sending a job's output while it runs (``output`` messages; beyond the original).

Only to a server that takes it (its config says ``max_output_bytes``); an original server gets
the output at the end, as the original client sent it. What is read from the command goes
into one ``core.output.Outgoing`` per stream; a chunk goes out as soon as a whole one is
pending, and whatever is pending at least every ``FLUSH_SECONDS``.

Flow control: the server acknowledges each chunk (``output_ack``: the stream and the offset
it has up to), and at most ``WINDOW_BYTES`` of a job's output are sent and not acknowledged.
So what a flood of output can queue between a node and the server (in the edges, in ZeroMQ,
in the server) is bounded by the streaming nodes times the window, and a slow server slows
the commands (their pipes fill) instead of growing anyone's memory. A window with no ack for
``ACK_PATIENCE`` is sent again (the server keeps a chunk once, whatever the resends: offsets),
every ``ACK_PATIENCE`` until ``GIVE_UP_SECONDS`` passed without an ack, then given up as lost:
long enough for a standby to take over from a failed server (``lease_timeout`` + 5 s and the
node's reconnection), short enough that a vanished server cannot hang a job for good. A chunk
the socket does not take is tried again for ``SEND_PATIENCE`` seconds (a node reconnecting
has no socket for a while); once that has run out, later chunks get one try each until the
socket takes one. A new connection (a reconnect, a failover) or a server that restarted (the
agent sees its new incarnation) gets what was in flight again at once: the acknowledgements
owed died with the old one. The command's end waits for the last acks (bounded the same way),
so that a job seen complete has its output on the server's disk; an aborted job's does not
wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from appliance.core import output as coreoutput

log = logging.getLogger("pushy.client")

FLUSH_SECONDS = 0.25
#: a chunk, and all a job may have unacknowledged. Small on purpose: a flood's queue at the
#: server is the streaming nodes times this, and every node's heartbeats wait behind it
#: (1,000 nodes: 16 MiB, under half a second at what one server takes); one node alone still
#: sends this per round trip (16 MiB/s at 1 ms)
WINDOW_BYTES = 16 * 1024
ACK_PATIENCE = 3.0  # a round trip and an fsync; a flood's queue adds under a second
GIVE_UP_SECONDS = 60.0  # without any ack: the server is gone for good
SEND_PATIENCE = 30.0
_RETRY_SECONDS = 0.02
#: room left in a message for everything but the chunk (the fields, the JSON, the header)
_MESSAGE_OVERHEAD = 1024

#: (stream, offset, bytes) -> whether the socket took it
Send = Callable[[str, int, bytes], bool]


def chunk_bytes(max_body_size: int) -> int:
    """The chunk size: ``WINDOW_BYTES``, or less if its message would not fit
    ``max_body_size`` (base64: 4 bytes per 3, padded)."""
    return max(1, min(WINDOW_BYTES, (max_body_size - _MESSAGE_OVERHEAD) // 4 * 3))


class LiveOutput:
    def __init__(
        self, send: Send, *, limit: int, max_body_size: int, window: int = WINDOW_BYTES
    ) -> None:
        self._send = send
        size = chunk_bytes(max_body_size)
        self.streams = {name: coreoutput.Outgoing(limit, size) for name in coreoutput.STREAMS}
        self.window = max(window, size)
        self.inflight: dict[tuple[str, int], bytes] = {}  # sent, not acknowledged, in order
        self.lost = 0  # bytes given up: never taken by the socket, or never acknowledged
        self._acked = trio.Event()
        self._stuck = False  # the socket refused a chunk for SEND_PATIENCE: no more waiting
        self._restarted = False  # the server restarted: resend what is in flight now
        self._lock = trio.Lock()  # one sender at a time keeps each stream's chunks in order

    async def on_output(self, stream: str, data: bytes) -> None:
        """The runner's reads: queued, and sent at once when a whole chunk is pending."""
        out = self.streams[stream]
        out.add(data)
        if out.full():
            await self._flush(final=False)

    def on_ack(self, stream: str, offset: int) -> None:
        """The server has ``stream`` up to ``offset``."""
        done = [
            k for k, data in self.inflight.items() if k[0] == stream and k[1] + len(data) <= offset
        ]
        for key in done:
            del self.inflight[key]
        if done:
            if not self.inflight:
                self._restarted = False  # nothing left that a restart could have lost
            self._acked.set()

    def server_restarted(self) -> None:
        """The server restarted: its acks for what is in flight will never come."""
        if self.inflight:
            self._restarted = True
            self._acked.set()

    async def flush_every(self) -> None:
        """Until cancelled: what is pending goes out at least every ``FLUSH_SECONDS``."""
        while True:
            await trio.sleep(FLUSH_SECONDS)
            await self._flush(final=False)

    async def close(self, *, wait_for_acks: bool = True) -> None:
        """The command ended: send what is left and, unless it was aborted (the server has
        given up on it), see it acknowledged — on disk at the server — before the result goes:
        a job seen complete then has all its output. Bounded by the ack patience."""
        await self._flush(final=True, wait=wait_for_acks)
        if wait_for_acks:
            async with self._lock:
                await self._room(self.window)
        dropped = {name: out.dropped for name, out in self.streams.items() if out.dropped}
        if dropped:
            log.info("output past max_output_bytes not sent (bytes): %s", dropped)

    async def _flush(self, *, final: bool, wait: bool = True) -> None:
        """Send what is pending; a chunk stays pending until it is sent or given up, so a
        flush cancelled while it waits (the command's end) leaves it to the next one."""
        async with self._lock:
            for name, out in self.streams.items():
                while (chunk := out.peek(final=final)) is not None:
                    offset, data = chunk
                    if wait:
                        await self._room(len(data))
                    sent = await self._send_patiently(name, offset, data)
                    out.advance(len(data))
                    if sent:
                        self.inflight[(name, offset)] = data

    async def _room(self, size: int) -> None:
        """Wait until ``size`` more bytes fit the window (or nothing is in flight)."""
        since = trio.current_time()  # the last ack, or the last fresh start
        while self.inflight and sum(map(len, self.inflight.values())) + size > self.window:
            if not self._restarted:
                self._acked = trio.Event()
                with trio.move_on_after(ACK_PATIENCE) as waiting:
                    await self._acked.wait()
                if not waiting.cancelled_caught and not self._restarted:
                    since = trio.current_time()
                    continue  # an ack came
            if self._restarted:  # a fresh start for the new server: resend, full patience
                self._restarted = False
                since = trio.current_time()
            if trio.current_time() - since < GIVE_UP_SECONDS:
                for (name, offset), data in list(self.inflight.items()):
                    if not await self._send_patiently(name, offset, data):
                        del self.inflight[(name, offset)]  # counted as lost there
                continue
            lost = sum(map(len, self.inflight.values()))
            log.warning("%d bytes of output not acknowledged by the server: given up", lost)
            self.lost += lost
            self.inflight.clear()

    async def _send_patiently(self, stream: str, offset: int, data: bytes) -> bool:
        deadline = time.monotonic() + (0.0 if self._stuck else SEND_PATIENCE)
        while not self._send(stream, offset, data):
            if time.monotonic() >= deadline:
                if not self._stuck:
                    log.warning("the server is not taking messages: output is being lost")
                self._stuck = True
                self.lost += len(data)
                return False
            await trio.sleep(_RETRY_SECONDS)
        self._stuck = False
        return True
