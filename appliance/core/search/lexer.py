"""The query text as tokens, with Lucene's escapes, phrases and range-bound lexing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.core.search.errors import QueryError

_NUM_SUFFIX = re.compile(r"\d+(?:\.\d+)?")


@dataclass
class Tok:
    kind: str  # ( ) [ ] { } : AND OR NOT + - WORD PHRASE ^ ~ EOF
    pos: int
    chars: list[tuple[str, bool]] | None = None  # WORD: (char, is_wildcard)
    text: str = ""  # WORD: unescaped text; PHRASE: content; ^/~: the number
    raw: str = ""  # the source text of the token


_WORD_STOP = set(' \t\r\n\u3000()[]{}":^~')
_RANGE_STOP = set(' \t\r\n\u3000]}"')
_SPACE = set(" \t\r\n\u3000")
_KEYWORDS = {"AND": "AND", "OR": "OR", "NOT": "NOT"}


def describe(tok: Tok) -> str:
    if tok.kind == "EOF":
        return "end of query"
    return f"'{tok.raw}'"


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    range_open: int | None = None  # inside [..] or {..}: Lucene's "range goop" lexer state
    while i < n:  # bounded: every branch advances i
        ch = text[i]
        if ch in _SPACE:
            i += 1
            continue
        start = i
        if ch == '"':
            i, content = _phrase(text, i)
            toks.append(Tok("PHRASE", start, text=content, raw=text[start:i]))
            continue
        if range_open is not None:
            if ch in "]}":
                toks.append(Tok(ch, i, raw=ch))
                range_open = None
                i += 1
                continue
            i, chars = _word(text, i, _RANGE_STOP)
            toks.append(_word_tok(chars, start, text[start:i]))
            continue
        if ch in "()[]{}:":
            toks.append(Tok(ch, i, raw=ch))
            if ch in "[{":
                range_open = i
            i += 1
            continue
        if ch in "^~":
            m = _NUM_SUFFIX.match(text, i + 1)
            number = m.group(0) if m else ""
            i = m.end() if m else i + 1
            toks.append(Tok(ch, start, text=number, raw=text[start:i]))
            continue
        pair = text[i : i + 2]
        if pair in ("&&", "||"):
            toks.append(Tok("AND" if pair == "&&" else "OR", i, raw=pair))
            i += 2
            continue
        if ch in "+-!":
            toks.append(Tok("NOT" if ch == "!" else ch, i, raw=ch))
            i += 1
            continue
        i, chars = _word(text, i, _WORD_STOP)
        raw = text[start:i]
        keyword = _KEYWORDS.get(raw)
        toks.append(Tok(keyword, start, raw=raw) if keyword else _word_tok(chars, start, raw))
    toks.append(Tok("EOF", n))
    return toks


def _word_tok(chars: list[tuple[str, bool]], pos: int, raw: str) -> Tok:
    return Tok("WORD", pos, chars=chars, text="".join(c for c, _ in chars), raw=raw)


def _word(text: str, i: int, stop: set[str]) -> tuple[int, list[tuple[str, bool]]]:
    chars: list[tuple[str, bool]] = []
    n = len(text)
    while i < n and text[i] not in stop:  # bounded: advances i
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                raise QueryError(f"dangling backslash at position {i}", i)
            chars.append((text[i + 1], False))
            i += 2
            continue
        chars.append((ch, ch in "*?"))
        i += 1
    return i, chars


def _phrase(text: str, start: int) -> tuple[int, str]:
    out = []
    i, n = start + 1, len(text)
    while i < n:  # bounded: advances i
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                raise QueryError(f"dangling backslash at position {i}", i)
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return i + 1, "".join(out)
        else:
            out.append(ch)
            i += 1
    raise QueryError(f"unterminated quoted phrase at position {start}", start)
