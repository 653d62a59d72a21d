"""``pushy server`` with a PostgreSQL ``store``: one active among any number of servers.

Every server starts as a standby (``server.standby``): it replays the log from the database,
follows it, and takes the lease when the active's has expired (or was given up). Then it
reads the rest of the log and serves exactly as a restarted server would (``server.main``'s
``serve``: the live jobs resume, the nodes that were up are waited for), with the lease kept by
``server.lease``. A server that loses the lease stops serving and starts over as a standby,
from a fresh read of the log: whatever it had in memory and never wrote is gone with it, as
after a kill -9. Its identity (CURVE and RSA keys, incarnation) is the log's, so the nodes see
the same server whichever process serves them.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from appliance import sdnotify
from appliance.core import identity, records
from appliance.core.keys import generate_rsa, load_private_pem, private_pem, public_pem
from appliance.core.settings import Settings
from appliance.server import main, standby
from appliance.server.lease import LeaseKeeper
from appliance.server.pgoutputs import PgOutputs
from appliance.server.store import Store
from appliance.server.tls import server_tls
from appliance.store.errors import StorageError
from appliance.store.pglog import PgLog
from appliance.store.pgstore import open_pglog

log = logging.getLogger("pushy.server")
OPEN_RETRY_SECONDS = (1.0, 2.0, 5.0)  # waits between attempts to reach the database at start


def run_ha(
    settings: Settings,
    *,
    ready_file: Path | None = None,
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, standby or active, as often as the lease comes and goes."""
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    state_dir = main.prepare_state_dir(settings)
    try:
        while True:
            store = _open(settings, state_dir)
            try:
                again = trio.run(
                    _session, settings, store, state_dir, ready_file, config, overrides
                )
            finally:
                store.log.close()
            if not again:
                return 0
            gc.unfreeze()  # the state of the session that ended goes
            log.info("starting over as a standby: reading the event log again")
    finally:
        signal.signal(signal.SIGHUP, previous_hup)


def _open(settings: Settings, state_dir: Path) -> Store:
    """A store replayed from the database, waiting for the database as long as it takes."""
    url = settings.store_url
    assert url is not None
    attempt = 0
    while True:
        pglog = open_pglog(
            url,
            settings.store_password_file,
            lease_seconds=settings.lease_timeout,
            segment_max_bytes=settings.log_segment_max_bytes,  # a snapshot every this many
        )
        store = Store(
            state_dir,
            segment_max_bytes=settings.log_segment_max_bytes,
            retention_days=settings.job_retention_days,
            linger=settings.wait_complete_time,
            log=pglog,
        )
        store.password_file = settings.store_password_file
        sdnotify.status(f"replaying the event log from {pglog.where()}")
        gc.disable()  # as in main.open_store: the replayed state is frozen, not walked
        try:
            store.load(defer_events=True, now=time.time())
        except StorageError as exc:
            pglog.close()
            gc.enable()
            wait = OPEN_RETRY_SECONDS[min(attempt, len(OPEN_RETRY_SECONDS) - 1)]
            attempt += 1
            log.warning("cannot read the event log (%s); trying again in %.0f s", exc, wait)
            sdnotify.status(f"waiting for the database: {exc}")
            time.sleep(wait)
            continue
        gc.freeze()
        gc.enable()
        return store


async def _session(
    settings: Settings,
    store: Store,
    state_dir: Path,
    ready_file: Path | None,
    config: Path | None,
    overrides: Mapping[str, Any] | None,
) -> bool:
    """One standby-then-active run; True when the lease was lost (start over)."""
    pglog = store.log
    assert isinstance(pglog, PgLog)
    stop = trio.Event()
    bind = main._bind_address(settings.api_listen_address, settings.api_port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, stop)
        nursery.start_soon(sdnotify.watchdog_task)  # a standby is watched as well
        outcome = await standby.stand_by(store, pglog, bind, stop, server_tls(settings))
        nursery.cancel_scope.cancel()
    if outcome == "gap":
        return True
    if outcome == "stopped":
        log.info("pushy server (standby) stopped")
        return False
    store.start_writing()
    outputs = PgOutputs(pglog, settings.max_output_bytes)
    lease = LeaseKeeper(pglog)
    try:
        server_key = await trio.to_thread.run_sync(_identity, store, state_dir)
        await outputs.preload(j.id for j in store.state.jobs.values() if j.finished_at is None)
        sent = trio.current_time()
        await trio.to_thread.run_sync(pglog.renew)  # a whole lease ahead as it starts serving
        lease.confirmed = sent
        await main.serve(
            settings,
            store,
            server_key,
            ready_file=ready_file,
            config=config,
            overrides=overrides,
            lease=lease,
            outputs=outputs,
        )
    except StorageError as exc:  # the lease or the database went while it got ready
        log.error("could not become active: %s", exc)
        return True
    finally:
        outputs.close()
    return lease.lost is not None


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            sdnotify.stopping("shutting down")
            stop.set()
            return


def _identity(store: Store, state_dir: Path) -> Any:
    """The server's RSA key, from the log; written there first if the log has none yet (a
    first start, or a log that ``migrate-store`` copied without ``server.pem``)."""
    state = store.state
    pivotal_path = state_dir / "pivotal.pem"
    if state.server is None:
        key = generate_rsa(2048)
        store.initialise(main.founding_records(state, key, pivotal_path, shared=True))
        log.info("first start: the server's identity is in the database")
        log.info("superuser '%s' key: %s", main.SUPERUSER, pivotal_path)
        return key
    if state.server.rsa_private_pem is None:
        key = generate_rsa(2048)
        store.initialise([records.server_key(private_pem(key), public_pem(key))])
        log.warning("the event log held no server key: made one (nodes fetch it with the config)")
        return key
    if main.SUPERUSER not in state.identity.users:
        pivotal, _ = main._key_file(pivotal_path)
        store.initialise(
            identity.bootstrap_superuser(state.identity, public_pem(pivotal), name=main.SUPERUSER)
        )
    return load_private_pem(state.server.rsa_private_pem, trusted=True)
