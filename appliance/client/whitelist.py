"""Whitelist lookup: which command line a requested command name runs (client-knife.md §A.4).

Exact string keys win; otherwise the first regex key (in insertion order) that matches the
WHOLE command (``re.fullmatch``) wins. The original applied Ruby ``gsub`` with line-anchored
``^``/``$``, so a command containing a newline could match one line of it and smuggle the
other lines into the shell; full-string matching closes that (spec appendix #7). Because the
match is the whole string, the result is just the expanded template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Resolved", "WhitelistEntryLike", "expand", "resolve"]


class WhitelistEntryLike(Protocol):
    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None


@dataclass(frozen=True)
class Resolved:
    command_line: str
    lock: bool | str | None


def resolve(entries: Sequence[WhitelistEntryLike], command: str) -> Resolved | None:
    """The command line (and lock) for ``command``, or None when it is not whitelisted."""
    for entry in entries:
        if isinstance(entry.key, str) and entry.key == command:
            return Resolved(entry.command_line, _lock(entry.lock))
    for entry in entries:
        if isinstance(entry.key, re.Pattern):
            match = entry.key.fullmatch(command)
            if match is not None:
                return Resolved(expand(entry.command_line, match), _lock(entry.lock))
    return None


def _lock(value: bool | str | None) -> bool | str | None:
    return value if value else None


def expand(template: str, match: re.Match[str]) -> str:
    """Ruby ``gsub`` replacement syntax: ``\\0``/``\\&`` whole match, ``\\1``..``\\9`` groups,
    ``\\k<name>`` named groups, ``\\\\`` a backslash; ``\\``` / ``\\'`` (pre/post match) are
    empty under full matching. A group that did not take part, or an unknown group name,
    gives "" (as in Ruby); any other backslash sequence is kept as written."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch != "\\" or i + 1 == n:
            out.append(ch)
            i += 1
            continue
        nxt = template[i + 1]
        if nxt.isdigit() and nxt.isascii():
            out.append(_group(match, int(nxt)))
            i += 2
        elif nxt == "&":
            out.append(match.group(0))
            i += 2
        elif nxt in "`'":
            i += 2
        elif nxt == "\\":
            out.append("\\")
            i += 2
        elif nxt == "k" and template.startswith("<", i + 2) and ">" in template[i + 3 :]:
            end = template.index(">", i + 3)
            out.append(_group(match, template[i + 3 : end]))
            i = end + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def _group(match: re.Match[str], ref: int | str) -> str:
    if isinstance(ref, str) and ref.isascii() and ref.isdigit():
        ref = int(ref)
    try:
        value = match.group(ref)
    except IndexError:  # no such group
        return ""
    return value or ""
