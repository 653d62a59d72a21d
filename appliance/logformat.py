"""How the server, its edges and the node client write their log lines (``log_format``).

``text`` is a line for people: a timestamp, the level, the logger and the message, except when
the stream is the systemd journal's (``JOURNAL_STREAM`` names the very file the line goes to:
journald stamps every line itself, a second timestamp is noise). ``json`` is one object per
line for log shippers: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, then
``exception`` (the traceback) when there is one and any field a call passed in ``extra``.

Nothing here sees a key unless a message carries one: no log call writes a key or a config
body (tests/e2e/test_log_secrets.py).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

FORMATS = ("text", "json")
SERVER_TEXT = "%(levelname)s %(name)s: %(message)s"  # the server's and the edges'
ENV_JOURNAL = "JOURNAL_STREAM"

# what every LogRecord has; anything else on a record came from ``extra``
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def to_journal(stream: IO[Any]) -> bool:
    """Whether ``stream`` is the journal's (systemd's rule: JOURNAL_STREAM is "DEVICE:INODE"
    of the stream it connected, and a child whose output was redirected must not trust it)."""
    value = os.environ.get(ENV_JOURNAL)
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        return orjson.dumps(line, default=str).decode()


def formatter(
    fmt: str, stream: IO[Any], *, text: str = SERVER_TEXT, stamp: str = "%(asctime)s "
) -> logging.Formatter:
    """The formatter of ``fmt`` for lines written to ``stream``: ``text`` preceded by
    ``stamp`` unless the journal stamps them."""
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(text if to_journal(stream) else stamp + text)


def setup(
    level: str,
    fmt: str,
    handler: logging.Handler | None = None,
    *,
    text: str = SERVER_TEXT,
    stamp: str = "%(asctime)s ",
) -> None:
    """The root logger writes to ``handler`` (stderr by default), alone, in ``fmt``."""
    handler = handler or logging.StreamHandler(sys.stderr)
    stream = getattr(handler, "stream", sys.stderr)
    handler.setFormatter(formatter(fmt, stream, text=text, stamp=stamp))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
