"""A standby of a PostgreSQL store: follows the log, answers 503, waits for the lease.

A standby binds the API port only (so a load balancer's health check can tell it from the
active: ``GET /pushy/_status`` answers 503 with ``"role": "standby"``; every other route 503
with a JSON error) and no ZeroMQ port. Meanwhile it applies every record the active writes
(``PgLog.wait_after``: a notification wakes it, the table says what is new), so that taking
over costs the records of the last moment, not a replay. It tries to take the lease every
second; once it has it, it reads what is left of the log and returns: the caller serves as the
active, as a restart would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import trio
from hypercorn.trio import serve as hypercorn_serve

from appliance import sdnotify
from appliance.server.store import Store
from appliance.server.tls import ServerTls, hypercorn_config
from appliance.store.errors import StorageError
from appliance.store.pglog import PgLog

log = logging.getLogger("pushy.standby")
ATTEMPT_SECONDS = 1.0  # how often a standby tries to take the lease
FOLLOW_WAIT_SECONDS = 0.5  # a follow step's wait for new records (also its cancel delay)
RETRY_AFTER = "5"


class LogGap(Exception):
    """The records after ours were deleted (the active's snapshots moved on): read again."""


class StandbyApp:
    """The standby's whole web front: an ASGI application of two answers."""

    def __init__(self, store: Store, pglog: PgLog) -> None:
        self.store = store
        self.pglog = pglog
        self.holder: str | None = None  # the active, as the last look at the lease said

    def status_body(self) -> dict[str, Any]:
        server = self.store.state.server
        return {
            "status": "standby",
            "role": "standby",
            "incarnation_id": server.incarnation if server else None,
            "seq": self.store.state.last_seq,  # how far it has followed the log
            "active": self.holder,
        }

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/pushy/_status":
            body = self.status_body()
        else:
            body = {
                "error": [
                    "this pushy server is a standby; the active server answers (try again "
                    "through the service's address)"
                ]
            }
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", RETRY_AFTER.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


async def stand_by(
    store: Store, pglog: PgLog, bind: str, stop: trio.Event, tls: ServerTls | None = None
) -> str:
    """Be a standby until this server holds the lease and has read the whole log
    (``"active"``), until ``stop`` is set (``"stopped"``), or until the log has moved past what
    it can follow (``"gap"``: the records after ours were deleted; read the log again)."""
    app = StandbyApp(store, pglog)
    hconfig = hypercorn_config(bind, tls)  # a standby answers over HTTPS too
    hconfig.graceful_timeout = 1
    web_done = trio.Event()
    gap: list[str] = []
    outcome = "stopped"
    async with trio.open_nursery() as nursery:

        async def web() -> None:
            try:
                await hypercorn_serve(app, hconfig, shutdown_trigger=web_done.wait)
            finally:
                web_done.set()

        nursery.start_soon(web)
        sdnotify.ready(f"standby: following the event log (at seq {store.state.last_seq})")
        log.info("standby: following the event log from seq %d", store.state.last_seq)
        with trio.CancelScope() as attempts:
            nursery.start_soon(_stop_on, stop, attempts)
            nursery.start_soon(_follow, store, pglog, gap, attempts)
            while True:
                try:
                    if await trio.to_thread.run_sync(pglog.try_acquire) is not None:
                        outcome = "active"
                        break
                    app.holder = (await trio.to_thread.run_sync(pglog.lease)).holder
                except StorageError as exc:
                    log.warning("standby: cannot reach the lease: %s", exc)
                await trio.sleep(ATTEMPT_SECONDS)
        nursery.cancel_scope.cancel()  # the follower (at most one wait step) and the web front
    if outcome == "active" and not gap:
        try:
            await trio.to_thread.run_sync(_catch_up, store, pglog)
        except LogGap as exc:
            gap.append(str(exc))
    if gap:
        log.warning("standby: %s: reading the log again", gap[0])
        if outcome == "active":
            await trio.to_thread.run_sync(pglog.release)  # taken again once the log is read
        return "gap"
    if outcome == "active":
        log.info("lease taken (epoch %s): active from seq %d", pglog.epoch, store.state.last_seq)
    return outcome


async def _stop_on(stop: trio.Event, scope: trio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


async def _follow(store: Store, pglog: PgLog, gap: list[str], done: trio.CancelScope) -> None:
    """Apply what the active writes; on a gap, say so in ``gap`` and end the standby."""
    complained = False
    while True:
        last = store.state.last_seq
        try:
            rows = await trio.to_thread.run_sync(pglog.wait_after, last, FOLLOW_WAIT_SECONDS)
        except StorageError as exc:
            if not complained:
                log.warning("standby: cannot read the event log (%s); retrying", exc)
                complained = True
            await trio.sleep(ATTEMPT_SECONDS)
            continue
        if complained:
            log.info("standby: reading the event log again")
            complained = False
        try:
            _apply(store, rows, last)
        except LogGap as exc:
            gap.append(str(exc))
            done.cancel()
            return


def _apply(store: Store, rows: list[tuple[int, int, bytes]], last: int) -> None:
    if rows and rows[0][0] != last + 1:
        raise LogGap(f"the log goes on at seq {rows[0][0]}, this standby is at {last}")
    store.follow(rows, now=time.time())


def _catch_up(store: Store, pglog: PgLog) -> None:
    """What the active wrote after the last follow step (blocking: before serving)."""
    while True:
        last = store.state.last_seq
        rows = list(pglog.read_after(last))
        if not rows:
            return
        _apply(store, rows, last)
