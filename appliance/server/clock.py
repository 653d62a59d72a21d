"""The server's one clock: wall-clock seconds read from trio's clock.

Records, message timestamps and tokens need wall-clock time; timers need trio's clock. Reading
both from one source means a deadline computed from a logged time ("voting started at T, ends
at T + 60") is a trio deadline too, so a test running the server under ``trio.testing.MockClock``
drives every timeout, liveness scan and expiry in virtual time. In production the offset follows
the system clock (``follow`` re-reads it every second), so a stepped wall clock is picked up as
before.
"""

from __future__ import annotations

import time

import trio

FOLLOW_SECONDS = 1.0


class Clock:
    def __init__(self, *, start: float | None = None, follow_system: bool = True) -> None:
        """``start``: the wall time at trio time 0 (tests); default: now, following the system."""
        self._start = start
        self.follow_system = follow_system and start is None
        self._offset: float | None = None

    def _anchor(self) -> float:
        if self._offset is None:
            base = self._start if self._start is not None else time.time() - trio.current_time()
            self._offset = base
        return self._offset

    def now(self) -> float:
        """Wall-clock seconds (inside ``trio.run``)."""
        return self._anchor() + trio.current_time()

    def trio_time(self, wall: float) -> float:
        """The trio time at which the wall clock reads ``wall`` (for ``move_on_at``)."""
        return wall - self._anchor()

    async def sleep_until(self, wall: float) -> None:
        await trio.sleep_until(self.trio_time(wall))

    async def follow(self) -> None:
        """Keep the offset on the system clock (an NTP step, a suspended VM); a no-op under a
        test's fixed start."""
        if not self.follow_system:
            await trio.sleep_forever()
        while True:
            self._offset = time.time() - trio.current_time()
            await trio.sleep(FOLLOW_SECONDS)
