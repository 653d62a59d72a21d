"""Tokens to a query tree, as Lucene's classic QueryParser combines clauses."""

from __future__ import annotations

from typing import Any

from appliance.core.search.errors import QueryError
from appliance.core.search.lexer import Tok, describe, tokenize
from appliance.core.search.query import (
    MUST,
    MUST_NOT,
    SHOULD,
    Bool,
    Exact,
    Exists,
    Field,
    Fuzzy,
    Glob,
    MatchAll,
    Query,
    Range,
)

MAX_DEPTH = 64  # nested parentheses
MAX_FUZZY_EDITS = 2  # Lucene's maximum
ALL_FIELDS = "text"

_FieldSel = str | Glob | None  # one field, a glob of field names, or every field


_CLAUSE_START = {"WORD", "PHRASE", "(", "[", "{"}
_MODIFIER = {"NOT": MUST_NOT, "-": MUST_NOT, "+": MUST}


def _fuzzy_edits(number: str, length: int) -> int:
    """Lucene's ``FuzzyQuery.floatToEdits``: ``~`` alone is 2; a fraction is a similarity."""
    if not number:
        return MAX_FUZZY_EDITS
    value = float(number)
    if value >= 1:
        return min(int(value), MAX_FUZZY_EDITS)
    if value == 0:
        return 0
    return min(int((1 - value) * length), MAX_FUZZY_EDITS)


