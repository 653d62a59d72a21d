"""Reading a server-sent event stream (the job feeds): one incremental W3C EventSource parser.

Pure: it is fed what came off the socket (whole lines, or raw chunks cut anywhere) and hands
back the events completed so far, so every reader (``knife.follow``, the bench scenarios, the
salt comparison) decodes the feed the same way and can be tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MAX_LINE_BYTES = 1 << 20  # a longer line is not a feed of ours: the reader drops the stream


@dataclass(frozen=True)
class SseEvent:
    event: str
    id: str | None  # the stream's last event id when this event was dispatched
    data: str

    def json(self) -> Any:
        """The data as JSON (``{}`` when empty, the raw text when it does not parse)."""
        try:
            return json.loads(self.data) if self.data else {}
        except ValueError:
            return self.data


class SseParser:
    """The W3C EventSource parser: an event comes out at the blank line that ends it.

    Comments (``:...``, the server's keepalives) are skipped, data lines are joined with
    ``\\n``, the last ``id`` sticks to later events (as EventSource's "last event ID" does, so
    that a reader can resume with ``Last-Event-ID``), an event with no data is dropped, and
    ``retry`` is only recorded (our readers choose their own backoff). `feed` takes one line;
    `feed_bytes` takes chunks as they arrive, split anywhere (lines end in LF, CRLF or CR)."""

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self.max_line_bytes = max_line_bytes
        self._event = ""
        self._data: list[str] = []
        self._buffer = b""
        self._after_cr = False  # the last chunk ended in CR: a leading LF is its CRLF's half

    def restart(self) -> None:
        """A new connection: the unfinished line and event are gone, the last id stays."""
        self._event, self._data, self._buffer, self._after_cr = "", [], b"", False

    def feed(self, line: str) -> SseEvent | None:
        """One line, with or without its line ending; the event it completes, if any."""
        line = line.rstrip("\r\n")
        if line == "":
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            if not data:
                return None
            return SseEvent(event, self.last_id, "\n".join(data))
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_id = value
        elif field == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def feed_all(self, lines: Iterable[str]) -> list[SseEvent]:
        return [ev for line in lines if (ev := self.feed(line)) is not None]

    def feed_bytes(self, chunk: bytes) -> list[SseEvent]:
        """The events completed by ``chunk``; an unfinished line waits for the next chunk.
        Raises ValueError on a line longer than ``max_line_bytes``."""
        if not chunk:
            return []
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        data = self._buffer + chunk
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > self.max_line_bytes:
            self._buffer = b""
            raise ValueError(f"an event stream line over {self.max_line_bytes} bytes")
        events = []
        for raw in lines:
            event = self.feed(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events
