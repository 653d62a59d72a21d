"""An HTTP error answer as one plain line for people: ``HTTP 401 Unauthorized: <the server's
words>``. Chef and pushy error bodies are ``{"error": "..."}`` or ``{"error": ["...", ...]}``;
anything else (an HTML page from a proxy, a bare string, an odd object) is shown as text, never
as a Python repr. Every user-facing message about an HTTP error goes through here.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

MAX_TEXT = 500  # characters of a body shown


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    except (TypeError, ValueError):
        return str(value)


def error_strings(body: Any) -> list[str]:
    """An error body's ``error`` (or ``message``) strings; any other body as one text."""
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", "replace")
    if isinstance(body, dict):
        err = body.get("error", body.get("message", body))
        return [_plain(e) for e in err] if isinstance(err, list) else [_plain(err)]
    return [] if body is None else [_plain(body)]


def error_text(body: Any) -> str:
    """The human part of an error body: its ``error`` (or ``message``) strings, joined."""
    text = " ".join("; ".join(error_strings(body)).split())  # one line, whatever the layout
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return text


def status_text(status: int) -> str:
    """``401`` → ``HTTP 401 Unauthorized`` (just ``HTTP 599`` for a status without a name)."""
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def http_error(status: int, body: Any) -> str:
    """``HTTP 404 Not Found: job not found``; without a body's words, the status alone."""
    words = error_text(body)
    return f"{status_text(status)}: {words}" if words else status_text(status)
