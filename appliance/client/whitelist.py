r"""Whitelist lookup: which command line a requested command name runs (client-knife.md §A.4).

Exact string keys win; otherwise the first regex key (in insertion order) that matches the
WHOLE command (``re.fullmatch``) wins. The original applied Ruby ``gsub`` with line-anchored
``^``/``$``, so a command containing a newline could match one line of it and smuggle the
other lines into the shell; full-string matching closes that (spec appendix #7). Because the
match is the whole string, the result is just the expanded template.

Captures reach ``/bin/sh -c``: the original pasted them raw, so ``/^echo (.*)$/ => 'echo \1'``
ran ``echo x; touch /tmp/pwned`` as two commands. Shell-quoting the capture is not a fix: the
right quoting depends on where the template puts it (``echo "\1"`` or ``echo '\1'`` would let a
quoted capture break out again). So a substituted capture may only hold characters that mean
nothing to the shell in any of those places (letters, digits, ``_``, space and ``@%+=:,./-``);
any other character (``;&|<>$`\'"()*?[]{}~#!``, tabs, newlines, NUL, ...) makes the lookup
raise ``UnsafeCapture`` and the commit is refused. Spaces stay allowed: they only split words,
which is what a ``(.+)`` capture passing several arguments relied on in the original.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Resolved", "UnsafeCapture", "WhitelistEntryLike", "expand", "resolve"]

_SAFE_CAPTURE = re.compile(r"[\w @%+=:,./-]*")


class UnsafeCapture(ValueError):
    """A regex entry matched, but a capture it substitutes holds shell syntax."""


class WhitelistEntryLike(Protocol):
    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None


@dataclass(frozen=True)
class Resolved:
    command_line: str
    lock: bool | str | None


def resolve(entries: Sequence[WhitelistEntryLike], command: str) -> Resolved | None:
    """The command line (and lock) for ``command``, or None when it is not whitelisted.
    Raises ``UnsafeCapture`` when the first matching regex would put shell syntax in it."""
    for entry in entries:
        if isinstance(entry.key, str) and entry.key == command:
            return Resolved(entry.command_line, _lock(entry.lock))
    for entry in entries:
        if isinstance(entry.key, re.Pattern):
            match = entry.key.fullmatch(command)
            if match is not None:
                used: list[str] = []
                line = _expand(entry.command_line, match, used)
                for value in used:
                    if not _SAFE_CAPTURE.fullmatch(value):
                        raise UnsafeCapture(
                            f"the capture {value[:200]!r} of /{entry.key.pattern}/ holds "
                            "characters the shell would interpret"
                        )
                return Resolved(line, _lock(entry.lock))
    return None


def _lock(value: bool | str | None) -> bool | str | None:
    return value if value else None


def expand(template: str, match: re.Match[str]) -> str:
    """Ruby ``gsub`` replacement syntax: ``\\0``/``\\&`` whole match, ``\\1``..``\\9`` groups,
    ``\\k<name>`` named groups, ``\\\\`` a backslash; ``\\``` / ``\\'`` (pre/post match) are
    empty under full matching. A group that did not take part, or an unknown group name,
    gives "" (as in Ruby); any other backslash sequence is kept as written."""
    return _expand(template, match, [])


def _expand(template: str, match: re.Match[str], used: list[str]) -> str:
    """``expand``, appending each substituted group value to ``used``."""
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
            used.append(_group(match, int(nxt)))
            out.append(used[-1])
            i += 2
        elif nxt == "&":
            used.append(match.group(0))
            out.append(used[-1])
            i += 2
        elif nxt in "`'":
            i += 2
        elif nxt == "\\":
            out.append("\\")
            i += 2
        elif nxt == "k" and template.startswith("<", i + 2) and ">" in template[i + 3 :]:
            end = template.index(">", i + 3)
            used.append(_group(match, template[i + 3 : end]))
            out.append(used[-1])
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
