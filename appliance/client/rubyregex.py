"""Ruby (Onigmo) regex literals translated to Python ``re`` patterns, for whitelist keys.

The mapping is described in `appliance.client.config`'s docstring; anything without a safe
Python equivalent is a ValueError rather than a pattern that matches something else.
"""

from __future__ import annotations

import re
import warnings

from appliance.client.configvalues import RubyRegex

__all__ = ["ruby_regex"]

_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.DOTALL, "x": re.VERBOSE, "o": 0, "u": 0}
_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\v\f\r",
    "blank": r" \t",
    "xdigit": "0-9a-fA-F",
    "word": r"\w",
    "punct": r"!-/:-@\[-`{-~",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}
_UNSUPPORTED_ESCAPES = {
    "p": "Unicode properties (\\p{...})",
    "P": "Unicode properties (\\P{...})",
    "g": "subexpression calls (\\g<...>)",
    "G": "\\G",
    "K": "\\K",
    "R": "\\R",
    "X": "\\X",
    "c": "control escapes (\\cX)",
    "C": "control escapes (\\C-X)",
    "M": "meta escapes (\\M-X)",
}


def _translate_regex(source: str) -> str:
    """Ruby (Onigmo) pattern syntax → Python ``re`` syntax; ValueError when unsupported."""
    out: list[str] = []
    i, n = 0, len(source)
    in_class = False
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            i = _translate_escape(source, i + 1, in_class, out)
            continue
        if in_class:
            if c == "[":
                posix = re.compile(r"\[:(\^?)([a-z]+):\]").match(source, i)
                if posix is None:
                    raise ValueError("nested character classes are not supported")
                if posix.group(1):
                    raise ValueError("negated POSIX classes [:^...:] are not supported")
                if posix.group(2) not in _POSIX_CLASSES:
                    raise ValueError(f"unknown POSIX class [:{posix.group(2)}:]")
                out.append(_POSIX_CLASSES[posix.group(2)])
                i = posix.end()
                continue
            if source.startswith("&&", i):
                raise ValueError("character class intersection (&&) is not supported")
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if source.startswith("^", i):
                out.append("^")
                i += 1
            if source.startswith("]", i):  # a leading ']' is literal
                out.append(r"\]")
                i += 1
            continue
        if c == "(" and source.startswith("(?", i):
            i = _translate_group(source, i, out)
            continue
        out.append(c)
        i += 1
    if in_class:
        raise ValueError("unterminated character class")
    return "".join(out)


def _translate_escape(source: str, i: int, in_class: bool, out: list[str]) -> int:
    d = source[i]
    if d in _UNSUPPORTED_ESCAPES:
        raise ValueError(f"{_UNSUPPORTED_ESCAPES[d]} is not supported")
    if d == "h":
        out.append("0-9a-fA-F" if in_class else "[0-9a-fA-F]")
    elif d == "H":
        if in_class:
            raise ValueError("\\H inside a character class is not supported")
        out.append("[^0-9a-fA-F]")
    elif d == "e":
        out.append(r"\x1b")
    elif d in "zZA" and in_class:
        raise ValueError(f"\\{d} inside a character class")
    elif d == "z":
        out.append(r"\Z")
    elif d == "Z":
        out.append(r"(?=\n?\Z)")
    elif d == "k" and source[i + 1 : i + 2] in ("<", "'"):
        close = ">" if source[i + 1] == "<" else "'"
        end = source.find(close, i + 2)
        if end < 0:
            raise ValueError("unterminated \\k<name>")
        name = source[i + 2 : end]
        if name.isdigit():
            out.append(f"(?:\\{int(name)})")
        elif name.isidentifier():
            out.append(f"(?P={name})")
        else:
            raise ValueError(f"unsupported back-reference \\k<{name}>")
        return end + 1
    elif d == "u" and source[i + 1 : i + 2] == "{":
        end = source.find("}", i + 2)
        if end < 0:
            raise ValueError("unterminated \\u{...}")
        for part in source[i + 2 : end].split():
            if not re.fullmatch(r"[0-9a-fA-F]{1,6}", part) or int(part, 16) > 0x10FFFF:
                raise ValueError(f"invalid \\u{{{part}}}")
            out.append(f"\\U{int(part, 16):08x}")
        return end + 1
    else:
        out.append("\\" + d)
    return i + 1


def _translate_group(source: str, i: int, out: list[str]) -> int:
    """``source[i:]`` starts with ``(?``; copy or convert the group opener."""
    rest = source[i + 2 : i + 3]
    named = re.compile(r"\(\?(?:<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)')").match(source, i)
    if named:
        out.append(f"(?P<{named.group(1) or named.group(2)}>")
        return named.end()
    if rest == "<" and source[i + 3 : i + 4] not in ("=", "!"):
        raise ValueError("invalid group name")
    if rest == "~":
        raise ValueError("the absence operator (?~...) is not supported")
    flags = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])").match(source, i)
    if flags and (flags.group(1) or flags.group(2) is not None):
        on, off = flags.group(1), flags.group(2) or ""
        for letter in on + off:
            if letter not in "imx":
                raise ValueError(f"unsupported inline flag {letter!r}")
        on, off = on.replace("m", "s"), off.replace("m", "s")
        out.append(f"(?{on}" + (f"-{off}" if flags.group(2) is not None else "") + flags.group(3))
        return flags.end()
    out.append("(?")
    return i + 2


def ruby_regex(regex: RubyRegex) -> re.Pattern[str]:
    """Compile a Ruby regex literal for Python (see the module docstring for the mapping).
    Raises ValueError when it uses something that has no safe Python equivalent."""
    flags = re.ASCII
    for letter in regex.flags:
        if letter not in _REGEX_FLAGS:
            raise ValueError(f"unsupported regex flag {letter!r} (use i, m, x)")
        flags |= _REGEX_FLAGS[letter]
    pattern = _translate_regex(regex.source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(pattern, flags)
    except (re.error, RecursionError, OverflowError, FutureWarning, DeprecationWarning) as exc:
        raise ValueError(f"invalid regex: {exc}") from None
