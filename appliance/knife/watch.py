"""``pushy watch``: node availability and running jobs, live, from the server's websocket stream.

The stream (``/organizations/ORG/pushy/ws``, see ``appliance.server.ws_routes``) is read with
trio-websocket. On a terminal the view is redrawn in place a few times a second by rich's
``Live`` (imported only then: tens of milliseconds of start-up), and what happens
meanwhile (a lost connection, a restarted server) is printed above it, so the view is never
torn; otherwise each message becomes one plain line (``-F json``: the message itself, one
JSON line). The pure part (`View`, `line`, `render`) turns messages into what is shown,
without sockets or clocks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from appliance.core.httptext import http_error
from appliance.knife.credentials import connect
from appliance.knife.output import colour_wanted
from appliance.knife.session import Api, CliError
from appliance.tlstrust import EXIT_UNTRUSTED, client_context, untrusted_message, verify_error

if TYPE_CHECKING:
    from rich.live import Live
    from rich.text import Text

REDRAW_SECONDS = 0.25  # at most four redraws a second
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
GIVE_UP_SECONDS = 3600.0  # stop retrying after this long without a connection
SILENCE_FACTOR = 3  # no message for this many keep_alive_times: the connection is dead
DEFAULT_KEEP_ALIVE = 15.0
CONNECT_SECONDS = 10.0  # handshake and closing handshake bounds
MAX_REASON = 200  # characters of an error shown in the reconnect line
MAX_LISTED = 30  # unavailable nodes / outstanding names listed in the view
RECENT_JOBS = 5
ACTIVE = ("new", "ready", "running")
# a job event's node outcome, in the job's node-status terms (GET /jobs/ID)
VOTE_STATUS = {"success": "ready", "failure": "nacked"}
RUN_STATUS = {
    "success": "succeeded",
    "failure": "failed",
    "run_nacked": "failed",
    "run_nacked_while_running": "failed",
    "crashed": "crashed",
    "client_died_while_running": "crashed",
}


# ---------------------------------------------------------------------------------------------
# The view model (pure)


@dataclass
class JobState:
    id: str
    command: str = ""
    status: str = "voting"
    node_count: int = 0
    started: str = ""  # the start event's timestamp
    nodes: dict[str, str] = field(default_factory=dict)  # node -> status in the job

    def counts(self) -> dict[str, int]:
        """Nodes per status; nodes not heard of yet are ``new``."""
        out: dict[str, int] = {}
        for status in self.nodes.values():
            out[status] = out.get(status, 0) + 1
        unheard = self.node_count - len(self.nodes)
        if unheard > 0:
            out["new"] = out.get("new", 0) + unheard
        return dict(sorted(out.items()))

    @property
    def finished(self) -> bool:
        return self.status not in ("new", "voting", "running")


@dataclass
class View:
    """What ``pushy watch`` knows: online nodes and jobs, updated message by message."""

    org: str = ""
    connected: bool = False
    nodes: dict[str, str] = field(default_factory=dict)  # name -> available|unavailable|offline
    jobs: dict[str, JobState] = field(default_factory=dict)  # live jobs
    recent: list[JobState] = field(default_factory=list)  # finished, newest first
    last_error: str | None = None
    keep_alive_time: float = DEFAULT_KEEP_ALIVE

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "hello":
            self.org = str(message.get("org", self.org))
            self.connected = True
            self.keep_alive_time = float(message.get("keep_alive_time") or DEFAULT_KEEP_ALIVE)
            self.nodes = {str(k): str(v) for k, v in (message.get("nodes") or {}).items()}
            self.jobs = {}
            for detail in message.get("jobs") or ():
                job = _job_from_detail(detail)
                self.jobs[job.id] = job
        elif kind == "node":
            name = str(message.get("node"))
            if message.get("status") == "offline":
                self.nodes[name] = "offline"
            else:
                self.nodes[name] = str(message.get("availability"))
        elif kind == "job_event":
            self._job_event(str(message.get("job")), message.get("event"), message.get("data"))
        elif kind == "org_event":
            data = message.get("data") or {}
            self._job_event(str(data.get("job")), message.get("event"), data)
        elif kind == "error":
            self.last_error = str(message.get("error"))

    def _job_event(self, job_id: str, event: Any, data: Any) -> None:
        data = data if isinstance(data, dict) else {}
        job = self.jobs.get(job_id)
        if job is None:
            if event != "start" or any(j.id == job_id for j in self.recent):
                return  # a finished job's duplicate, or the middle of a job we never saw start
            job = self.jobs[job_id] = JobState(job_id)
        node = data.get("node")
        if event == "start":
            job.command = str(data.get("command", job.command))
            job.node_count = int(data.get("node_count") or job.node_count)
            job.started = job.started or str(data.get("timestamp", ""))
        elif event == "quorum_vote" and isinstance(node, str):
            if job.nodes.get(node, "new") in ACTIVE:
                job.nodes[node] = VOTE_STATUS.get(str(data.get("status")), "unavailable")
        elif event == "rehab" and isinstance(node, str):
            if job.nodes.get(node, "new") in ACTIVE:
                job.nodes[node] = "unavailable"
        elif event == "quorum_succeeded":
            job.status = "running"
        elif event == "run_start" and isinstance(node, str):
            job.nodes[node] = "running"
        elif event == "run_complete" and isinstance(node, str):
            status = str(data.get("status"))
            job.nodes[node] = RUN_STATUS.get(status, status)
        elif event == "job_complete":
            job.status = str(data.get("status", "complete"))
            if job.status == "quorum_failed":
                for name, status in job.nodes.items():
                    if status == "ready":
                        job.nodes[name] = "was_ready"
            del self.jobs[job_id]
            self.recent.insert(0, job)
            del self.recent[RECENT_JOBS:]

    def node_counts(self) -> dict[str, int]:
        out = {"available": 0, "unavailable": 0, "offline": 0}
        for availability in self.nodes.values():
            out[availability] = out.get(availability, 0) + 1
        return out


def _job_from_detail(detail: dict[str, Any]) -> JobState:
    """A live job of the hello message (the GET /jobs/ID body)."""
    nodes = {
        str(name): str(status)
        for status, names in (detail.get("nodes") or {}).items()
        for name in names
    }
    return JobState(
        id=str(detail.get("id")),
        command=str(detail.get("command", "")),
        status=str(detail.get("status", "voting")),
        node_count=len(nodes),
        nodes=nodes,
    )


def short_time(timestamp: Any) -> str:
    """``2026-11-27 10:00:00.123456Z`` (the feeds' format) → ``2026-11-27T10:00:00Z``."""
    text = str(timestamp or "")
    if len(text) >= 19 and text[10] == " ":
        return f"{text[:10]}T{text[11:19]}Z"
    return text


def line(message: dict[str, Any]) -> str | None:
    """One plain line for a message, or None for those a log reader does not need (keepalives,
    acknowledgements, and org events, whose news the job events already carry)."""
    kind = message.get("type")
    if kind == "node":
        status = " (offline)" if message.get("status") == "offline" else ""
        return (
            f"{short_time(message.get('timestamp'))} node {message.get('node')} "
            f"{message.get('availability')}{status}"
        )
    if kind == "job_event":
        data = message.get("data") or {}
        event = message.get("event")
        parts = [short_time(data.get("timestamp")), "job", str(message.get("job")), str(event)]
        if event == "start":
            parts.append(f"{data.get('command')} ({data.get('node_count')} nodes)")
        else:
            parts.extend(str(data[k]) for k in ("node", "status") if k in data)
        return " ".join(parts)
    if kind == "hello":
        nodes = message.get("nodes") or {}
        available = sum(1 for v in nodes.values() if v == "available")
        jobs = len(message.get("jobs") or ())
        return (
            f"{short_time(message.get('timestamp'))} watching {message.get('org')}: "
            f"{len(nodes)} nodes online, {available} available; {jobs} jobs running"
        )
    if kind == "error":
        return f"server: {message.get('error')}"
    return None


def _names(names: list[str], width: int) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    if len(names) > MAX_LISTED:
        shown += f", … (+{len(names) - MAX_LISTED})"
    return shown if len(shown) <= width else shown[: max(0, width - 1)] + "…"


def _job_line(job: JobState) -> str:
    """A job's line, with its whole id: the first 12 digits of every job id of an org are
    the org's (the original's make_org_prefix_id), and `pushy job status ID` wants it all."""
    counts = " ".join(f"{status} {n}" for status, n in job.counts().items())
    return f"  {job.id}  {job.status:<8} {counts}  {job.command}"


def render(view: View, *, width: int = 100, clock: str = "") -> list[str]:
    """The live view as lines no wider than ``width``."""
    counts = view.node_counts()
    state = "connected" if view.connected else "reconnecting…"
    out = [f"pushy watch  {view.org}  {clock}  ({state})".rstrip()]
    online = counts["available"] + counts["unavailable"]
    out.append(
        f"nodes: {online} online, {counts['available']} available, "
        f"{counts['unavailable']} unavailable, {counts['offline']} offline"
    )
    down = sorted(n for n, a in view.nodes.items() if a != "available")
    if down:
        labelled = [f"{n} (offline)" if view.nodes[n] == "offline" else n for n in down]
        out.append("  not available: " + _names(labelled, width - 17))
    out.append(f"running jobs: {len(view.jobs)}")
    out.extend(_job_line(j) for j in sorted(view.jobs.values(), key=lambda j: (j.started, j.id)))
    if view.recent:
        out.append("recently finished:")
        out.extend(_job_line(job) for job in view.recent)
    if view.last_error:
        out.append(f"server said: {view.last_error}")
    return [text[:width] for text in out]


def ws_url(server_url: str, path: str) -> str:
    """``http://h:p`` + path → ``ws://h:p/path`` (``https`` → ``wss``)."""
    parts = urlsplit(server_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise CliError(f"the server URL {server_url} must be http:// or https://")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"


def subscription(jobs: list[str] | None, nodes: bool) -> dict[str, Any] | None:
    """The subscribe message for the options, or None when the default (everything) is wanted."""
    if not jobs and nodes:
        return None
    return {"subscribe": {"jobs": list(jobs) if jobs else "*", "nodes": nodes}}


# ---------------------------------------------------------------------------------------------
# The command


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "watch",
        parents=[common],
        help="live view of node availability and running jobs (websocket stream)",
        description="Follow the server's status stream: node availability changes and job "
        "events. On a terminal a live view is redrawn in place; otherwise one line per "
        "message (-F json: each message as one JSON line). Reconnects when the connection "
        "drops; Ctrl-C ends it.",
    )
    parser.add_argument(
        "--jobs", nargs="+", metavar="ID", help="only these jobs' events (default: all jobs)"
    )
    parser.add_argument(
        "--no-nodes", action="store_true", help="leave out node availability changes"
    )
    parser.add_argument("--once", action="store_true", help="print the current state once and exit")
    parser.set_defaults(operator=True, func=run)


def run(args: argparse.Namespace) -> int:
    api = connect(args)
    _ = api.key  # a missing or bad key is an error before any connection
    out = sys.stdout
    live = args.format != "json" and bool(getattr(out, "isatty", lambda: False)())
    watcher = _Watcher(api, args, out, sys.stderr, live)
    try:
        trio.run(watcher.main)
    except* KeyboardInterrupt:  # Ctrl-C is how a watch ends: not an error
        watcher.finish()
    return 0


class _Watcher:
    def __init__(
        self, api: Api, args: argparse.Namespace, out: TextIO, err: TextIO, live: bool
    ) -> None:
        self.api = api
        self.args = args
        self.out = out
        self.err = err
        self.live = live
        self.view = View(org=api.org)
        self.path = api.org_path("pushy/ws")
        self.url = ws_url(api.creds.server_url, self.path)
        self.tls = api.creds.tls
        self.subscribe = subscription(args.jobs, not args.no_nodes)
        self.dirty = trio.Event()
        self.live_view: Live | None = None

    async def main(self) -> None:
        if not self.live or self.args.once:
            await self._connect_loop()
            return
        self.live_view = live_display(self.out)
        self.live_view.start()
        error: CliError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._redraw_loop)
                try:
                    await self._connect_loop()
                except CliError as exc:  # raised as itself, not inside an exception group
                    error = exc
                nursery.cancel_scope.cancel()
        finally:
            self.finish()  # Ctrl-C too: the last view stays, the cursor comes back
        if error is not None:
            raise error

    async def _connect_loop(self) -> None:
        backoff = FIRST_BACKOFF
        failing_since: float | None = None
        ever_connected = False
        while True:
            try:
                await self._session()
                return  # --once
            except ConnectionRejected as exc:
                if exc.status_code < 500:
                    raise CliError(f"{self.url}: {_rejection(exc)}") from None
                reason = _rejection(exc)
            except (
                HandshakeError,
                ConnectionClosed,
                OSError,
                trio.TooSlowError,
                trio.BrokenResourceError,
            ) as exc:
                refused = verify_error(exc)
                if refused is not None:
                    message = untrusted_message(self.api.creds.server_url, refused, self.tls)
                    raise CliError(message, EXIT_UNTRUSTED) from None
                cause = exc.__cause__ if isinstance(exc, HandshakeError) else exc
                if not ever_connected and not self.view.connected and isinstance(cause, OSError):
                    raise CliError(f"cannot reach {self.url}: {cause.strerror or cause}") from None
                reason = _reason(exc)
            ever_connected = ever_connected or self.view.connected
            if self.view.connected:
                backoff, failing_since = FIRST_BACKOFF, None
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > GIVE_UP_SECONDS:
                raise CliError(f"no connection to {self.url} for {GIVE_UP_SECONDS:.0f} s")
            self.view.connected = False
            self.dirty.set()
            self._note(f"pushy watch: {reason[:MAX_REASON]}; reconnecting in {backoff:.0f} s")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _session(self) -> None:
        from appliance.signedhttp import signed_headers

        creds = self.api.creds
        headers = signed_headers(self.api.key, creds.user, "GET", self.path, b"")
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        async with open_websocket_url(
            self.url,
            client_context(self.tls) if self.url.startswith("wss:") else None,
            extra_headers=extra,
            connect_timeout=CONNECT_SECONDS,
            disconnect_timeout=CONNECT_SECONDS,
        ) as ws:
            if self.subscribe is not None:
                await ws.send_message(json.dumps(self.subscribe))
            waiting_ack = self.subscribe is not None
            hello: dict[str, Any] | None = None
            while True:
                limit = SILENCE_FACTOR * self.view.keep_alive_time
                with trio.fail_after(limit):
                    text = await ws.get_message()
                message = json.loads(text)
                if not isinstance(message, dict):
                    continue
                self._show(message)
                if message.get("type") == "hello":
                    hello = message
                elif message.get("type") in ("subscribed", "error"):
                    waiting_ack = False
                if self.args.once and hello is not None and not waiting_ack:
                    if self.args.format != "json":
                        self.out.write("\n".join(render(self.view, width=_width())) + "\n")
                        self.out.flush()
                    await ws.aclose()
                    return

    def _show(self, message: dict[str, Any]) -> None:
        self.view.apply(message)
        if self.args.format == "json":
            self.out.write(json.dumps(message, separators=(",", ":")) + "\n")
            self.out.flush()
        elif self.live or self.args.once:
            self.dirty.set()
        else:
            text = line(message)
            if text is not None:
                self.out.write(text + "\n")
                self.out.flush()

    async def _redraw_loop(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty = trio.Event()
            self._draw()
            await trio.sleep(REDRAW_SECONDS)

    def _note(self, text: str) -> None:
        """A line about the connection: above the live view (never through it), else stderr."""
        if self.live_view is not None:
            self.live_view.console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        self.err.write(text + "\n")
        self.err.flush()

    def _draw(self) -> None:
        if self.live_view is None:
            return
        width = self.live_view.console.width
        lines = render(self.view, width=width, clock=time.strftime("%H:%M:%S"))
        self.live_view.update(styled(lines), refresh=True)

    def finish(self) -> None:
        """At the end (Ctrl-C too): the last view left on screen, the cursor back, a clean
        line end."""
        if self.live_view is not None:
            self._draw()
            self.live_view.stop()
            self.live_view = None


def live_display(out: TextIO) -> Live:
    """rich's in-place view on ``out``: drawn only when told (`Live.update`), coloured only
    as `colour_wanted` says; nothing else is redirected through it."""
    from rich.console import Console
    from rich.live import Live

    console = Console(
        file=out,
        force_terminal=True,
        color_system="standard" if colour_wanted(out) else None,
        highlight=False,
    )
    return Live(
        console=console,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
        vertical_overflow="crop",
    )


def styled(lines: list[str]) -> Text:
    """The view's lines as rich text: the header bold, what needs a look (nodes not
    available, the server's error, a lost connection) in colour."""
    from rich.text import Text

    text = Text(no_wrap=True, overflow="crop")
    for index, content in enumerate(lines):
        if index:
            text.append("\n")
        style = ""
        if index == 0:
            style = "bold" if content.endswith("(connected)") else "bold yellow"
        elif content.startswith(("  not available:", "server said:")):
            style = "red"
        text.append(content, style=style)
    return text


def _width() -> int:
    import shutil

    return max(40, shutil.get_terminal_size((100, 24)).columns)


def _rejection(exc: ConnectionRejected) -> str:
    body: Any = exc.body or b""
    try:
        body = json.loads(body)
    except ValueError:
        body = body.decode("utf-8", "replace")
    return http_error(exc.status_code, body)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        reason = exc.reason
        return f"connection closed ({reason.code}{': ' + reason.reason if reason.reason else ''})"
    if isinstance(exc, trio.TooSlowError):
        return "no message from the server for too long"
    return f"connection lost ({exc.__class__.__name__}: {exc})"
