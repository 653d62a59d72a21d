"""pyzmq under trio: one receiving task per socket parks on the socket's edge-triggered FD.

libzmq's FD only signals that the socket's command queue changed; readiness must be read from
``EVENTS`` after every wake, and a send from another task can swallow the receiver's edge, so
each send re-checks ``EVENTS`` and kicks a parked receiver (stack-notes.md §1a).
"""

from __future__ import annotations

import trio
import zmq

FAIRNESS_BATCH = 64


class TrioSocket:
    """A zmq socket used from trio tasks: NOBLOCK sends from any task, one receiver task."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self._park: trio.CancelScope | None = None
        self._since_checkpoint = 0
        self.closed = False

    def send_nowait(self, frames: list[bytes]) -> bool:
        """Queue a multipart message; False if it could not be queued (HWM, unknown peer)."""
        if self.closed:
            return False
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            sent = True
        except zmq.Again:
            sent = False
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK, zmq.ETERM):
                sent = False
            else:
                raise
        self._kick()
        return sent

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
                self._since_checkpoint += 1
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
