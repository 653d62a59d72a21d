"""Following a job until it ends: the job's SSE feed when the server offers it, knife's polling
otherwise, and what the operator sees meanwhile.

knife-push polls ``GET pushy/jobs/ID`` every second and prints a status line when it changes.
We read the job's event feed instead (``pushy/jobs_status_feed/ID``) and fetch the job only when
something happened (at most one GET per `COALESCE_SECONDS`), resuming a dropped feed with
``Last-Event-ID`` and falling back to polling when there is no feed. Blocking socket reads
cannot be interrupted cleanly, so the feed is read in a daemon thread that hands events over a
queue; the main thread owns the display and every REST call.

Display: on a terminal, one progress line redrawn in place (counts per node state, elapsed time,
the nodes still outstanding) that ends as a clean summary line; elsewhere knife's status lines
(``Voting.``, ``Running (X/Y in progress) ...``, ``Complete.``), each printed only when it
changes, so that a log is not flooded. ``--poll`` gives knife's exact output (a ``.`` before
every poll) and requests.

Live output (``--stream``): an output sink (`OutputSink`, ``knife.stream.OutputLines``) turns
the feed's events into lines; the display prints them above the progress line (`print_above`
ends the line being drawn first, then redraws it) or between the status lines. Output events
do not make the follower GET the job. With a sink the feed is opened before the first GET
(output events are never replayed), the events still queued when the job is found final are
read until its ``job_complete`` (at most `DRAIN_SECONDS`), and what the sink holds at the end
is printed before the final status.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from appliance.core.jobfsm import FINISHED, NODE_STATUSES
from appliance.knife.session import Api, ApiError, CliError
from appliance.signedhttp import Stream
from appliance.sse import SseParser

FINAL_STATUSES = FINISHED
KNIFE_OK_NODE_STATES = frozenset({"succeeded", "nacked", "unavailable"})
KNIFE_IN_PROGRESS_KEYS = ("new", "voting", "running")  # knife's list ("voting" is no node state)
OUTSTANDING_NODE_STATES = ("new", "ready", "running")
NODE_STATE_ORDER = NODE_STATUSES  # the server's order: outstanding states first
STOP_EVENTS = ("job_complete", "summary")

COALESCE_SECONDS = 0.2  # at most one GET of the job per this, however many events arrive
REDRAW_SECONDS = 0.1  # the progress line is redrawn at most 10 times a second
SAFETY_FETCH_SECONDS = 5.0  # GET the job anyway after this long without an event
STREAM_READ_TIMEOUT = 60.0  # the server sends a keepalive every 15 s; silence this long = dropped
MAX_RECONNECTS = 8  # consecutive failed (re)connections before giving up on the feed
MAX_BACKOFF_SECONDS = 5.0
FOLLOW_SLACK_SECONDS = 3600.0  # beyond the job's run_timeout, for voting and stragglers
DRAIN_SECONDS = 2.0  # with an output sink: reading the feed on after the job is final
CLEAR_LINE = "\r\x1b[K"


# ---------------------------------------------------------------------------------------------
# pure parts: knife's status line and exit code, the progress line


def status_line(job: dict[str, Any]) -> tuple[str, bool]:
    """knife's line for the job's status and whether the status is final.

    The "in progress" count is knife's: the number of node-state *keys* among new/voting/running,
    not the number of nodes (kept for compatibility; ``{"running": [a, b], "succeeded": [c]}``
    shows ``Running (1/3 in progress) ...``)."""
    status = str(job.get("status"))
    nodes = job.get("nodes") or {}
    if status == "new":
        return "Initialized.", False
    if status == "voting":
        return "Voting.", False
    if status == "running":
        total = sum(len(names) for names in nodes.values())
        keys = sum(1 for key in nodes if key in KNIFE_IN_PROGRESS_KEYS)
        return f"Running ({keys}/{total} in progress) ...", False
    return f"{status.capitalize()}.", True


def is_final(job: dict[str, Any]) -> bool:
    return job.get("status") in FINAL_STATUSES


def exit_code(job: dict[str, Any], *, strict: bool = False) -> int:
    """knife's rule: 0 when the job is complete and every node succeeded, nacked or was
    unavailable, else 1. ``strict``: 0 only when complete and every node succeeded."""
    if job.get("status") != "complete":
        return 1
    allowed = {"succeeded"} if strict else KNIFE_OK_NODE_STATES
    return 0 if all(key in allowed for key in job.get("nodes") or {}) else 1


def _ordered_states(nodes: dict[str, list[str]]) -> list[str]:
    known = [s for s in NODE_STATE_ORDER if nodes.get(s)]
    return known + sorted(s for s in nodes if s not in NODE_STATE_ORDER and nodes[s])


def progress_line(job: dict[str, Any], elapsed: float, *, width: int = 80, shown: int = 3) -> str:
    """The live line: status, elapsed seconds, node count per state, outstanding nodes.

    ``Running  12s  running 2, succeeded 1  waiting for: n4, n5, n6 +2``; once the job is final
    the waiting part is gone (``Complete  14s  succeeded 3``). Cut to ``width - 1`` characters
    so that the terminal never wraps it (a wrapped line cannot be redrawn with ``\\r``)."""
    nodes = job.get("nodes") or {}
    status = str(job.get("status", "new")).capitalize()
    parts = [status, f"{max(elapsed, 0.0):.0f}s"]
    counts = ", ".join(f"{state} {len(nodes[state])}" for state in _ordered_states(nodes))
    if counts:
        parts.append(counts)
    if not is_final(job):
        waiting = sorted(n for s in OUTSTANDING_NODE_STATES for n in nodes.get(s, []))
        if waiting:
            more = f" +{len(waiting) - shown}" if len(waiting) > shown else ""
            parts.append(f"waiting for: {', '.join(waiting[:shown])}{more}")
    line = "  ".join(parts)
    limit = max(width - 1, 10)
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the feed reader thread


class EventStream:
    """One SSE feed read in a daemon thread; `get` hands over what happened, in order:

    - ``("event", SseEvent)``;
    - ``("dropped", reason)`` when the connection ended before a stop event (the thread then
      reconnects with ``Last-Event-ID``, backing off, at most `MAX_RECONNECTS` times in a row);
    - ``("unavailable", CliError)`` when there is no feed (an error status, the server not
      reachable at the first open) or reconnecting failed; the thread has ended;
    - ``("ended", None)`` after a stop event, or when the server ended a stream that had no
      stop events to wait for (``stop_on=()`` never ends this way; it reconnects).
    """

    def __init__(
        self,
        api: Api,
        path: str,
        *,
        stop_on: tuple[str, ...] = STOP_EVENTS,
        last_event_id: str | None = None,
        read_timeout: float = STREAM_READ_TIMEOUT,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self.api = api
        self.path = path
        self.stop_on = stop_on
        self.read_timeout = read_timeout
        self.max_reconnects = max_reconnects
        self.parser = SseParser()
        self.parser.last_id = last_event_id
        self.reconnects = 0
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._response: Stream | None = None
        self._thread = threading.Thread(target=self._run, name="pushy-sse", daemon=True)

    def start(self) -> EventStream:
        self._thread.start()
        return self

    def get(self, timeout: float) -> tuple[str, Any] | None:
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop reading; wake a blocked read by shutting the socket down."""
        self._stop.set()
        response = self._response
        if response is not None:
            response.interrupt()

    def _put(self, kind: str, payload: Any = None) -> None:
        if not self._stop.is_set():
            self._queue.put((kind, payload))

    def _run(self) -> None:
        failures = 0
        opened = False
        for _ in range(10_000):  # each pass is one connection; failures are bounded below
            if self._stop.is_set():
                return
            try:
                response = self.api.stream(
                    self.path, last_event_id=self.parser.last_id, timeout=self.read_timeout
                )
            except ApiError as exc:  # 204 (do not reconnect), 404, 403, ...: no feed for us
                self._put("unavailable", exc)
                return
            except CliError as exc:  # not reachable
                failures += 1
                if not opened or failures > self.max_reconnects:
                    self._put("unavailable", exc)
                    return
                self._stop.wait(min(0.2 * 2**failures, MAX_BACKOFF_SECONDS))
                continue
            opened = True
            self.parser.restart()
            self._response = response
            try:
                ended, got_any = self._read(response)
            finally:
                self._response = None
                with contextlib.suppress(Exception):
                    response.close()
            if ended or self._stop.is_set():
                return
            failures = 0 if got_any else failures + 1
            if failures > self.max_reconnects:
                self._put("unavailable", CliError(f"the event feed {self.path} keeps dropping"))
                return
            self.reconnects += 1
            self._put("dropped", "connection ended")
            self._stop.wait(min(0.2 * 2**failures, MAX_BACKOFF_SECONDS))
        self._put("unavailable", CliError(f"the event feed {self.path} keeps dropping"))

    def _read(self, response: Stream) -> tuple[bool, bool]:
        """Read until the stream ends: (ended for good, received any event)."""
        got_any = False
        try:
            for chunk in response.chunks():
                if self._stop.is_set():
                    break
                for event in self.parser.feed_bytes(chunk):
                    got_any = True
                    self._put("event", event)
                    if event.event in self.stop_on:
                        self._put("ended")
                        return True, True
        except (OSError, ValueError):
            pass  # dropped (a timeout is an OSError), or a line over the limit: reconnect
        return False, got_any


