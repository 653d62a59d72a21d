"""A parsed query: the clause tree and the value matchers it applies to a node's fields."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from appliance.core.search.index import Doc

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def as_number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text) else None


class Exact:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def any(self, values: tuple[str, ...] | frozenset[str]) -> bool:
        return self.text in values

    def __repr__(self) -> str:
        return f"Exact({self.text!r})"


class Exists:
    __slots__ = ()

    def any(self, values: Iterable[str]) -> bool:
        return any(True for _ in values)

    def __repr__(self) -> str:
        return "Exists()"


class Glob:
    """``*`` and ``?`` wildcards, matched in linear time (no regex backtracking blow-up)."""

    __slots__ = ("segments", "lengths", "pattern")

    def __init__(self, chars: list[tuple[str, bool]]) -> None:
        segments: list[list[str]] = [[]]
        for ch, wild in chars:
            if wild and ch == "*":
                segments.append([])
            elif wild and ch == "?":
                segments[-1].append(".")
            else:
                segments[-1].append(re.escape(ch))
        self.pattern = "".join(ch for ch, _ in chars)
        self.segments = [re.compile("".join(s), re.DOTALL) for s in segments]
        self.lengths = [len(s) for s in segments]

    def match(self, value: str) -> bool:
        segs, lens = self.segments, self.lengths
        if len(segs) == 1:
            return segs[0].fullmatch(value) is not None
        if sum(lens) > len(value):
            return False
        if not segs[0].match(value):
            return False
        pos, end = lens[0], len(value) - lens[-1]
        for seg, n in zip(segs[1:-1], lens[1:-1], strict=True):
            found = seg.search(value, pos, end)
            if found is None:
                return False
            pos = found.start() + n
        return pos <= end and segs[-1].fullmatch(value, end) is not None

    def any(self, values: Iterable[str]) -> bool:
        return any(self.match(v) for v in values)

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _within(value: str, target: str, edits: int) -> bool:
    """Damerau (optimal string alignment) distance of at most ``edits``, as Lucene's fuzzy
    queries count it (a transposition is one edit); gives up as soon as a row exceeds it."""
    if abs(len(value) - len(target)) > edits:
        return False
    before: list[int] = []
    previous = list(range(len(target) + 1))
    for i, a in enumerate(value, 1):
        current = [i]
        for j, b in enumerate(target, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b))
            if i > 1 and j > 1 and a == target[j - 2] and value[i - 2] == b:
                cost = min(cost, before[j - 2] + 1)
            current.append(cost)
        if min(current) > edits:
            return False
        before, previous = previous, current
    return previous[-1] <= edits


class Fuzzy:
    __slots__ = ("text", "edits")

    def __init__(self, text: str, edits: int) -> None:
        self.text = text
        self.edits = edits

    def any(self, values: Iterable[str]) -> bool:
        return any(_within(v, self.text, self.edits) for v in values)

    def __repr__(self) -> str:
        return f"Fuzzy({self.text!r}, {self.edits})"


class Range:
    __slots__ = ("low", "high", "low_incl", "high_incl", "low_num", "high_num")

    def __init__(self, low: str | None, high: str | None, low_incl: bool, high_incl: bool):
        self.low, self.high = low, high
        self.low_incl, self.high_incl = low_incl, high_incl
        self.low_num = as_number(low) if low is not None else None
        self.high_num = as_number(high) if high is not None else None

    def _ok(self, value: str) -> bool:
        num = as_number(value)
        numeric = (
            num is not None
            and (self.low is None or self.low_num is not None)
            and (self.high is None or self.high_num is not None)
        )
        v: Any = num if numeric else value
        lo: Any = self.low_num if numeric else self.low
        hi: Any = self.high_num if numeric else self.high
        if lo is not None and (v < lo or (v == lo and not self.low_incl)):
            return False
        return not (hi is not None and (v > hi or (v == hi and not self.high_incl)))

    def any(self, values: Iterable[str]) -> bool:
        return any(self._ok(v) for v in values)

    def __repr__(self) -> str:
        lo = "[" if self.low_incl else "{"
        hi = "]" if self.high_incl else "}"
        return f"Range({lo}{self.low!r} TO {self.high!r}{hi})"


# --------------------------------------------------------------------------- query tree

MUST, SHOULD, MUST_NOT = "must", "should", "must_not"


class Query:
    """A parsed query (`parse_query`); `search` applies it to each node's index document."""

    def matches(self, doc: Doc) -> bool:
        raise NotImplementedError


class MatchAll(Query):
    def matches(self, doc: Doc) -> bool:
        return True

    def __repr__(self) -> str:
        return "MatchAll()"


class Field(Query):
    """A value matcher applied to one field, a glob of field names, or every field (None)."""

    def __init__(self, field: str | Glob | None, matcher: Any) -> None:
        self.field = field
        self.matcher = matcher
        self._names: dict[str, bool] = {}

    def matches(self, doc: Doc) -> bool:
        field = self.field
        if field is None:
            return self.matcher.any(doc.values())
        if isinstance(field, str):
            values = doc.fields.get(field)
            return values is not None and self.matcher.any(values)
        names = self._names
        for name, values in doc.fields.items():
            hit = names.get(name)
            if hit is None:
                hit = names[name] = field.match(name)
            if hit and self.matcher.any(values):
                return True
        return False

    def __repr__(self) -> str:
        return f"Field({self.field!r}, {self.matcher!r})"


class Bool(Query):
    def __init__(self, clauses: list[tuple[str, Query]]) -> None:
        self.clauses = clauses
        self.must = [q for o, q in clauses if o == MUST]
        self.should = [q for o, q in clauses if o == SHOULD]
        self.must_not = [q for o, q in clauses if o == MUST_NOT]

    def matches(self, doc: Doc) -> bool:
        for q in self.must_not:
            if q.matches(doc):
                return False
        for q in self.must:
            if not q.matches(doc):
                return False
        if self.must or not self.should:
            return True
        return any(q.matches(doc) for q in self.should)

    def __repr__(self) -> str:
        return f"Bool({self.clauses!r})"
