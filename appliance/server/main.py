"""``pushy server``: state directory, first-start keys, replay, and the supervising nursery.

The nursery tree (DESIGN.md "The shape") is visible in ``serve``: the event store's committer
outlives everything that writes; the web front end stops first on SIGTERM/SIGINT, then the
reactor and job supervisors, then the log is drained and closed.

Under systemd (``Type=notify``) the server says what it does through ``appliance.sdnotify``:
``STATUS=`` lines while it replays (with ``EXTEND_TIMEOUT_USEC`` while a long replay makes
progress), ``READY=1`` once the log is replayed and every socket is bound, ``WATCHDOG=1`` from
a task of the service nursery, ``STOPPING=1`` on SIGTERM/SIGINT. SIGHUP (``systemctl reload``)
re-reads ``--config`` and applies the settings that may change live
(``settings.LIVE_KEYS``), bracketed by ``RELOADING=1`` ... ``READY=1``; a file that cannot
be read or is invalid is logged and the running settings stay.

The name nodes are told to connect to (``server_name``) is checked before ``READY=1`` and at
every reload (``appliance.server.advertise``): a name that does not resolve, or not to a
listening address of this host, is a WARNING in the log, a ``; WARNING: ...`` in the STATUS
line and the ``advertised`` field of ``/pushy/_status``; nodes could not connect to it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import signal
import socket
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio
import zmq
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypercorn.trio import serve as hypercorn_serve

from appliance import sdnotify
from appliance.core import identity, records
from appliance.core import nodes as corenodes
from appliance.core import state as corestate
from appliance.core.keys import generate_rsa, load_private_pem, private_pem, public_pem
from appliance.core.settings import Settings, load_settings, reload_settings
from appliance.localserver import pushy_command
from appliance.server.advertise import Advertiser
from appliance.server.app import create_app
from appliance.server.clock import Clock
from appliance.server.context import ServerContext
from appliance.server.dispatcher import Dispatcher
from appliance.server.edgelaunch import LocalLink
from appliance.server.edges import EdgeHub
from appliance.server.feeds import Hub
from appliance.server.livejobs import LiveJobs
from appliance.server.outbound import NodeSigner, ServerBeat
from appliance.server.reactor import Reactor
from appliance.server.store import Store
from appliance.server.timers import Timers
from appliance.server.tls import TlsSetupError, hypercorn_config, server_tls

if TYPE_CHECKING:  # psycopg is imported only with a PostgreSQL store
    from appliance.server.lease import LeaseKeeper
    from appliance.server.pgoutputs import PgOutputs

log = logging.getLogger("pushy.server")
SUPERUSER = "pivotal"
# While replaying: tell systemd every this many seconds of progress to wait this much longer.
REPLAY_NOTIFY_SECONDS = 5.0
REPLAY_EXTEND_SECONDS = 30.0


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _key_file(path: Path, *, trusted: bool = False) -> tuple[object, bool]:
    """Load an RSA private key from ``path``, creating it (0600) on first start. ``trusted``:
    the server's own key, read at every start from its 0700 directory, skips OpenSSL's
    consistency check of the key (primality tests: tens of milliseconds of each start)."""
    if path.exists():
        return load_private_pem(path.read_bytes(), trusted=trusted), False
    key = generate_rsa(2048)
    _write_secret(path, private_pem(key))
    return key, True


def prepare_state_dir(settings: Settings) -> Path:
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    return state_dir


def founding_records(
    state: corestate.State, server_key: RSAPrivateKey, pivotal_path: Path, *, shared: bool = False
) -> list[dict[str, Any]]:
    """A first start's records: the server's identity and the superuser (whose key is made in
    ``pivotal_path``). ``shared`` (a PostgreSQL log): the RSA key itself goes in the log too."""
    pivotal_key, _ = _key_file(pivotal_path)
    curve_public, curve_secret = zmq.curve_keypair()
    founding = [
        records.server_init(
            incarnation=str(uuid.uuid4()),
            curve_public=curve_public.decode("ascii"),
            curve_secret=curve_secret.decode("ascii"),
            rsa_public_pem=public_pem(server_key),
            t=time.time(),  # before trio runs: the server's clock starts with the loop
        )
    ]
    if shared:
        founding.append(records.server_key(private_pem(server_key), public_pem(server_key)))
    founding += identity.bootstrap_superuser(
        state.identity, public_pem(pivotal_key), name=SUPERUSER
    )
    return founding


def open_store(
    settings: Settings,
    state_dir: Path,
    *,
    recover: bool,
    progress: Callable[[int], None] | None = None,
) -> tuple[Store, object]:
    """Replay the log; on first start write the server's identity and the superuser."""
    server_key, _ = _key_file(state_dir / "server.pem", trusted=True)
    pivotal_path = state_dir / "pivotal.pem"
    store = Store(
        state_dir,
        segment_max_bytes=settings.log_segment_max_bytes,
        retention_days=settings.job_retention_days,
        linger=settings.wait_complete_time,
    )
    # The replayed state is the long-lived heap: later full collections need not walk it (it
    # holds no reference cycles; objects dropped from it are still freed by reference counts).
    # Frozen before the collector runs again: its first run would otherwise walk all of it
    # (every object replay made is young), half a second for 100,000 jobs. The modules the
    # server imported are frozen with it (``pushy server`` pauses the collector before them).
    gc.disable()
    try:
        # the events are built in ``Dispatcher.resume`` for the jobs whose feed still shows them
        state = store.load(recover=recover, progress=progress, defer_events=True, now=time.time())
    finally:
        gc.freeze()
        gc.enable()
    if state.server is None:
        store.initialise(founding_records(state, server_key, pivotal_path))
        log.info("first start: created %s", state_dir)
    elif SUPERUSER not in state.identity.users:
        # the first start's batch was torn after server_init (or --recover cut there): without
        # this nobody could ever authenticate again
        pivotal_key, _ = _key_file(pivotal_path)
        store.initialise(
            identity.bootstrap_superuser(state.identity, public_pem(pivotal_key), name=SUPERUSER)
        )
        log.warning(
            "the superuser '%s' was missing from the event log: created it again", SUPERUSER
        )
    log.info("superuser '%s' key: %s", SUPERUSER, pivotal_path)
    return store, server_key