# ---------------------------------------------------------------------------------------------
# displays


class StatusLines:
    """knife's output: a status line whenever it changes (the first one to compare with is
    ``Initialized.``), and with ``dots`` a ``.`` before every poll."""

    def __init__(self, out: TextIO, *, dots: bool) -> None:
        self.out = out
        self.dots = dots
        self.last = "Initialized."
        self.mid_line = False  # dots written since the last status line

    def before_poll(self) -> None:
        if self.dots:
            self.out.write(".")
            self.out.flush()
            self.mid_line = True

    def update(self, job: dict[str, Any], elapsed: float) -> None:
        line, _ = status_line(job)
        if line != self.last:
            self.out.write(line + "\n")
            self.out.flush()
            self.last = line
            self.mid_line = False

    def print_above(self, text: str) -> None:
        """Whole lines of something else (live output), on lines of their own."""
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False
        self.out.write(text)
        self.out.flush()

    def tick(self, elapsed: float) -> None:
        return None

    def finish(self, job: dict[str, Any], elapsed: float) -> None:
        self.update(job, elapsed)


class ProgressLine:
    """A terminal's live line: redrawn in place at most every `REDRAW_SECONDS` (and once a
    second for the clock); `finish` leaves the final summary on its own line."""

    def __init__(self, out: TextIO, *, width: int | None = None) -> None:
        self.out = out
        self.width = width or shutil.get_terminal_size((80, 24)).columns
        self.job: dict[str, Any] | None = None
        self.drawn_at: float | None = None
        self.dirty = False

    def before_poll(self) -> None:
        return None

    def update(self, job: dict[str, Any], elapsed: float) -> None:
        self.job = job
        self.dirty = True
        self.tick(elapsed)

    def tick(self, elapsed: float) -> None:
        if self.job is None:
            return
        since = None if self.drawn_at is None else elapsed - self.drawn_at
        if since is None or (self.dirty and since >= REDRAW_SECONDS) or since >= 1.0:
            self._draw(progress_line(self.job, elapsed, width=self.width), elapsed)

    def print_above(self, text: str) -> None:
        """Whole lines of something else (live output): the live line is cleared, the lines
        printed where it was, and the live line drawn again below them at the next tick."""
        self.out.write(CLEAR_LINE + text)
        self.out.flush()
        self.drawn_at = None  # the next tick redraws at once

    def _draw(self, text: str, elapsed: float) -> None:
        self.out.write(CLEAR_LINE + text)
        self.out.flush()
        self.drawn_at = elapsed
        self.dirty = False

    def finish(self, job: dict[str, Any], elapsed: float) -> None:
        self.job = job
        self._draw(progress_line(job, elapsed, width=self.width), elapsed)
        self.out.write("\n")
        self.out.flush()


