"""Chef node search over the node records: the index document, the query language, partial search.

There is no Chef server (and no Solr/Elasticsearch) behind the appliance, so it answers
``/search/node`` itself. What Chef Server does, from its source (oc_erchef):

- Index document (``chef_node:ejson_for_indexing``): the attributes deep-merged with
  ``default < normal < override < automatic`` (``chef_deep_merge``: hashes merge key by key,
  anything else, arrays included, is replaced by the higher level), then the top-level keys
  ``name``, ``chef_type`` ("node"), ``chef_environment``, ``recipe`` and ``role`` (the names in
  the run list, ``recipe[x]`` → ``x``) and ``run_list`` replace attributes of the same name.
- Flattening (``chef_index_expand:expand``): a leaf under the key path ``k1..kn`` is indexed as
  ``k1_k2_..._kn`` *and* under its own key ``kn``; an array gives one value per element under
  the same keys; every key of a nested hash is also indexed as a *value* of its parent's path
  (so ``kernel:release`` matches ``{"kernel": {"release": ...}}``); values are strings:
  integers in decimal, ``true``/``false``, ``null`` as ``""``; duplicates dropped. The type
  marker ``X_CHEF_type_CHEF_X:node`` is indexed too.
- Query (``chef_lucene.peg`` → Solr/Elasticsearch ``query_string``): Lucene syntax, with
  ``field:value`` on the flattened keys. Elasticsearch uses a ``whitespace`` analyzer and
  ``lowercase_expanded_terms: false``, so matching is **case-sensitive**; no default operator
  is configured, so juxtaposed clauses are **OR** (Lucene's default). ``AND``/``OR``/``NOT``
  are keywords only in capitals (``a and b`` is three terms). A missing ``q`` means ``*:*``;
  ``start``/``rows`` are non-negative integers (default 0 and 1000); Chef ignores ``sort``.
- Partial search (``chef_wm_search``): the body maps an alias to a key path into the index
  document above (merged attributes plus the top-level keys); a missing path gives ``null``.

Where we differ, on purpose:
- Values are matched whole (Chef's whitespace tokenizer would split ``"a b"`` into two tokens
  and make ``field:a`` match it); a quoted phrase matches a whole value, wildcards in it are
  literal, a proximity ``~N`` after it is accepted and ignored, as is a boost ``^N``.
- ``roles`` and ``recipes`` also hold the run list's roles and recipes (Chef fills them only
  from chef-client's automatic attributes, which no chef-client writes here); ``role`` and
  ``recipe`` are Chef's run-list-only fields.
- A bare term (no field), and the field ``text``, match any value of any field.
- Ranges compare numerically when the value and every bound given are numbers, else as
  strings (Chef compares strings only); ``*`` is an open bound; ``[`` / ``{`` may mix.
- ``sort`` is honoured (``FIELD [asc|desc]``, comma-separated; Chef's ``X_CHEF_id_CHEF_X`` is
  the node name); results are by name otherwise, so paging is stable.
- A query that is pure negation (``-role:db``, ``NOT a``), at any level, matches everything
  except what it excludes (Elasticsearch's behaviour; plain Lucene would match nothing).
- ``/regex/`` is not supported: ``/`` is an ordinary character. Floats are indexed as
  Python's ``repr`` (Erlang's ``~p`` would write ``1.0e10`` where we write ``10000000000.0``).

Clauses combine as in Lucene's classic QueryParser: ``+``/``-``/``!``/``NOT`` mark a clause
required/prohibited; ``AND`` makes both neighbours required; ``OR`` and juxtaposition leave
them optional; a group matches when every required clause and no prohibited one matches and,
if nothing is required, at least one optional clause does (so ``a AND b OR c`` is ``a AND b``).

Errors are `QueryError(message, position)`; ``position`` is the 0-based offset in the query
text and the message says ``at position N``, as Python's ``re`` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_ROWS",
    "IndexCache",
    "Query",
    "QueryError",
    "flatten_node",
    "index_document",
    "parse_filter_result",
    "parse_query",
    "parse_sort",
    "partial",
    "search",
]

DEFAULT_ROWS = 1000
MAX_DEPTH = 64  # nested parentheses
MAX_FUZZY_EDITS = 2  # Lucene's maximum
ID_FIELD = "X_CHEF_id_CHEF_X"
ALL_FIELDS = "text"

_PRECEDENCE = ("default", "normal", "override", "automatic")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NUM_SUFFIX = re.compile(r"\d+(?:\.\d+)?")


class QueryError(ValueError):
    """A malformed query (or sort); ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# --------------------------------------------------------------------------- index document


