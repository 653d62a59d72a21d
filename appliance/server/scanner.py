"""The liveness scanner's loop, shared by the server (single-process mode) and the edges."""

from __future__ import annotations

from collections.abc import Callable

import trio

from appliance.server.clock import Clock


async def watch_liveness(
    tick: float,
    every: Callable[[], float],
    clock: Clock,
    attend: Callable[[float], None],
    scan: Callable[[float], None],
    behind: Callable[[], bool],
) -> None:
    """The liveness scanner of a node table (the server's or an edge's).

    It reads the time every ``tick``, so that the table tells its own standstills from a node's
    silence (``liveness.Attention``), and scans every ``every()`` seconds once nothing waits to
    be read: after a long step the nodes' beats are queued, not missing, and reading them is
    what tells. A backlog that never drains delays a scan by one period at most."""
    due = trio.current_time() + every()
    while True:
        await trio.sleep(tick)
        now = clock.now()
        attend(now)
        late = trio.current_time() - due
        if late < 0 or (behind() and late < every()):
            continue
        due = trio.current_time() + every()
        scan(now)