def _has_wildcard(chars: list[tuple[str, bool]]) -> bool:
    return any(wild for _, wild in chars)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, message: str, tok: Tok) -> QueryError:
        return QueryError(f"{message} at position {tok.pos}", tok.pos)

    def parse(self) -> Query:
        if not self.text.strip():
            raise QueryError("empty query at position 0", 0)
        query = self.query(None, 0)
        tok = self.peek()
        if tok.kind == ")":
            raise self.error("unbalanced parenthesis: ')' has no matching '('", tok)
        if tok.kind != "EOF":  # pragma: no cover - query() stops only at ')' or EOF
            raise self.error(f"unexpected {describe(tok)}", tok)
        return query

    def query(self, field: _FieldSel, depth: int) -> Query:
        clauses: list[tuple[str, Query]] = []
        while True:  # bounded: each round consumes at least one token
            tok = self.peek()
            if tok.kind in ("EOF", ")"):
                break
            conj = None
            if tok.kind in ("AND", "OR"):
                if not clauses:
                    raise self.error(f"{describe(tok)} has nothing on its left", tok)
                conj = self.take()
                tok = self.peek()
            modifier = None
            if tok.kind in _MODIFIER:
                modifier = self.take()
                tok = self.peek()
            if tok.kind not in _CLAUSE_START:
                after = modifier or conj
                if after is not None:
                    raise self.error(
                        f"{describe(after)} must be followed by a term, not {describe(tok)}",
                        tok,
                    )
                raise self.error(f"unexpected {describe(tok)}{_hint(tok)}", tok)
            clause = self.clause(field, depth)
            _add_clause(
                clauses,
                conj.kind if conj else None,
                _MODIFIER[modifier.kind] if modifier else None,
                clause,
            )
        if not clauses:
            return MatchAll()  # only reachable for "()" — reported by the caller
        if len(clauses) == 1 and clauses[0][0] != MUST_NOT:
            return clauses[0][1]
        return Bool(clauses)

    def clause(self, field: _FieldSel, depth: int) -> Query:
        tok = self.peek()
        if tok.kind == "WORD" and self.peek(1).kind == ":":
            name_tok = self.take()
            colon = self.take()
            value = self.peek()
            if value.kind not in _CLAUSE_START:
                what = "is missing" if value.kind == "EOF" else f"cannot be {describe(value)}"
                raise self.error(f"the value after '{name_tok.raw}:' {what}", value)
            if value.kind == "WORD" and self.peek(1).kind == ":":
                raise self.error("unexpected ':' (escape it as '\\:' in a value)", self.peek(1))
            del colon
            assert name_tok.chars is not None
            if _has_wildcard(name_tok.chars):
                return self.value(Glob(name_tok.chars), depth)
            return self.value(name_tok.text, depth)
        return self.value(field, depth)

    def value(self, field: _FieldSel, depth: int) -> Query:
        tok = self.take()
        if tok.kind == "(":
            if depth >= MAX_DEPTH:
                raise self.error(f"parentheses nested deeper than {MAX_DEPTH}", tok)
            if self.peek().kind == ")":
                raise self.error("empty parentheses", tok)
            inner = self.query(field, depth + 1)
            close = self.take()
            if close.kind != ")":
                raise self.error("unbalanced parenthesis: '(' is never closed", tok)
            self.suffixes(allow_fuzzy=False)
            return inner
        if tok.kind in "[{":
            return self.range(field, tok)
        if tok.kind == "PHRASE":
            self.suffixes(allow_fuzzy=True)  # "a b"~N is a proximity: accepted, ignored
            return _make_field(field, Exact(tok.text))
        assert tok.kind == "WORD" and tok.chars is not None
        fuzzy = self.suffixes(allow_fuzzy=True)
        if fuzzy is not None:
            return _make_field(field, Fuzzy(tok.text, _fuzzy_edits(fuzzy, len(tok.text))))
        if not _has_wildcard(tok.chars):
            return _make_field(field, Exact(tok.text))
        if all(wild and ch == "*" for ch, wild in tok.chars):
            if isinstance(field, Glob) and field.pattern == "*":
                return MatchAll()  # *:*
            return _make_field(field, Exists())
        return _make_field(field, Glob(tok.chars))

    def suffixes(self, *, allow_fuzzy: bool) -> str | None:
        """Boost ``^N`` (ignored) and fuzzy ``~N``; returns the fuzzy number ('' for bare ~)."""
        fuzzy = None
        for _ in range(2):
            tok = self.peek()
            if tok.kind == "^":
                if not tok.text:
                    raise self.error("'^' must be followed by a number (a boost)", tok)
                self.take()
            elif tok.kind == "~" and allow_fuzzy and fuzzy is None:
                fuzzy = self.take().text
            else:
                break
        return fuzzy

    def range(self, field: _FieldSel, open_tok: Tok) -> Query:
        bounds: list[str | None] = []
        for expected_to in (False, True):
            tok = self.take()
            if tok.kind == "EOF":
                raise self.error(f"unterminated range: '{open_tok.raw}' is never closed", open_tok)
            if tok.kind not in ("WORD", "PHRASE"):
                raise self.error(f"expected a range bound, found {describe(tok)}", tok)
            is_star = tok.kind == "WORD" and tok.raw == "*"
            bounds.append(None if is_star else tok.text)
            if not expected_to:
                to = self.take()
                if to.kind == "EOF":
                    raise self.error(
                        f"unterminated range: '{open_tok.raw}' is never closed", open_tok
                    )
                if not (to.kind == "WORD" and to.raw == "TO"):
                    raise self.error(f"expected 'TO' in range, found {describe(to)}", to)
        close = self.take()
        if close.kind == "EOF":
            raise self.error(f"unterminated range: '{open_tok.raw}' is never closed", open_tok)
        if close.kind not in "]}":
            raise self.error(
                f"expected ']' or '}}' to close the range, found {describe(close)}", close
            )
        self.suffixes(allow_fuzzy=False)
        low, high = bounds
        if low is None and high is None:
            return _make_field(field, Exists())
        return _make_field(field, Range(low, high, open_tok.kind == "[", close.kind == "]"))


def _hint(tok: Tok) -> str:
    if tok.kind == ":":
        return " (a field name must come before ':'; escape it as '\\:' in a value)"
    if tok.kind in "]}":
        return " (a range is written field:[low TO high])"
    return ""


def _make_field(field: _FieldSel, matcher: Any) -> Query:
    if field == ALL_FIELDS:
        return Field(None, matcher)
    return Field(field, matcher)


def _add_clause(
    clauses: list[tuple[str, Query]], conj: str | None, modifier: str | None, query: Query
) -> None:
    """Lucene classic QueryParser's ``addClause`` with the default operator OR."""
    if clauses and conj == "AND":
        occur, previous = clauses[-1]
        if occur != MUST_NOT:
            clauses[-1] = (MUST, previous)
    if modifier == MUST_NOT:
        clauses.append((MUST_NOT, query))
    elif modifier == MUST or conj == "AND":
        clauses.append((MUST, query))
    else:
        clauses.append((SHOULD, query))


def parse_query(text: str) -> Query:
    """Parse a Chef (Lucene) query; raises `QueryError` pointing at the problem."""
    return _Parser(text).parse()