def _deep_merge(lower: Any, higher: Any) -> Any:
    """``chef_deep_merge:merge``: hashes merge key by key; anything else is replaced.

    Iterative (no recursion limit); copies every hash it changes, never its inputs."""
    if not (isinstance(lower, dict) and isinstance(higher, dict)):
        return higher
    root = dict(lower)
    stack = [(root, higher)]
    while stack:  # bounded: each hash of ``higher`` is visited once
        target, source = stack.pop()
        for key, value in source.items():
            current = target.get(key)
            if isinstance(current, dict) and isinstance(value, dict):
                merged = target[key] = dict(current)
                stack.append((merged, value))
            else:
                target[key] = value
    return root


def _run_list_names(run_list: Iterable[Any], kind: str) -> list[str]:
    prefix = f"{kind}["
    out = []
    for item in run_list:
        if not isinstance(item, str):
            continue
        if item.startswith(prefix) and item.endswith("]"):
            out.append(item[len(prefix) : -1])
        elif kind == "recipe" and "[" not in item:  # a bare name is a recipe
            out.append(item)
    return out


def index_document(node: Mapping[str, Any]) -> dict[str, Any]:
    """The object Chef indexes and partial search reads: merged attributes + top-level keys."""
    merged: Any = {}
    for level in _PRECEDENCE:
        value = node.get(level)
        if isinstance(value, dict):
            merged = _deep_merge(merged, value)
    run_list = node.get("run_list")
    run_list = list(run_list) if isinstance(run_list, list) else []
    doc = dict(merged)
    doc.update(
        {
            "name": node.get("name", ""),
            "chef_type": "node",
            "chef_environment": node.get("chef_environment", "_default"),
            "recipe": _run_list_names(run_list, "recipe"),
            "role": _run_list_names(run_list, "role"),
            "run_list": run_list,
        }
    )
    return doc


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _flatten(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """``chef_index_expand`` on ``doc``, with an explicit stack (no recursion limit)."""
    out: dict[str, list[str]] = {}

    def add(path: tuple[str, ...], value: str) -> None:
        out.setdefault("_".join(path), []).append(value)
        if len(path) > 1:
            out.setdefault(path[-1], []).append(value)

    stack: list[tuple[tuple[str, ...], Any]] = [((), doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            children = []
            for key, child in value.items():
                key = _scalar(key)
                if path:
                    add(path, key)
                children.append((path + (key,), child))
            stack.extend(reversed(children))
        elif isinstance(value, list | tuple):
            stack.extend((path, item) for item in reversed(value))
        elif path:
            add(path, _scalar(value))
    return {field: list(dict.fromkeys(values)) for field, values in out.items()}


def flatten_node(node: Mapping[str, Any]) -> dict[str, list[str]]:
    """Chef's index document of a node record: field name → its string values."""
    doc = index_document(node)
    fields = _flatten(doc)
    fields["X_CHEF_type_CHEF_X"] = ["node"]
    for many, one in (("roles", "role"), ("recipes", "recipe")):
        values = list(dict.fromkeys(doc[one] + fields.get(many, [])))
        if values:
            fields[many] = values
    return fields


class _Doc:
    """One indexed node: the record, its fields, and (lazily) the set of all its values."""

    __slots__ = ("node", "fields", "_values", "_document")

    def __init__(self, node: Mapping[str, Any]) -> None:
        self.node = node
        self.fields = {f: tuple(v) for f, v in flatten_node(node).items()}
        self._values: frozenset[str] | None = None
        self._document: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return _scalar(self.node.get("name", ""))

    def values(self) -> frozenset[str]:
        if self._values is None:
            self._values = frozenset(v for vs in self.fields.values() for v in vs)
        return self._values

    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = index_document(self.node)
        return self._document


class IndexCache:
    """Indexed documents of one set of node records (one org), kept between searches.

    Keyed by the record's identity: a saved node replaces the record in the state
    (``identity.apply``), it is never changed in place, so a record seen again is unchanged.
    The cache holds the record itself, so its id cannot be reused while cached, and each
    `docs` call keeps only the records it was given, so deleted nodes do not linger.
    """

    def __init__(self) -> None:
        self._docs: dict[int, _Doc] = {}

    def __len__(self) -> int:
        return len(self._docs)

    def lookup(self, node: Mapping[str, Any]) -> _Doc | None:
        doc = self._docs.get(id(node))
        return doc if doc is not None and doc.node is node else None

    def docs(self, nodes: Iterable[Mapping[str, Any]]) -> list[_Doc]:
        old, new = self._docs, {}
        out = []
        for node in nodes:
            key = id(node)
            doc = old.get(key)
            if doc is None or doc.node is not node:
                doc = _Doc(node)
            new[key] = doc
            out.append(doc)
        self._docs = new
        return out


# --------------------------------------------------------------------------- value matchers


def _number(text: str) -> float | None:
    return float(text) if _NUMBER.fullmatch(text) else None


class _Exact:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def any(self, values: tuple[str, ...] | frozenset[str]) -> bool:
        return self.text in values

    def __repr__(self) -> str:
        return f"Exact({self.text!r})"


class _Exists:
    __slots__ = ()

    def any(self, values: Iterable[str]) -> bool:
        return any(True for _ in values)

    def __repr__(self) -> str:
        return "Exists()"


class _Glob:
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


class _Fuzzy:
    __slots__ = ("text", "edits")

    def __init__(self, text: str, edits: int) -> None:
        self.text = text
        self.edits = edits

    def any(self, values: Iterable[str]) -> bool:
        return any(_within(v, self.text, self.edits) for v in values)

    def __repr__(self) -> str:
        return f"Fuzzy({self.text!r}, {self.edits})"


class _Range:
    __slots__ = ("low", "high", "low_incl", "high_incl", "low_num", "high_num")

    def __init__(self, low: str | None, high: str | None, low_incl: bool, high_incl: bool):
        self.low, self.high = low, high
        self.low_incl, self.high_incl = low_incl, high_incl
        self.low_num = _number(low) if low is not None else None
        self.high_num = _number(high) if high is not None else None

    def _ok(self, value: str) -> bool:
        num = _number(value)
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

    def matches(self, doc: _Doc) -> bool:
        raise NotImplementedError


class _MatchAll(Query):
    def matches(self, doc: _Doc) -> bool:
        return True

    def __repr__(self) -> str:
        return "MatchAll()"


class _Field(Query):
    """A value matcher applied to one field, a glob of field names, or every field (None)."""

    def __init__(self, field: str | _Glob | None, matcher: Any) -> None:
        self.field = field
        self.matcher = matcher
        self._names: dict[str, bool] = {}

    def matches(self, doc: _Doc) -> bool:
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


class _Bool(Query):
    def __init__(self, clauses: list[tuple[str, Query]]) -> None:
        self.clauses = clauses
        self.must = [q for o, q in clauses if o == MUST]
        self.should = [q for o, q in clauses if o == SHOULD]
        self.must_not = [q for o, q in clauses if o == MUST_NOT]

    def matches(self, doc: _Doc) -> bool:
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


# --------------------------------------------------------------------------- tokenizer

_FieldSel = str | _Glob | None  # one field, a glob of field names, or every field


@dataclass
class _Tok:
    kind: str  # ( ) [ ] { } : AND OR NOT + - WORD PHRASE ^ ~ EOF
    pos: int
    chars: list[tuple[str, bool]] | None = None  # WORD: (char, is_wildcard)
    text: str = ""  # WORD: unescaped text; PHRASE: content; ^/~: the number
    raw: str = ""  # the source text of the token


_WORD_STOP = set(' \t\r\n\u3000()[]{}":^~')
_RANGE_STOP = set(' \t\r\n\u3000]}"')
_SPACE = set(" \t\r\n\u3000")
_KEYWORDS = {"AND": "AND", "OR": "OR", "NOT": "NOT"}


def _describe(tok: _Tok) -> str:
    if tok.kind == "EOF":
        return "end of query"
    return f"'{tok.raw}'"


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
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
            toks.append(_Tok("PHRASE", start, text=content, raw=text[start:i]))
            continue
        if range_open is not None:
            if ch in "]}":
                toks.append(_Tok(ch, i, raw=ch))
                range_open = None
                i += 1
                continue
            i, chars = _word(text, i, _RANGE_STOP)
            toks.append(_word_tok(chars, start, text[start:i]))
            continue
        if ch in "()[]{}:":
            toks.append(_Tok(ch, i, raw=ch))
            if ch in "[{":
                range_open = i
            i += 1
            continue
        if ch in "^~":
            m = _NUM_SUFFIX.match(text, i + 1)
            number = m.group(0) if m else ""
            i = m.end() if m else i + 1
            toks.append(_Tok(ch, start, text=number, raw=text[start:i]))
            continue
        pair = text[i : i + 2]
        if pair in ("&&", "||"):
            toks.append(_Tok("AND" if pair == "&&" else "OR", i, raw=pair))
            i += 2
            continue
        if ch in "+-!":
            toks.append(_Tok("NOT" if ch == "!" else ch, i, raw=ch))
            i += 1
            continue
        i, chars = _word(text, i, _WORD_STOP)
        raw = text[start:i]
        keyword = _KEYWORDS.get(raw)
        toks.append(_Tok(keyword, start, raw=raw) if keyword else _word_tok(chars, start, raw))
    toks.append(_Tok("EOF", n))
    return toks


def _word_tok(chars: list[tuple[str, bool]], pos: int, raw: str) -> _Tok:
    return _Tok("WORD", pos, chars=chars, text="".join(c for c, _ in chars), raw=raw)


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


# --------------------------------------------------------------------------- parser

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
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, message: str, tok: _Tok) -> QueryError:
        return QueryError(f"{message} at position {tok.pos}", tok.pos)

    def parse(self) -> Query:
        if not self.text.strip():
            raise QueryError("empty query at position 0", 0)
        query = self.query(None, 0)
        tok = self.peek()
        if tok.kind == ")":
            raise self.error("unbalanced parenthesis: ')' has no matching '('", tok)
        if tok.kind != "EOF":  # pragma: no cover - query() stops only at ')' or EOF
            raise self.error(f"unexpected {_describe(tok)}", tok)
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
                    raise self.error(f"{_describe(tok)} has nothing on its left", tok)
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
                        f"{_describe(after)} must be followed by a term, not {_describe(tok)}",
                        tok,
                    )
                raise self.error(f"unexpected {_describe(tok)}{_hint(tok)}", tok)
            clause = self.clause(field, depth)
            _add_clause(
                clauses,
                conj.kind if conj else None,
                _MODIFIER[modifier.kind] if modifier else None,
                clause,
            )
        if not clauses:
            return _MatchAll()  # only reachable for "()" — reported by the caller
        if len(clauses) == 1 and clauses[0][0] != MUST_NOT:
            return clauses[0][1]
        return _Bool(clauses)

    def clause(self, field: _FieldSel, depth: int) -> Query:
        tok = self.peek()
        if tok.kind == "WORD" and self.peek(1).kind == ":":
            name_tok = self.take()
            colon = self.take()
            value = self.peek()
            if value.kind not in _CLAUSE_START:
                what = "is missing" if value.kind == "EOF" else f"cannot be {_describe(value)}"
                raise self.error(f"the value after '{name_tok.raw}:' {what}", value)
            if value.kind == "WORD" and self.peek(1).kind == ":":
                raise self.error("unexpected ':' (escape it as '\\:' in a value)", self.peek(1))
            del colon
            assert name_tok.chars is not None
            if _has_wildcard(name_tok.chars):
                return self.value(_Glob(name_tok.chars), depth)
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
            return _make_field(field, _Exact(tok.text))
        assert tok.kind == "WORD" and tok.chars is not None
        fuzzy = self.suffixes(allow_fuzzy=True)
        if fuzzy is not None:
            return _make_field(field, _Fuzzy(tok.text, _fuzzy_edits(fuzzy, len(tok.text))))
        if not _has_wildcard(tok.chars):
            return _make_field(field, _Exact(tok.text))
        if all(wild and ch == "*" for ch, wild in tok.chars):
            if isinstance(field, _Glob) and field.pattern == "*":
                return _MatchAll()  # *:*
            return _make_field(field, _Exists())
        return _make_field(field, _Glob(tok.chars))

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

    def range(self, field: _FieldSel, open_tok: _Tok) -> Query:
        bounds: list[str | None] = []
        for expected_to in (False, True):
            tok = self.take()
            if tok.kind == "EOF":
                raise self.error(f"unterminated range: '{open_tok.raw}' is never closed", open_tok)
            if tok.kind not in ("WORD", "PHRASE"):
                raise self.error(f"expected a range bound, found {_describe(tok)}", tok)
            is_star = tok.kind == "WORD" and tok.raw == "*"
            bounds.append(None if is_star else tok.text)
            if not expected_to:
                to = self.take()
                if to.kind == "EOF":
                    raise self.error(
                        f"unterminated range: '{open_tok.raw}' is never closed", open_tok
                    )
                if not (to.kind == "WORD" and to.raw == "TO"):
                    raise self.error(f"expected 'TO' in range, found {_describe(to)}", to)
        close = self.take()
        if close.kind == "EOF":
            raise self.error(f"unterminated range: '{open_tok.raw}' is never closed", open_tok)
        if close.kind not in "]}":
            raise self.error(
                f"expected ']' or '}}' to close the range, found {_describe(close)}", close
            )
        self.suffixes(allow_fuzzy=False)
        low, high = bounds
        if low is None and high is None:
            return _make_field(field, _Exists())
        return _make_field(field, _Range(low, high, open_tok.kind == "[", close.kind == "]"))


def _hint(tok: _Tok) -> str:
    if tok.kind == ":":
        return " (a field name must come before ':'; escape it as '\\:' in a value)"
    if tok.kind in "]}":
        return " (a range is written field:[low TO high])"
    return ""


def _make_field(field: _FieldSel, matcher: Any) -> Query:
    if field == ALL_FIELDS:
        return _Field(None, matcher)
    return _Field(field, matcher)


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


# --------------------------------------------------------------------------- sort, search


@dataclass(frozen=True)
class _SortKey:
    field: str
    descending: bool


def parse_sort(text: str | None) -> list[_SortKey]:
    """``FIELD [asc|desc]`` separated by commas; ``X_CHEF_id_CHEF_X`` means the node name."""
    if text is None or not text.strip():
        return []
    keys = []
    offset = 0
    for part in text.split(","):
        words = part.split()
        pos = offset + (len(part) - len(part.lstrip()))
        offset += len(part) + 1
        if not words or len(words) > 2:
            raise QueryError(f"sort must be 'FIELD [asc|desc]' at position {pos}", pos)
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            at = pos + part.strip().find(words[1])
            raise QueryError(f"sort direction must be asc or desc at position {at}", at)
        field = "name" if words[0] == ID_FIELD else words[0]
        keys.append(_SortKey(field, direction == "desc"))
    return keys


def _sort_value(doc: _Doc, field: str) -> tuple[int, Any] | None:
    values = doc.fields.get(field)
    if not values:
        return None
    numbers = [_number(v) for v in values]
    if all(x is not None for x in numbers):
        return (0, min(numbers))  # type: ignore[type-var]
    return (1, min(values))


def _sorted(docs: list[_Doc], keys: list[_SortKey]) -> list[_Doc]:
    out = sorted(docs, key=lambda d: d.name)
    for key in reversed(keys):  # stable passes, last key first; missing values sort last
        present = [(v, d) for d in out if (v := _sort_value(d, key.field)) is not None]
        missing = [d for d in out if key.field not in d.fields or not d.fields[key.field]]
        present.sort(key=lambda pair: pair[0], reverse=key.descending)
        out = [d for _, d in present] + missing
    return out


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return value


def search(
    nodes: Iterable[Mapping[str, Any]],
    query: str | Query,
    *,
    start: int = 0,
    rows: int = DEFAULT_ROWS,
    sort: str | None = None,
    cache: IndexCache | None = None,
) -> tuple[int, list[Mapping[str, Any]]]:
    """(number of matches, the node records of the page ``[start, start + rows)``)."""
    _check_count("start", start)
    _check_count("rows", rows)
    parsed = parse_query(query) if isinstance(query, str) else query
    keys = parse_sort(sort)
    docs = cache.docs(nodes) if cache is not None else [_Doc(n) for n in nodes]
    hits = [d for d in docs if parsed.matches(d)]
    ordered = _sorted(hits, keys)
    return len(ordered), [d.node for d in ordered[start : start + rows]]


# --------------------------------------------------------------------------- partial search


def parse_filter_result(body: Any) -> dict[str, list[str]]:
    """The partial-search mapping ``{alias: [key, ...]}``, bare or as ``{"filter_result": ...}``.

    Raises ValueError("invalid partial search request body") otherwise, Chef's message.
    """
    if (
        isinstance(body, dict)
        and set(body) == {"filter_result"}
        and isinstance(body["filter_result"], dict)
    ):
        body = body["filter_result"]
    if not isinstance(body, dict):
        raise ValueError("invalid partial search request body")
    for alias, path in body.items():
        if not isinstance(alias, str) or not isinstance(path, list):
            raise ValueError("invalid partial search request body")
        if not all(isinstance(key, str) for key in path):
            raise ValueError("invalid partial search request body")
    return body


def _extract(document: Mapping[str, Any], path: list[str]) -> Any:
    if not path:
        return None
    value: Any = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def partial(
    rows: Iterable[Mapping[str, Any]],
    filter_result: Mapping[str, list[str]],
    *,
    url_for: Callable[[Mapping[str, Any]], str] | None = None,
    cache: IndexCache | None = None,
) -> list[dict[str, Any]]:
    """Chef partial search rows ``{"url": ..., "data": {alias: value at path}}``.

    Paths read the index document (merged attributes plus ``name``, ``chef_environment``,
    ``run_list``, ``recipe``, ``role``); a missing path is ``None``. ``url_for`` makes the
    row's url from the node record (the route knows the base URL); by default the name.
    """
    out = []
    for node in rows:
        doc = cache.lookup(node) if cache is not None else None
        document = doc.document() if doc is not None else index_document(node)
        url = url_for(node) if url_for is not None else _scalar(node.get("name", ""))
        data = {alias: _extract(document, list(path)) for alias, path in filter_result.items()}
        out.append({"url": url, "data": data})
    return out