def run_server(
    settings: Settings,
    *,
    recover: bool = False,
    ready_file: Path | None = None,
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    local: LocalLink | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. ``config`` and ``overrides`` (the command line's settings)
    are what a reload (SIGHUP) re-reads, exactly as at start. ``local``: the edge link and
    the edges started before the state was loaded (``edgelaunch``), adopted here."""
    # a SIGHUP before the loop listens for it must not kill the server (default action)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        sdnotify.status(f"replaying the event log in {settings.state_dir}")
        state_dir = prepare_state_dir(settings)
        store, server_key = open_store(
            settings, state_dir, recover=recover, progress=_replay_progress()
        )
        sdnotify.status(f"event log replayed (at seq {store.state.last_seq}); binding sockets")
        try:
            trio.run(
                partial(
                    serve,
                    settings,
                    store,
                    server_key,
                    ready_file=ready_file,
                    config=config,
                    overrides=overrides,
                    local=local,
                )
            )
        finally:
            store.log.close()
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
    return 0


def _replay_progress() -> Callable[[int], None]:
    """A replay progress hook: every few seconds, a STATUS line and more start-up time."""
    last = time.monotonic()

    def progress(count: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= REPLAY_NOTIFY_SECONDS:
            last = now
            sdnotify.status(f"replaying the event log: {count} records")
            sdnotify.extend_timeout(REPLAY_EXTEND_SECONDS)

    return progress


def read_settings(
    config: Path | None, overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, list[str]]:
    """The settings from ``config`` (TOML) and ``overrides``, as at start. Raises OSError or
    ValueError (bad TOML, bad encoding, ``SettingsError``)."""
    data = tomllib.loads(config.read_text(encoding="utf-8")) if config is not None else {}
    return load_settings(data, overrides)


def build_context(
    settings: Settings,
    store: Store,
    server_key,
    *,
    clock: Clock,
    advertiser: Advertiser,
    hostname: str,
    local: LocalLink | None = None,
    outputs: PgOutputs | None = None,
) -> ServerContext:
    """The server's parts, wired once: the reactor (sockets) and the timers hand their inputs to
    the dispatcher, which alone changes jobs and nodes (see docs/architecture.md)."""
    state = store.state
    p = settings
    table = corenodes.NodeTable(
        corenodes.Liveness(
            interval=p.heartbeat_interval / 1000.0,
            decay_window=p.decay_window,
            threshold=p.down_threshold,
            rehab_interval=p.rehab_timer / 1000.0,
            tick=p.heartbeat_seconds / 4,
        )
    )
    signer = NodeSigner(state, table)
    assert state.server is not None  # open_store wrote the server's identity
    beat = ServerBeat(server_key, hostname, state.server.incarnation)
    edges = settings.edge_count(
        os.cpu_count(), len(state.node_keys), resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    )
    sockets: Reactor | EdgeHub
    if edges:
        table.params = dataclasses.replace(table.params, at_edges=True)
        sockets = EdgeHub(
            settings,
            state,
            clock,
            signer=signer,
            beat=beat,
            state_dir=Path(settings.state_dir),
            count=edges,
            command=[*pushy_command(), "edge"],
            local=local,
        )
    else:
        sockets = Reactor(
            settings, state, clock, curve_secret=state.server.curve_secret, signer=signer, beat=beat
        )
    hub = Hub()
    dispatcher = Dispatcher(
        settings,
        state,
        store,
        table,
        sockets,
        hub=hub,
        clock=clock,
        live=LiveJobs(state),
        advertiser=advertiser,
        outputs=outputs,
    )
    if isinstance(sockets, EdgeHub):
        sockets.dispatcher = dispatcher
        sockets.live_jobs = lambda: list(dispatcher.live)
        dispatcher.live.on_change = sockets.jobs_changed
    timers = Timers(settings, dispatcher, clock)
    return ServerContext(
        settings, state, store, sockets, dispatcher, timers, server_key, advertiser, clock, hub
    )


async def start_core(ctx: ServerContext, nursery: trio.Nursery) -> None:
    """Start the clock, the sockets and the timers in ``nursery`` (the log's committer must
    already run): the server takes node messages once this returns."""
    nursery.start_soon(ctx.clock.follow)
    ctx.dispatcher.resume(ctx.clock.now())
    ctx.ports.update(await nursery.start(ctx.reactor.run, ctx.dispatcher.node_message))
    await ctx.advertiser.check(ctx.settings, ctx.ports)  # before READY: a bad name is reported
    await nursery.start(ctx.timers.run)


async def serve(
    settings: Settings,
    store: Store,
    server_key,
    *,
    ready_file: Path | None,
    config: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    local: LocalLink | None = None,
    lease: LeaseKeeper | None = None,
    outputs: PgOutputs | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, or (``lease``: a PostgreSQL store's active) until the lease
    is lost. ``outputs``: where live output goes when it is not the state directory."""
    clock = Clock()
    # the running server_name; checked (and the FQDN looked up) once the ports are bound
    advertiser = Advertiser(settings.server_name or socket.gethostname())
    hostname = socket.gethostname().split(".")[0]
    ctx = build_context(
        settings,
        store,
        server_key,
        clock=clock,
        advertiser=advertiser,
        hostname=hostname,
        local=local,
        outputs=outputs,
    )
    ctx.lease = lease
    p = settings
    async with trio.open_nursery() as root:
        await root.start(store.run, clock)
        async with trio.open_nursery() as services:
            services.start_soon(_watch_signals, ctx, partial(read_settings, config, overrides))
            services.start_soon(sdnotify.watchdog_task)
            services.start_soon(ctx.dispatcher.outputs.sync_forever)
            services.start_soon(ctx.dispatcher.send_synced_runs)
            store.on_pruned = ctx.dispatcher.outputs.remove
            if lease is not None:
                services.start_soon(lease.hold, ctx.shutdown)
            await start_core(ctx, services)
            ctx.tls = server_tls(p)
            hconfig = hypercorn_config(_bind_address(p.api_listen_address, p.api_port), ctx.tls)
            # in-flight requests are short and SSE streams end themselves at shutdown; hypercorn
            # also waits this long for idle keep-alive connections, so keep it small
            hconfig.graceful_timeout = 2
            app = create_app(ctx)
            async with trio.open_nursery() as web:
                binds = await web.start(
                    partial(hypercorn_serve, app, hconfig, shutdown_trigger=ctx.shutdown.wait)
                )
                ctx.ports["api_port"] = int(binds[0].rsplit(":", 1)[1])
                _announce(ctx, binds, ready_file)
            services.cancel_scope.cancel()
        ctx.reactor.close()
        await ctx.dispatcher.outputs.sync()
        store.close()  # the committer drains the queue, then the root nursery ends
    if lease is not None:
        await lease.stopped()
    log.info("pushy server stopped")


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _announce(ctx: ServerContext, binds: list[str], ready_file: Path | None) -> None:
    info = {
        "api": binds[0],
        "api_port": ctx.ports["api_port"],
        "command_port": ctx.ports["command_port"],
        "server_heartbeat_port": ctx.ports["server_heartbeat_port"],
        "incarnation_id": ctx.state.server.incarnation if ctx.state.server else None,
        "pid": os.getpid(),
    }
    if "edge_link_port" in ctx.ports:  # edge mode: where edges on other hosts connect
        info["edge_link_port"] = ctx.ports["edge_link_port"]
    log.info(
        "pushy server ready: api %s, command port %d, heartbeat port %d",
        binds[0],
        info["command_port"],
        info["server_heartbeat_port"],
    )
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(info))
        os.replace(tmp, ready_file)
    sdnotify.ready(_status_line(ctx))


def _status_line(ctx: ServerContext) -> str:
    return (
        f"serving {len(ctx.state.identity.orgs)} orgs, {len(ctx.state.node_keys)} nodes known, "
        f"api :{ctx.ports['api_port']}, commands :{ctx.ports['command_port']}"
        + ctx.advertiser.status_suffix()
    )


async def _watch_signals(
    ctx: ServerContext, reread: Callable[[], tuple[Settings, list[str]]]
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                await reload(ctx, reread)
                continue
            log.info("received %s, shutting down", name)
            sdnotify.stopping(f"shutting down ({name})")
            ctx.shutdown.set()
            return


async def reload(ctx: ServerContext, reread: Callable[[], tuple[Settings, list[str]]]) -> None:
    """SIGHUP: re-read the settings, apply the live ones, report the rest, check server_name
    again (the fix for a bad one may be in DNS or /etc/hosts, not in our file); never fatal."""
    log.info("received SIGHUP, re-reading the configuration")
    sdnotify.reloading("reloading the configuration")
    applied = _reload_settings(ctx, reread)
    await ctx.advertiser.check(ctx.settings, ctx.ports)
    sdnotify.ready(_status_line(ctx) + ("" if applied else "; the last reload failed"))


def _reload_settings(ctx: ServerContext, reread: Callable[[], tuple[Settings, list[str]]]) -> bool:
    """Re-read and apply the live settings; False (logged) when the file cannot be used."""
    try:
        loaded, warnings = reread()
    except OSError as exc:
        log.error("reload failed, keeping the running settings: cannot read the config: %s", exc)
        return False
    except ValueError as exc:  # bad TOML or encoding, or a bad setting (SettingsError)
        log.error("reload failed, keeping the running settings: %s", exc)
        return False
    for warning in warnings:
        log.warning("reload: %s", warning)
    settings, changed, restart = reload_settings(ctx.settings, loaded)
    if ctx.tls is not None and settings.api_tls_cert and settings.api_tls_key:
        try:
            for warning in ctx.tls.reload(settings.api_tls_cert, settings.api_tls_key):
                log.warning("reload: %s", warning)
        except TlsSetupError as exc:
            log.error("reload failed, keeping the running settings and certificate: %s", exc)
            return False
        log.info("reload: the API certificate was loaded again from %s", settings.api_tls_cert)
    apply_settings(ctx, settings)
    if changed:
        applied = ", ".join(f"{key} = {getattr(settings, key)!r}" for key in changed)
        log.info("reload: applied %s", applied)
    else:
        log.info("reload: no live setting changed")
    if restart:
        log.warning(
            "reload: %s changed in the config but needs a restart; the running value stays",
            ", ".join(restart),
        )
    return True


def apply_settings(ctx: ServerContext, settings: Settings) -> None:
    """Make ``settings`` the running ones wherever a live setting is read (see LIVE_KEYS)."""
    ctx.settings = ctx.dispatcher.settings = ctx.timers.settings = settings
    ctx.reactor.apply_settings(settings)
    ctx.store.retention = settings.job_retention_days * 86400.0
    ctx.store.linger = settings.wait_complete_time
    table = ctx.dispatcher.table
    table.params = dataclasses.replace(table.params, rehab_interval=settings.rehab_seconds)
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
