"""knife's output formats: the text formatter (``-F summary``/``text``, the default) and JSON.

The text formatter is Chef's ``Knife::Core::TextFormatter``: hash keys sorted, ``key:`` padded
to the longest key plus one, a one-element list of plain values shown as that value, nested
hashes and lists on their own lines indented two spaces, list items that are hashes separated
by a blank line. Keys are cyan only on a terminal.

Colour anywhere in the CLI is decided by `colour_wanted`: never with ``--no-color`` (the
dispatcher calls `disable_colour`), never when ``NO_COLOR`` is set to a non-empty value
(no-color.org), never when the output is not a terminal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, TextIO

FORMATS = ("summary", "text", "json")
CYAN, RESET = "\x1b[36m", "\x1b[0m"
_colour_off = False  # --no-color was given


def disable_colour() -> None:
    """``--no-color``: no colour for the rest of this command."""
    global _colour_off
    _colour_off = True


def colour_wanted(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Colour only on a terminal, without ``--no-color`` and without a non-empty ``NO_COLOR``."""
    env = os.environ if environ is None else environ
    if _colour_off or env.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        return False


def _plain(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def _scalar(value: Any) -> str:
    """Ruby's ``to_s``: true/false lower case, nil empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_text(data: Any, *, color: bool = False) -> str:
    def key_text(text: str) -> str:
        return f"{CYAN}{text}{RESET}" if color else text

    out: list[str] = []
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0) + 1
        for key in sorted(data, key=str):
            value = data[key]
            if isinstance(value, list) and len(value) == 1 and _plain(value[0]):
                value = value[0]
            if _plain(value):
                out.append(f"{key_text(f'{key}:'.ljust(width))} {_scalar(value)}\n")
            else:
                out.append(key_text(f"{key}:") + "\n")
                lines = format_text(value, color=color).split("\n")
                while lines and not lines[-1]:  # Ruby's split drops trailing empty fields
                    lines.pop()
                out.extend(f"  {line}\n" for line in lines)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            out.append(format_text(item, color=color))
            if not _plain(item) and index != len(data) - 1:
                out.append("\n")
    else:
        out.append(f"{_scalar(data)}\n")
    return "".join(out)


def format_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def emit(data: Any, fmt: str, stream: TextIO) -> None:
    """Print ``data`` in the chosen format (knife's ``output()``)."""
    if fmt == "json":
        stream.write(format_json(data))
    else:
        stream.write(format_text(data, color=colour_wanted(stream)))
    stream.flush()
