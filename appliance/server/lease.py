"""The active server's lease on a PostgreSQL store: renewed while it serves, given up at a stop.

The database decides who is active (``store.pglog``: a time-based lease, every append fenced
by its epoch). This task renews it every quarter of ``lease_timeout`` and stops the server
(it then starts over as a standby) as soon as it cannot be sure to hold it:

- a renewal says another server took it (`Fenced`), or an append found it gone;
- the log holds records this server was told had failed (`Diverged`): it must read them;
- no renewal got through for ``lease_timeout``: a standby may have taken over meanwhile.

The last rule is what keeps a server cut off from the database from serving nodes beside its
successor; a database restart shorter than the lease goes by without a step down.
"""

from __future__ import annotations

import logging

import trio

from appliance.store.errors import StorageError
from appliance.store.pglog import Fenced, PgLog

log = logging.getLogger("pushy.lease")


class LeaseKeeper:
    def __init__(self, pglog: PgLog) -> None:
        self.pglog = pglog
        self.lost: str | None = None  # why the server stepped down (None: it did not)
        self.confirmed = trio.current_time()  # when the last renewal that got through was sent

    def valid(self) -> bool:
        """Whether this server is sure to hold the lease now (by its own clock: the last
        renewal that got through was sent less than ``lease_timeout`` ago)."""
        return self.lost is None and trio.current_time() - self.confirmed < self.seconds

    @property
    def seconds(self) -> float:
        return self.pglog.lease_seconds

    async def hold(self, stop: trio.Event) -> None:
        """Renew until the lease is lost, then say why and set ``stop``."""
        pglog = self.pglog
        warned = False
        while self.lost is None:
            await trio.sleep(self.seconds / 4)
            if pglog.diverged:
                self.lost = "the event log holds records this server did not know of"
                break
            if pglog.epoch is None:
                self.lost = "an append found the lease taken by another server"
                break
            sent = trio.current_time()
            try:
                await trio.to_thread.run_sync(pglog.renew)
            except Fenced as exc:
                self.lost = str(exc)
            except StorageError as exc:
                late = trio.current_time() - self.confirmed
                if late >= self.seconds:
                    self.lost = f"no renewal got through for {late:.1f} s ({exc})"
                elif not warned:
                    warned = True
                    log.warning("cannot renew the lease (%s); retrying", exc)
            else:
                self.confirmed = sent
                if warned:
                    warned = False
                    log.info("the lease is renewed again")
        log.error("stepping down to standby: %s", self.lost)
        stop.set()

    async def stopped(self) -> None:
        """The server stopped serving: a clean stop gives the lease up at once (a standby
        need not wait for it to expire); after a divergence too, so that this process takes
        it back as soon as it has read the log again."""
        if self.lost is not None and not self.pglog.diverged:
            return
        try:
            await trio.to_thread.run_sync(self.pglog.release)
            log.info("lease released")
        except StorageError as exc:
            log.warning("could not release the lease (it expires by itself): %s", exc)
