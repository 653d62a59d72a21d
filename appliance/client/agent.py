"""The node agent: the supervising loop of one client process (configuration, the connection
to the server, heartbeats, reconfigures, jobs).

One trio nursery per process. A *connection* is one fetched configuration with its session key
and its two sockets (DEALER for commands, SUB for server heartbeats); a reconfigure replaces the
whole connection (never two at once, never while a job is committed or running) and tears the
old sockets down. The job state machine (``jobstate``) decides; this module carries it out, with
``fetch`` (the configuration), ``channel`` (sockets and messages), ``probe`` (why a channel is
silent) and ``jobrun`` (one job's process).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
import urllib.parse
import uuid
from typing import Any

import trio
import zmq

from appliance import sdnotify
from appliance.client import fetch, jobfile, jobrun, jobstate, probe, runner, whitelist
from appliance.client.channel import (
    SEND_FAILURE_DEADLINE_SECONDS,
    WATCHDOG_SECONDS,
    Connection,
    check_inbound,
    command_sockets,
    jittered,
    lifetime_seconds,
    outbound_frames,
)
from appliance.client.config import ClientConfig, ConfigError, load_config
from appliance.client.liveoutput import LiveOutput
from appliance.client.serverwatch import ServerWatch
from appliance.core.keys import load_private_pem
from appliance.core.output import STREAMS, chunk_fields
from appliance.zmqio import TrioSocket

log = logging.getLogger("pushy.client")

POLL_SECONDS = 5.0


class Agent:
    """One node client: its identity and keys, the current connection, the job state."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        flags: dict[str, Any] | None = None,
        hostname: str | None = None,
    ) -> None:
        self.config = config
        self.flags = dict(flags or {})  # the command line's explicit flags, kept for reloads
        self.node = config.node_name or socket.getfqdn()
        self.hostname = hostname or socket.gethostname().split(".")[0]
        self.org = config.org
        self.incarnation = str(uuid.uuid4())
        self.key_pem = open(config.client_key, encoding="ascii").read()
        self.private_key = load_private_pem(self.key_pem)
        self.curve_public, self.curve_secret = zmq.curve_keypair()
        self.ctx = zmq.Context(io_threads=1)
        self.jobs = jobstate.JobState(max_body_size=config.max_body_size)
        self.conn: Connection | None = None
        self.watch = ServerWatch()  # missed server heartbeats, per connection
        self.lock: runner.Lock | None = None
        # A job's result not known to have left: not queued (the send queue was full: None),
        # or queued on a connection that the server has not spoken on since, so a reconfigure
        # may have dropped it with the socket. Sent again on the next connection, so that a
        # server that was away (and resumed the job) learns how the job ended.
        self.unsent: tuple[jobstate.Reply, Connection | None] | None = None
        self.kill_events: dict[str, trio.Event] = {}
        self.live_outputs: dict[str, LiveOutput] = {}  # job id -> its live output (acks)
        self.stopping = trio.Event()
        self.reconfigure_due: float | None = None  # monotonic deadline of the next reconfigure
        # the server went offline: reconnect now even while a job runs (beyond the original,
        # which waits for the job: the output and result of a long job would go to a server
        # that is gone, while a standby has taken over behind the same name)
        self.reconfigure_during_job = False
        self._reconfigure_now = trio.Event()
        self._nursery: trio.Nursery | None = None

    # Lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        log.info("[%s] Using node name: %s", self.node, self.node)
        log.info("[%s] Using org name: %s", self.node, self.org)
        log.info("[%s] Using Chef server: %s", self.node, self.config.chef_server_url)
        log.info("[%s] Using private key: %s", self.node, self.config.client_key)
        self._warn_if_key_exposed()
        log.info("[%s] Incarnation ID: %s", self.node, self.incarnation)
        log.info(
            "[%s] Allowing fallback to unencrypted connection: %s",
            self.node,
            str(self.config.allow_unencrypted).lower(),
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._signals)
                nursery.start_soon(sdnotify.watchdog_task)
                # ready means "running": a node that boots before its server must not fail
                sdnotify.ready(f"connecting to {self._server_host()} as {self.node}")
                published = False
                while not self.stopping.is_set():
                    conn = await fetch.fetch_until_it_works(
                        self._fetch_config, self.node, self.stopping, self._explain_refusal
                    )
                    if conn is None:
                        break
                    if not published:
                        published = True
                        nursery.start_soon(self._publish_node_record)
                    try:
                        await self._serve(conn)
                    except zmq.ZMQError as exc:  # e.g. an address in the config zmq refuses
                        log.error("[%s] cannot open the connection: %s", self.node, exc)
                        with trio.move_on_after(fetch.BACKOFF_MAX_SECONDS / 4):
                            await self.stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.conn is not None:
                self.conn.close()
            self.ctx.destroy(linger=0)
            if self.lock is not None:
                self.lock.release()

    def _warn_if_key_exposed(self) -> None:
        """Say so (as ssh would; Chef does not check) when others may read the node's key."""
        try:
            mode = os.stat(self.config.client_key).st_mode
        except OSError:
            return
        if mode & 0o077:
            log.warning(
                "[%s] The private key %s is accessible to group or others (mode %04o): "
                "anyone who reads it can act as this node; chmod 600 it",
                self.node,
                self.config.client_key,
                mode & 0o7777,
            )

    def stop(self) -> None:
        sdnotify.stopping("shutting down")
        self.stopping.set()
        for event in self.kill_events.values():
            event.set()
        self._reconfigure_now.set()

    def request_reconfigure(
        self, reason: str, *, delay: float = 0.0, during_job: bool = False
    ) -> None:
        """Schedule a reconfigure (de-duplicated: the earliest request wins). ``during_job``:
        do not wait for a running job to end (it goes on over the new connection)."""
        due = time.monotonic() + delay
        if during_job:
            self.reconfigure_during_job = True
        if self.reconfigure_due is None or due < self.reconfigure_due:
            log.info("[%s] reconfigure in %.1f s: %s", self.node, delay, reason)
            self.reconfigure_due = due
            self._reconfigure_now.set()

    # Configuration ---------------------------------------------------------------------------
    async def _fetch_config(self) -> Connection:
        """One fetch with the configuration of now (a HUP may have re-read it since)."""
        self._reread_key()
        return await fetch.fetch_config(
            self.config,
            node=self.node,
            key_pem=self.key_pem,
            private_key=self.private_key,
            curve_public=self.curve_public,
        )

    def _reread_key(self) -> None:
        """Take the key file's new contents (a key copied in place to fix a refusal, or a HUP
        naming another file); a file that cannot be read or parsed keeps the key in use."""
        path = self.config.client_key
        try:
            with open(path, encoding="ascii") as handle:
                pem = handle.read()
            if pem == self.key_pem:
                return
            private_key = load_private_pem(pem)
        except (OSError, ValueError) as exc:
            log.warning("[%s] keeping the key in use: cannot load %s: %s", self.node, path, exc)
            return
        log.info("[%s] Using the new private key in %s", self.node, path)
        self.key_pem, self.private_key = pem, private_key

    def _explain_refusal(self, exc: fetch.Refused) -> str:
        return fetch.refusal_advice(
            exc,
            node=self.node,
            org=self.org,
            server_url=self.config.chef_server_url,
            key_file=self.config.client_key,
        )

    async def _publish_node_record(self) -> None:
        """PUT (or create) this node's record so the server can search nodes."""
        await fetch.publish_node_record(self.config, node=self.node, key_pem=self.key_pem)

    # One connection --------------------------------------------------------------------------
    async def _serve(self, conn: Connection) -> None:
        hb = conn.config["push_jobs"]["heartbeat"]
        curve = None if conn.legacy else (conn.config, self.curve_public, self.curve_secret)
        dealer, sub = command_sockets(self.ctx, hb, curve)
        conn.dealer, conn.sub = TrioSocket(dealer), TrioSocket(sub)
        old, self.conn = self.conn, conn
        if old is not None:
            old.close()
        self.reconfigure_due = time.monotonic() + lifetime_seconds(conn.config)
        self.reconfigure_during_job = False
        self.watch = ServerWatch.from_heartbeat_config(hb)
        for live in self.live_outputs.values():
            live.server_restarted()  # the acks owed on the old connection may never come
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_commands, conn)
                nursery.start_soon(self._receive_heartbeats, conn)
                nursery.start_soon(self._heartbeat, conn)
                if not conn.legacy:
                    nursery.start_soon(self._watchdog, conn)
                await self._wait_for_reconfigure()
                nursery.cancel_scope.cancel()
        finally:
            conn.close()

    async def _wait_for_reconfigure(self) -> None:
        """Return when a reconfigure is due and no job is committed or running (or at stop)."""
        delaying_logged = False
        while not self.stopping.is_set():
            self._reconfigure_now = trio.Event()
            due = self.reconfigure_due
            if due is not None and time.monotonic() >= due:
                if self.jobs.state == "idle":
                    return
                if self.reconfigure_during_job:
                    log.info(
                        "[%s] Server offline: reconnecting while job %s goes on",
                        self.node,
                        self.jobs.heartbeat_fields()[1],
                    )
                    return
                if not delaying_logged:
                    log.info("[%s] Job in flight, delaying reconfigure", self.node)
                    delaying_logged = True
            wait = (
                POLL_SECONDS if due is None else max(0.0, min(POLL_SECONDS, due - time.monotonic()))
            )
            with trio.move_on_after(wait):
                await self._reconfigure_now.wait()

    async def _watchdog(self, conn: Connection) -> None:
        """A failed CURVE handshake is silent: the server always says something soon. So is an
        address that does not resolve or answer here: say which one it is before guessing."""
        with trio.move_on_after(WATCHDOG_SECONDS):
            await conn.got_command_message.wait()
            return
        await self._diagnose_once(conn)
        log.error(
            "[%s] No messages being received on command port in %.0fs.  "
            "Possible encryption problem?",
            self.node,
            WATCHDOG_SECONDS,
        )
        self.request_reconfigure("no message on the command channel")

    async def _diagnose_once(self, conn: Connection) -> None:
        """Log whether this node can reach the config's addresses, once per connection.

        Two tasks notice a silent connection, at about the same time with the default 1 s
        heartbeat interval: the watchdog, and the heartbeat loop finding no server heartbeats.
        The first to ask probes; the other waits for its lines, so that whichever reconfigures
        first (and so cancels the other) does it after they are logged."""
        if conn.diagnosed is not None:
            await conn.diagnosed.wait()
            return
        conn.diagnosed = trio.Event()
        try:
            await self._diagnose_addresses(conn)
        finally:
            conn.diagnosed.set()

    async def _diagnose_addresses(self, conn: Connection) -> None:
        """Log whether this node can reach both addresses of the config."""
        hb = conn.config["push_jobs"]["heartbeat"]
        for level, text in await probe.diagnose(str(hb["command_addr"]), str(hb["out_addr"])):
            log.log(level, "[%s] %s", self.node, text)

    async def _heartbeat(self, conn: Connection) -> None:
        """Send a heartbeat every interval while the server is online; detect it going away."""
        sent = 0
        while True:
            tick = self.watch.tick()
            if tick.went_offline:
                log.info(
                    "[%s] Server has missed %d heartbeats in a row.  Considering it offline, "
                    "and stopping heartbeat.",
                    self.node,
                    tick.missed,
                )
                if not conn.got_command_message.is_set():  # never heard: the address?
                    await self._diagnose_once(conn)
                self.request_reconfigure("server offline", during_job=True)
                sdnotify.status(f"server {self._server_host()} offline, reconnecting")
            if self.watch.online:  # read again: server heartbeats may have come meanwhile
                sent += 1
                if sent <= 3:
                    log.info("[%s] Sending heartbeat %d (logging first 3)", self.node, sent)
                if self.unsent is not None and self.unsent[1] is not conn:
                    self._send_result(conn, self.unsent[0])
                job_state, job_id = self.jobs.heartbeat_fields()
                self.send(conn, "heartbeat", job_id, job_state=job_state)
            await trio.sleep(conn.interval)

    async def _receive_heartbeats(self, conn: Connection) -> None:
        assert conn.sub is not None
        received = 0
        while True:
            frames = await conn.sub.recv_multipart()
            body = self._check(conn, frames)
            if body is None or body.get("type") != "heartbeat":
                continue
            received += 1
            if received <= 3:
                log.info(
                    "[%s] Received server heartbeat (sequence #%s) logging %d/3",
                    self.node,
                    body.get("sequence"),
                    received,
                )
            if self.watch.server_heartbeat():
                log.info("[%s] Server is online again: starting to heartbeat", self.node)
            if body.get("incarnation_id") != conn.incarnation:
                for live in self.live_outputs.values():
                    live.server_restarted()  # what it had not acknowledged: again, now
                log.info(
                    "[%s] Server restart detected (incarnation %s, was %s)",
                    self.node,
                    body.get("incarnation_id"),
                    conn.incarnation,
                )
                self.request_reconfigure("server restarted", delay=random.random() * conn.interval)

    async def _receive_commands(self, conn: Connection) -> None:
        assert conn.dealer is not None
        while True:
            frames = await conn.dealer.recv_multipart()
            if len(frames) == 2:
                conn.got_command_message.set()
            body = self._check(conn, frames)
            if body is None:
                continue
            if not conn.channel_up:
                conn.channel_up = True
                log.info("[%s] Command channel up (first message: %s)", self.node, body.get("type"))
                sdnotify.status(f"connected to {self._server_host()} as {self.node}")
            if self.unsent is not None and self.unsent[1] is conn:
                self.unsent = None  # the server talks to us: what we queued went out before
            kind = body.get("type")
            # the job state machine logs "Received commit/run/abort" itself
            if kind == "commit":
                self._execute(self.jobs.on_commit(body, **self._commit_checks()))
            elif kind == "run":
                self._execute(self.jobs.on_run(body))
            elif kind == "abort":
                self._execute(self.jobs.on_abort(body))
            elif kind == "output_ack":  # live output's flow control (beyond the original)
                live = self.live_outputs.get(body.get("job_id"))  # type: ignore[arg-type]
                stream, offset = body.get("stream"), body.get("offset")
                if live is not None and stream in STREAMS and isinstance(offset, int):
                    live.on_ack(stream, offset)
            elif kind != "ack":
                log.warning("[%s] Missing type in ZMQ message: %r", self.node, kind)

    def _check(self, conn: Connection, frames: list[bytes]) -> dict[str, Any] | None:
        return check_inbound(conn, frames, self.node)

    # Sending ---------------------------------------------------------------------------------
    def send(self, conn: Connection | None, kind: str, job_id: str | None, **extra: Any) -> bool:
        """Queue a message on ``conn``; a full queue schedules a reconfigure (the original's
        "enqueue error"), as the server is then not taking our messages."""
        if conn is None or conn.dealer is None:
            log.warning("[%s] not connected: %s for %s not sent", self.node, kind, job_id)
            return False
        if self.try_send(conn, kind, job_id, **extra):
            return True
        log.error("[%s] ZMQ socket enqueue error. Triggering reconfigure", self.node)
        self.request_reconfigure(
            "a message could not be queued",
            delay=jittered(SEND_FAILURE_DEADLINE_SECONDS),
        )
        return False

    def try_send(
        self, conn: Connection | None, kind: str, job_id: str | None, **extra: Any
    ) -> bool:
        """Queue a message on ``conn`` if it takes it now (no reconfigure when it does not)."""
        if conn is None or conn.dealer is None:
            return False
        frames = outbound_frames(
            conn,
            kind,
            job_id,
            node=self.node,
            client=self.hostname,
            org=self.org,
            incarnation=self.incarnation,
            **extra,
        )
        return conn.dealer.send_nowait(frames)

    def _send_result(self, conn: Connection | None, reply: jobstate.Reply) -> None:
        """Send a job's result; ``unsent`` keeps it until the server speaks on ``conn``."""
        if self.unsent is not None:
            log.info("[%s] Sending the result of job %s again", self.node, reply.job_id)
        queued = self.send(conn, reply.type, reply.job_id, **reply.extra)
        self.unsent = (reply, conn if queued else None)

    # Jobs ------------------------------------------------------------------------------------
    def _commit_checks(self) -> dict[str, Any]:
        return {
            "resolve": lambda command: whitelist.resolve(self.config.whitelist, command),
            "user_exists": jobfile.user_exists,
            "dir_exists": jobfile.dir_exists,
            "lock_free": self._take_lock,
        }

    def _take_lock(self, lock: bool | str) -> bool:
        path = runner.Lock.path_for(
            lock, lockfile=self.config.lockfile, file_cache_path=self.config.file_cache_path
        )
        candidate = runner.Lock(path)
        if not candidate.try_acquire():
            return False
        if self.lock is not None:
            self.lock.release()
        self.lock = candidate
        return True

    def _execute(self, actions: list) -> None:
        assert self._nursery is not None
        for action in actions:
            match action:
                case jobstate.Reply(type="succeeded" | "failed"):
                    self._send_result(self.conn, action)
                case jobstate.Reply(type=kind, job_id=job_id, extra=extra):
                    self.send(self.conn, kind, job_id, **extra)
                case jobstate.StartProcess(job=job):
                    kill = self.kill_events[job.id] = trio.Event()
                    self._nursery.start_soon(self._run_job, job, kill)
                case jobstate.KillProcess(job_id=job_id):
                    event = self.kill_events.get(job_id)
                    if event is not None:
                        event.set()
                case jobstate.ReleaseLock():
                    # before the command starts: chef-client must be able to take its own lock
                    if self.lock is not None:
                        self.lock.release()
                        self.lock = None
                case jobstate.Log(level=level, text=text):
                    log.log(logging.getLevelName(level.upper()), "[%s] %s", self.node, text)
        if self.jobs.state == "idle" and self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.jobs.state == "idle":
            self._reconfigure_now.set()  # a deferred reconfigure may go ahead now

    async def _run_job(self, job: jobstate.Job, kill: trio.Event) -> None:
        live = self._live_output(job)
        if live is not None:
            self.live_outputs[job.id] = live
        try:
            async with trio.open_nursery() as flusher:
                if live is not None:
                    flusher.start_soon(live.flush_every)
                outcome = await jobrun.run(
                    job,
                    self.config,
                    node=self.node,
                    kill=kill,
                    on_started=lambda: self._execute(self.jobs.on_started(job.id)),
                    on_output=None if live is None else live.on_output,
                )
                flusher.cancel_scope.cancel()  # a flush waiting for room must not hold close
            if live is not None:  # every chunk on the server's disk before the result
                await live.close(wait_for_acks=not kill.is_set())
        finally:
            self.kill_events.pop(job.id, None)
            self.live_outputs.pop(job.id, None)
        self._execute(
            self.jobs.on_finished(
                job.id,
                outcome.exit_code,
                outcome.stdout,
                outcome.stderr,
                start_failed=outcome.start_error,
                signal=_signal_name(outcome.signal),
                streamed=live is not None,
            )
        )

    def _live_output(self, job: jobstate.Job) -> LiveOutput | None:
        """Live output, for a job that captures on a server that takes it (beyond the
        original: its config says ``max_output_bytes``)."""
        conn = self.conn
        limit = None if conn is None else conn.config.get("max_output_bytes")
        if not job.capture or not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            return None

        def send(stream: str, offset: int, data: bytes) -> bool:
            fields = chunk_fields(stream, offset, data)
            return self.try_send(self.conn, "output", job.id, **fields)

        return LiveOutput(send, limit=limit, max_body_size=self.config.max_body_size)

    # Signals ---------------------------------------------------------------------------------
    async def _signals(self) -> None:
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP]
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    print("received USR1, reconfiguring", flush=True)
                    self.request_reconfigure("SIGUSR1")
                elif signum == signal.SIGHUP:
                    log.info("[%s] received HUP: re-reading the configuration", self.node)
                    sdnotify.reloading("re-reading the configuration")
                    self.reload_config()
                    sdnotify.ready(self._connection_status())
                else:
                    print(f"received {name.removeprefix('SIG')}, shutting down", flush=True)
                    self.stop()
                    return

    def _server_host(self) -> str:
        return urllib.parse.urlsplit(self.config.chef_server_url).netloc or "the server"

    def _connection_status(self) -> str:
        conn = self.conn
        if conn is not None and conn.channel_up:
            return f"connected to {self._server_host()} as {self.node}"
        return f"connecting to {self._server_host()} as {self.node}"

    def reload_config(self) -> None:
        """Re-read the config file: whitelist and job settings apply to the next job; a
        changed environment, roles, tags or attributes are published at once."""
        before = _record_settings(self.config)
        try:
            self.config = load_config(self.config.source, self.flags)
        except (OSError, ConfigError) as exc:
            log.error("[%s] keeping the previous configuration: %s", self.node, exc)
            return
        if _record_settings(self.config) != before and self._nursery is not None:
            self._nursery.start_soon(self._publish_node_record)


def _record_settings(config: ClientConfig) -> tuple[Any, ...]:
    """What the node record takes from the configuration."""
    return (config.chef_environment, config.roles, config.tags, dict(config.node_attributes))


def _signal_name(number: int | None) -> str | None:
    """``SIGKILL`` for 9; a number no name is known for as ``SIG<n>``."""
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
