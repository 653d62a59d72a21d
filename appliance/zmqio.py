"""pyzmq under trio: one receiving task per socket parks on the socket's edge-triggered FD.

libzmq's FD only signals that the socket's command queue changed; readiness must be read from
``EVENTS`` after every wake, and a send from another task can swallow the receiver's edge, so
after each burst of sends ``EVENTS`` is read again and a parked receiver kicked
(stack-notes.md §1a).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
import zmq
import zmq.utils.z85

FAIRNESS_BATCH = 64
# a message counts one more toward the batch per this many bytes: a burst of large messages
# (live output, 44 KB each) yields as often per byte as heartbeats do per message
FAIRNESS_BYTES = 2048
_NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's enum flags cost more than the send
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)


class TrioSocket:
    """A zmq socket used from trio tasks: NOBLOCK sends from any task, one receiver task."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._park: trio.CancelScope | None = None
        self._since_checkpoint = 0
        self.closed = False
        self._kick_queued = False

    def send_nowait(self, frames: list[bytes]) -> bool:
        """Queue a multipart message; False if it could not be queued (HWM, unknown peer)."""
        if self.closed:
            return False
        sock = self.sock
        try:
            for frame in frames[:-1]:  # a multipart's later parts never fail once one is queued
                sock.send(frame, _NOBLOCK_MORE)
            sock.send(frames[-1], _NOBLOCK)
            sent = True
        except zmq.Again:
            sent = False
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK, zmq.ETERM):
                sent = False
            else:
                raise
        self._kick_soon()
        return sent

    def _kick_soon(self) -> None:
        """One kick after a burst of sends, not one per send (a job start sends 20,000): the
        receiver is on the same trio thread and cannot run before the burst ends anyway."""
        if self._kick_queued:
            return
        try:
            trio.lowlevel.current_trio_token().run_sync_soon(self._queued_kick)
        except RuntimeError:  # not in trio
            self._kick()
            return
        self._kick_queued = True

    def _queued_kick(self) -> None:
        self._kick_queued = False
        if self.closed:
            return
        try:
            self._kick()
        except zmq.ZMQError:  # closed under us: nothing left to wake
            pass

    def pending(self) -> bool:
        """Whether a message waits to be received (its receiver is behind, or about to run)."""
        waiting = bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        if waiting and self._park is not None:
            self._park.cancel()  # reading EVENTS may have taken the receiver's edge
        return waiting

    def _kick(self) -> None:
        if self._park is not None and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._park.cancel()

    async def recv_multipart(self) -> list[bytes]:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                pass
            else:
                self._since_checkpoint += 1 + len(frames[-1]) // FAIRNESS_BYTES
                if self._since_checkpoint >= FAIRNESS_BATCH:
                    self._since_checkpoint = 0
                    await trio.lowlevel.checkpoint()
                return frames
            self._since_checkpoint = 0
            with trio.CancelScope() as self._park:
                if not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await trio.lowlevel.wait_readable(self.fd)
            self._park = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        trio.lowlevel.notify_closing(self.fd)
        self.sock.close(linger=0)


async def handle_forever(
    sock: TrioSocket, handle: Callable[[list[bytes]], None], log: logging.Logger, what: str
) -> None:
    """Receive forever, handing each message to ``handle``: a bug in it is logged (as an error
    while handling ``what``) and must not take the socket's loop down."""
    while True:
        frames = await sock.recv_multipart()
        try:
            handle(frames)
        except Exception:
            log.exception("error while handling %s", what)


# ZAP (RFC 27): who may complete a CURVE handshake on this context's sockets ----------------
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def zap_verdict(frames: list[bytes], allowed: Callable[[str], bool], refusal: bytes) -> list[bytes]:
    """The reply to one ZAP request: 200 for a CURVE client whose z85 public key is
    ``allowed``, 400 with ``refusal`` for anything else."""
    version = frames[0] if frames else b"1.0"
    request_id = frames[1] if len(frames) > 1 else b""
    if len(frames) >= 7 and frames[5] == b"CURVE" and len(frames[6]) == 32:
        if allowed(zmq.utils.z85.encode(frames[6]).decode("ascii")):
            return [version, request_id, b"200", b"OK", b"", b""]
    return [version, request_id, b"400", refusal, b"", b""]


def zap_socket(ctx: zmq.Context) -> TrioSocket:
    """The context's ZAP handler socket, bound: libzmq asks it about every CURVE handshake."""
    zap = TrioSocket(ctx.socket(zmq.REP))
    zap.sock.linger = 0
    zap.sock.bind(ZAP_ENDPOINT)
    return zap


async def serve_zap(zap: TrioSocket, reply: Callable[[list[bytes]], list[bytes]]) -> None:
    """Answer ZAP requests with ``reply`` until cancelled; closes the socket."""
    try:
        while True:
            zap.send_nowait(reply(await zap.recv_multipart()))
    finally:
        zap.close()