# ---------------------------------------------------------------------------------------------
# the follower


class OutputSink(Protocol):
    """What the follower hands the feed's events to (``knife.stream.OutputLines``): each
    method returns the text to print (whole lines), possibly empty."""

    def event(self, name: str, data: Any) -> str: ...

    def finish(self, job: dict[str, Any]) -> str: ...


class Follower:
    """Follow job ``job_id`` to its end; `run` returns the final job object.

    ``poll``: knife's polling only (no feed). ``tty``: draw the progress line instead of the
    status lines (ignored with ``poll``, which prints knife's exact lines). ``output``: where
    the feed's events go (live output, printed through the display on ``out``)."""

    def __init__(
        self,
        api: Api,
        job_id: str,
        *,
        out: TextIO,
        poll_interval: float = 1.0,
        poll: bool = False,
        tty: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        output: OutputSink | None = None,
    ) -> None:
        self.api = api
        self.output = output
        self.job_id = job_id
        self.poll_interval = max(poll_interval, 0.05)
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.limit = FOLLOW_SLACK_SECONDS + 3600.0
        self.display: StatusLines | ProgressLine = (
            ProgressLine(out) if tty and not poll else StatusLines(out, dots=poll)
        )
        self.fetches = 0
        self.used_feed = False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def fetch(self) -> dict[str, Any]:
        job = self.api.get(self.api.org_path(f"pushy/jobs/{self.job_id}"))
        self.fetches += 1
        timeout = job.get("run_timeout")
        if isinstance(timeout, int | float) and timeout >= 0:
            self.limit = FOLLOW_SLACK_SECONDS + float(timeout)
        if self.output is None or not is_final(job):  # else the output left comes first
            self.display.update(job, self.elapsed())
        return job

    def _show(self, text: str) -> None:
        if text:
            self.display.print_above(text)

    def _check_limit(self, job: dict[str, Any] | None) -> None:
        if self.elapsed() > self.limit:
            status = job.get("status") if job else "unknown"
            raise CliError(
                f"job {self.job_id} is still {status} after {self.elapsed():.0f} s; stopped "
                f"following it (see pushy job status {self.job_id})",
                1,
            )

    def run(self) -> dict[str, Any]:
        job = self._poll(None) if self.poll else self._follow()
        if self.output is not None:
            self._show(self.output.finish(job))
        self.display.finish(job, self.elapsed())
        return job

    def _wait(self, seconds: float) -> None:
        """Sleep, keeping the progress line's clock going."""
        end = self.clock() + seconds
        for _ in range(100_000):
            left = end - self.clock()
            if left <= 0:
                return
            self.sleep(min(left, REDRAW_SECONDS))
            self.display.tick(self.elapsed())

    def _poll(self, job: dict[str, Any] | None) -> dict[str, Any]:
        """knife's loop: sleep, ``.``, GET, status line if changed; until final."""
        for _ in range(10_000_000):
            self._check_limit(job)
            self._wait(self.poll_interval)
            self.display.before_poll()
            job = self.fetch()
            if is_final(job):
                return job
        raise CliError(f"job {self.job_id}: too many polls", 1)

    def _follow(self) -> dict[str, Any]:
        stream = EventStream(self.api, self.api.org_path(f"pushy/jobs_status_feed/{self.job_id}"))
        early = self.output is not None  # output events are not replayed: listen at once
        if early:
            stream.start()
        try:
            job = self.fetch()
            if is_final(job):
                return job
            if not early:
                stream.start()
            self.used_feed = True
            return self._follow_feed(stream, job)
        finally:
            stream.close()

    def _event(self, event: Any) -> None:
        if self.output is not None:
            self._show(self.output.event(event.event, event.json()))

    def _drain(self, stream: EventStream) -> None:
        """The job is final: hand the sink what the feed still brings, until its stop event
        (output sent just before the end may still be on its way), at most `DRAIN_SECONDS`."""
        deadline = self.clock() + DRAIN_SECONDS
        for _ in range(100_000):
            left = deadline - self.clock()
            if left <= 0:
                return
            item = stream.get(min(left, REDRAW_SECONDS))
            if item is None:
                self.display.tick(self.elapsed())
                continue
            kind, payload = item
            if kind != "event":
                return
            self._event(payload)
            if payload.event in STOP_EVENTS:
                return

    def _follow_feed(self, stream: EventStream, job: dict[str, Any]) -> dict[str, Any]:
        last_fetch = self.clock()
        pending = False
        stop_seen = False
        tick = REDRAW_SECONDS if isinstance(self.display, ProgressLine) else 1.0
        for _ in range(100_000_000):
            self._check_limit(job)
            now = self.clock()
            wait = tick
            if pending:
                wait = min(wait, max(0.0, last_fetch + COALESCE_SECONDS - now))
            item = stream.get(wait)
            if item is not None:
                kind, payload = item
                if kind == "unavailable":
                    self.used_feed = False
                    return self._poll(job)
                if kind == "event":
                    self._event(payload)
                    if payload.event != "output":  # output changes nothing in the job
                        pending = True
                        stop_seen = stop_seen or payload.event in STOP_EVENTS
                elif kind == "ended":
                    pending = stop_seen = True
            now = self.clock()
            due = pending and now - last_fetch >= COALESCE_SECONDS
            if due or now - last_fetch >= max(SAFETY_FETCH_SECONDS, 5 * self.poll_interval):
                job = self.fetch()
                last_fetch, pending = self.clock(), False
                if is_final(job):
                    if self.output is not None and not stop_seen:
                        self._drain(stream)
                    return job
                if stop_seen:  # the feed says it ended but the job does not: poll it out
                    return self._poll(job)
            self.display.tick(self.elapsed())
        raise CliError(f"job {self.job_id}: too many events", 1)
