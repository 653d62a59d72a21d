"""Ruby config files as tokens: the one lexer behind the node client's and the CLI's readers.

Both ``push-jobs-client.rb`` (the client, literal values only) and ``knife.rb`` (the CLI, with
idioms such as ``"#{current_dir}/x.pem"``) are read without running Ruby. This module only
splits text into tokens; what each reader accepts is its own decision, so the lexer never
refuses anything. It recognises the union of what either reader must see (heredocs,
``%w``-style literals, regex literals, backticks, ``#{...}`` interpolation, labels,
``__END__``, ``=begin``/``=end``) and attaches a `Problem` to a token instead of raising:

- a *fatal* problem (an unterminated string, regex, heredoc, ``=begin`` or ``#{``) ends the
  token stream: no reader can go on;
- any other problem (a bad escape, a mismatched bracket, interpolation where the strict
  reader wants a literal) is Ruby it may or may not accept: the literal-only client stops
  on the first problem of any kind, the CLI only on fatal ones.

It lives in the core because it is pure (text in, tokens out) and shared by two shells.
Tokens come lazily, so a reader that stops at ``__END__`` or at its first error never makes
the lexer read further.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Lexer", "Problem", "Token", "join_lines", "MAX_NUMBER_CHARS"]

MAX_NUMBER_CHARS = 64
_MAX_NESTING = 32  # ``"#{"#{...}"}"`` levels

#: Operators of more than one character, longest first.
_OPS = sorted(
    "... ** ||= &&= :: || && == != =~ => <= >= += -= *= << .. &. ->".split(), key=len, reverse=True
)
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_PAIRS = {**_OPEN, "<": ">"}  # %-literal delimiters
#: Token kinds that are a value: after one, ``/`` divides and ``%`` is modulo.
_VALUE_KINDS = frozenset(
    {"name", "const", "var", "int", "float", "str", "sym", "xstr", "regex", "percent", "heredoc"}
)
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "f": "\f",
    "v": "\v",
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "s": " ",
}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")
_VAR_RE = re.compile(r"(?:@@?|\$)[A-Za-z_]\w*[?!]?")
_NUMBER_RE = re.compile(
    r"""(?:
        0[xX][0-9a-fA-F]+(?:_[0-9a-fA-F]+)*
      | 0[bB][01]+(?:_[01]+)*
      | 0[oO]?[0-7]+(?:_[0-7]+)*
      | (?:0|[1-9][0-9]*(?:_[0-9]+)*)(?:\.[0-9]+(?:_[0-9]+)*)?(?:[eE][+-]?[0-9]+)?
    )""",
    re.X,
)
_BEGIN_RE = re.compile(r"=begin(\s|$)")
_END_RE = re.compile(r"^=end(\s|$)", re.M)
_OCTAL_RE = re.compile(r"[0-7]{1,3}")
_HEX2_RE = re.compile(r"[0-9a-fA-F]{1,2}")
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
_UNICODE_BRACES_RE = re.compile(r"\{\s*([0-9a-fA-F]{1,6}(?:\s+[0-9a-fA-F]{1,6})*)\s*\}")
_FLAG_LETTERS_RE = re.compile(r"[A-Za-z]*")
_HEREDOC_RE = re.compile(r"<<([~-]?)(?:([A-Za-z_]\w*)|(['\"`])([^'\"`\n]+)\3)")
_PERCENT_RE = re.compile(r"%([qQwWiIrsx]?)([^\w\s])")
_CHAR_RE = re.compile(r"\?[A-Za-z0-9_](?![\w])")
_END_DATA_RE = re.compile(r"__END__[ \t\r\f\v]*(?:\n|$)")


@dataclass(frozen=True)
class Problem:
    """Why a token may be unacceptable: ``line`` is where the construct starts (or the
    offending character is), ``end_line`` where the lexer was when it found out."""

    line: int
    message: str
    fatal: bool = False
    end_line: int = 0


class Token(NamedTuple):
    """One token. ``kind`` is one of: name const var label sym str xstr percent heredoc regex
    int float op nl data eof (``data`` is an ``__END__`` line; ``nl`` is a newline or ``;``
    outside brackets)."""

    kind: str
    text: str  # the spelling (names, operators, numbers) or a marker: ' " % ? ` /regex/
    line: int
    start: int = 0  # offset in the text
    spaced: bool = False  # whitespace (or a ``\\`` continuation) just before it
    value: Any = None  # str/sym/label: the decoded text; int/float: the number; regex: (src, flags)
    parts: tuple[Any, ...] = ()  # str/xstr: literal pieces and token lists (``#{...}``)
    problems: tuple[Problem, ...] = ()

    @property
    def problem(self) -> Problem | None:
        """The first problem, in text order."""
        return self.problems[0] if self.problems else None

    @property
    def fatal(self) -> Problem | None:
        """The first problem that ends the token stream."""
        return next((p for p in self.problems if p.fatal), None)


def join_lines(tokens: Iterable[Token], continues: Callable[[Token], bool]) -> Iterator[Token]:
    """Drop the ``nl`` tokens that end no statement: leading or repeated ones, and newlines
    after a token that ``continues`` the line (each reader has its own list: ``,``, ``=``...).
    A ``;`` always ends a non-empty statement; a token with a problem is always kept."""
    prev: Token | None = None
    for tok in tokens:
        if (
            tok.kind == "nl"
            and not tok.problems
            and (prev is None or prev.kind == "nl" or (tok.text == "\n" and continues(prev)))
        ):
            continue
        prev = tok
        yield tok


def _is_ident_start(ch: str) -> bool:
    return ch == "_" or (ch.isascii() and ch.isalpha())


def _interpolates(text: str, i: int) -> bool:
    """Whether ``#`` followed by ``text[i:]`` interpolates in a Ruby double-quoted string."""
    ch = text[i]
    if ch == "{":
        return True
    if ch in "@$" and i + 1 < len(text):
        nxt = text[i + 1]
        return _is_ident_start(nxt) or (ch == "@" and nxt == "@")
    return False


class _Stop(Exception):
    """A fatal problem: the token being read is yielded with it, and nothing after."""


class Lexer:
    """``Lexer(text).tokens()``: every token, then ``eof`` (unless a fatal problem ends it).

    ``division``: whether ``/`` after a value divides (Ruby's rule, for the CLI, which
    evaluates expressions) or always opens a regex (the literal-only client has no
    division, and an unquoted path is then named in its error)."""

    def __init__(self, text: str, *, division: bool = True) -> None:
        self.text = text
        self.division = division
        self.i = 0
        self.line = 1
        self.heredocs: list[tuple[str, bool]] = []
        self.problems: list[Problem] = []  # of the token being read
        self.nesting = 0

    def tokens(self) -> Iterator[Token]:
        """The tokens of the whole text, lazily."""
        return self._scan(nested=False)

    # -- helpers --

    def _problem(self, message: str, line: int | None = None, *, fatal: bool = False) -> None:
        where = self.line if line is None else line
        self.problems.append(Problem(where, message, fatal, self.line))
        if fatal:
            raise _Stop

    def _tok(self, kind: str, text: str, line: int, start: int, **extra: Any) -> Token:
        spaced = start > 0 and self.text[start - 1] in " \t\\"
        problems, self.problems = tuple(self.problems), []
        return Token(kind, text, line, start, spaced, problems=problems, **extra)

    # -- the main loop --

    def _scan(self, nested: bool) -> Iterator[Token]:
        text, n = self.text, len(self.text)
        stack: list[tuple[str, int]] = []
        prev: Token | None = None
        while True:
            if self.i >= n:
                break
            c = text[self.i]
            start, line = self.i, self.line
            at_line_start = start == 0 or text[start - 1] == "\n"
            tok: Token | None = None
            try:
                if c == "\n":
                    self.i += 1
                    self.line += 1
                    self._skip_heredocs()
                    if not stack and not nested:
                        tok = self._tok("nl", "\n", line, start)
                elif c in " \t\r\f\v":
                    self.i += 1
                elif c == "#":
                    end = text.find("\n", self.i)
                    self.i = n if end < 0 else end
                elif c == "\\" and text.startswith(("\n", "\r\n"), self.i + 1):
                    self.i = text.index("\n", self.i) + 1
                    self.line += 1
                elif c == "=" and at_line_start and not nested and _BEGIN_RE.match(text, self.i):
                    self._skip_block_comment()
                elif c == "_" and at_line_start and not nested and _END_DATA_RE.match(text, start):
                    self.i += len("__END__")
                    tok = self._tok("data", "__END__", line, start)
                elif c == ";":
                    self.i += 1
                    kind = "op" if stack or nested else "nl"
                    tok = self._tok(kind, ";", line, start)
                elif c == "'":
                    self.i += 1
                    value = self._single("'", "", line)
                    tok = self._string_or_label(value, line, start, "'", (value,))
                elif c == '"':
                    self.i += 1
                    parts = self._double('"', "", line)
                    value = "".join(p for p in parts if isinstance(p, str))
                    tok = self._string_or_label(value, line, start, '"', parts)
                elif c == "`":
                    self.i += 1
                    parts = self._double("`", "", line)
                    tok = self._tok("xstr", "`", line, start, parts=parts)
                elif c == ":":
                    tok = self._colon(line, start)
                elif c == "%" and self._percent_starts(prev):
                    tok = self._percent(line, start)
                elif c == "<" and (heredoc := self._heredoc(line, start)) is not None:
                    tok = heredoc
                elif c == "/" and (not self.division or self._regex_starts(prev)):
                    tok = self._regex(line, start)
                elif c == "?" and prev is not None and prev.kind not in _VALUE_KINDS:
                    tok = self._char(line, start)
                if tok is None and self.i == start:
                    tok = self._word_number_or_op(c, line, start, stack, nested)
                    if tok is None:  # the ``}`` that closes ``#{``
                        return
            except _Stop:
                tok = self._tok(_KIND_OF.get(c, "op"), c, line, start)
                yield tok
                return
            if tok is not None:
                if tok.kind != "op" or tok.text != ";":  # inside brackets: no statement end
                    prev = tok
                yield tok
        if nested:
            self.problems.append(
                Problem(self.line, "unterminated #{...} interpolation", True, self.line)
            )
            yield self._tok("eof", "", self.line, self.i)
            return
        if stack:
            opener, opened = stack[-1]
            self.problems.append(Problem(opened, f"{opener!r} is never closed", False, self.line))
        yield self._tok("eof", "", self.line, self.i)

    def _word_number_or_op(
        self, c: str, line: int, start: int, stack: list[tuple[str, int]], nested: bool
    ) -> Token | None:
        text = self.text
        if _is_ident_start(c):
            match = _NAME_RE.match(text, start)
            assert match is not None
            word = match.group()
            self.i = match.end()
            if text.startswith(":", self.i) and not text.startswith("::", self.i):
                self.i += 1
                return self._tok("label", word, line, start, value=word)
            return self._tok("const" if word[0].isupper() else "name", word, line, start)
        if c in "@$" and (match := _VAR_RE.match(text, start)) is not None:
            self.i = match.end()
            return self._tok("var", match.group(), line, start)
        if c in "0123456789":
            return self._number(line, start)
        if c in _OPEN:
            stack.append((c, line))
        elif c in _CLOSE:
            if not stack:
                if nested and c == "}":
                    self.i += 1
                    return None
                self._problem(f"unmatched {c!r}")
            else:
                opener, opened = stack.pop()
                if opener != _CLOSE[c]:
                    self._problem(f"{c!r} does not match {opener!r} opened on line {opened}")
        op = next((o for o in _OPS if text.startswith(o, start)), c)
        self.i = start + len(op)
        return self._tok("op", op, line, start)

    # -- comments and heredoc bodies --

    def _skip_block_comment(self) -> None:
        match = _END_RE.search(self.text, self.i)
        if match is None:
            self._problem("=begin without =end", fatal=True)
            return
        end = self.text.find("\n", match.start())
        end = len(self.text) if end < 0 else end
        self.line += self.text.count("\n", self.i, end)
        self.i = end

    def _heredoc(self, line: int, start: int) -> Token | None:
        match = _HEREDOC_RE.match(self.text, start)
        if match is None:
            return None
        ident = match.group(2) or match.group(4)
        if not match.group(1) and not match.group(3) and not ident.isupper():
            return None  # ``list <<value`` is an append
        self.heredocs.append((ident, bool(match.group(1))))
        self.i = match.end()
        return self._tok("heredoc", "<<heredoc", line, start)

    def _skip_heredocs(self) -> None:
        text, n = self.text, len(self.text)
        while self.heredocs:
            ident, indented = self.heredocs.pop(0)
            while True:
                if self.i >= n:
                    self._problem(f"heredoc {ident} is not terminated", fatal=True)
                end = text.find("\n", self.i)
                end = n if end < 0 else end
                body_line = text[self.i : end]
                self.i = min(n, end + 1)
                self.line += 1
                if (body_line.strip() if indented else body_line) == ident:
                    break

    # -- strings --

    def _string_or_label(
        self, value: str, line: int, start: int, opener: str, parts: tuple[Any, ...]
    ) -> Token:
        if self.text.startswith(":", self.i) and not self.text.startswith("::", self.i):
            self.i += 1
            return self._tok("label", opener, line, start, value=value, parts=parts)
        return self._tok("str", opener, line, start, value=value, parts=parts)

    def _single(self, closer: str, opener: str, start_line: int) -> str:
        """A single-quoted body (``self.i`` after the quote): only ``\\\\`` and the quote
        (or the delimiters) are escapes; nested delimiter pairs balance."""
        text, n = self.text, len(self.text)
        out: list[str] = []
        level = 0
        while True:
            if self.i >= n:
                self._problem("unterminated string", start_line, fatal=True)
            c = text[self.i]
            self.i += 1
            if c == "\\" and self.i < n and text[self.i] in (closer, "\\", opener or closer):
                out.append(text[self.i])
                self.i += 1
                continue
            if c == "\n":
                self.line += 1
            if opener and c == opener:
                level += 1
            elif c == closer and level:
                level -= 1
            elif c == closer:
                return "".join(out)
            out.append(c)

    def _double(self, closer: str, opener: str, start_line: int) -> tuple[Any, ...]:
        """A double-quoted body: Ruby's escapes, and ``#{...}`` as a nested token list."""
        text, n = self.text, len(self.text)
        parts: list[Any] = []
        out: list[str] = []
        level = 0
        while True:
            if self.i >= n:
                self._problem("unterminated string", start_line, fatal=True)
            c = text[self.i]
            if c == "#" and self.i + 1 < n and _interpolates(text, self.i + 1):
                self._problem("string interpolation (#{...}, #@, #$) is not supported")
                if text[self.i + 1] == "{":
                    self.i += 2
                    parts.append("".join(out))
                    out = []
                    parts.append(self._interpolation())
                    continue
            self.i += 1
            if c == "\n":
                self.line += 1
            if c == "\\":
                if self.i >= n:
                    self._problem("unterminated string", start_line, fatal=True)
                self.i = self._escape(self.i, out)
            elif opener and c == opener:
                level += 1
                out.append(c)
            elif c == closer and level:
                level -= 1
                out.append(c)
            elif c == closer:
                parts.append("".join(out))
                return tuple(p for p in parts if p != "")
            else:
                out.append(c)

    def _interpolation(self) -> tuple[Token, ...]:
        """The tokens of ``#{...}`` (``self.i`` after the brace), up to its ``}``."""
        if self.nesting >= _MAX_NESTING:
            self._problem("interpolation nested too deeply", fatal=True)
        outer, self.problems = self.problems, []
        self.nesting += 1
        try:
            toks = tuple(self._scan(nested=True))
        finally:
            self.nesting -= 1
        inner = [p for tok in toks for p in tok.problems]
        self.problems = outer + inner
        if any(p.fatal for p in inner):
            raise _Stop
        return tuple(tok for tok in toks if tok.kind != "eof")

    def _escape(self, i: int, out: list[str]) -> int:
        """Decode the escape whose letter is at ``i``; return the index after it. A bad one
        is a problem, and reads as the letter itself (Ruby would refuse the file)."""
        text = self.text
        d = text[i]
        if d in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[d])
            return i + 1
        if d in "01234567":
            match = _OCTAL_RE.match(text, i)
            assert match is not None
            out.append(chr(int(match.group(), 8)))
            return match.end()
        if d == "x":
            match = _HEX2_RE.match(text, i + 1)
            if match is None:
                self._problem("invalid \\x escape")
                out.append(d)
                return i + 1
            out.append(chr(int(match.group(), 16)))
            return match.end()
        if d == "u":
            return self._unicode_escape(i, out)
        if d in "cCM":
            self._problem(f"the \\{d} control/meta escape is not supported")
        if d == "\n":
            self.line += 1
            return i + 1
        out.append(d)
        return i + 1

    def _unicode_escape(self, i: int, out: list[str]) -> int:
        text = self.text
        match = _UNICODE_BRACES_RE.match(text, i + 1)
        if match is not None:
            codes = [int(part, 16) for part in match.group(1).split()]
        else:
            match = _HEX4_RE.match(text, i + 1)
            if match is None:
                self._problem("invalid \\u escape")
                out.append("u")
                return i + 1
            codes = [int(match.group(), 16)]
        for code in codes:
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                self._problem("invalid \\u escape (not a Unicode scalar value)")
                out.append("\ufffd")
            else:
                out.append(chr(code))
        return match.end()

    # -- symbols, %-literals, regexes, character literals, numbers --

    def _colon(self, line: int, start: int) -> Token:
        text = self.text
        nxt = text[start + 1 : start + 2]
        if nxt == ":":
            self.i = start + 2
            return self._tok("op", "::", line, start)
        if nxt in ("'", '"'):
            self.i = start + 2
            if nxt == "'":
                name = self._single("'", "", line)
            else:
                name = "".join(p for p in self._double('"', "", line) if isinstance(p, str))
            return self._tok("sym", ":", line, start, value=name)
        if nxt and _is_ident_start(nxt):
            match = _NAME_RE.match(text, start + 1)
            assert match is not None
            self.i = match.end()
            return self._tok("sym", match.group(), line, start, value=match.group())
        self.i = start + 1
        return self._tok("op", ":", line, start)

    def _percent_starts(self, prev: Token | None) -> bool:
        text, i = self.text, self.i
        match = _PERCENT_RE.match(text, i)
        if match is None:
            return False
        after_value = prev is not None and prev.kind in _VALUE_KINDS
        if after_value and text[i + 1 : i + 2] in (" ", "="):
            return False  # ``a % b`` / ``a %= b``
        return not (not match.group(1) and after_value and text[i - 1] != " ")

    def _percent(self, line: int, start: int) -> Token:
        match = _PERCENT_RE.match(self.text, start)
        assert match is not None
        kind, opener = match.group(1), match.group(2)
        closer = _PAIRS.get(opener, opener)
        nests = opener if closer != opener else ""
        self.i = match.end()
        if kind in ("q", "w", "i", "s"):
            value = self._single(closer, nests, line)
            parts: tuple[Any, ...] = (value,)
        else:
            parts = self._double(closer, nests, line)
            value = "".join(p for p in parts if isinstance(p, str))
        if kind in ("", "Q", "q"):
            return self._tok("str", "%", line, start, value=value, parts=parts)
        return self._tok("percent", f"%{kind}", line, start, value=value, parts=parts)

    def _regex_starts(self, prev: Token | None) -> bool:
        """``/`` opens a regex after an operator, or as a method argument (``x /re/``)."""
        if prev is None or prev.kind in ("op", "nl", "label"):
            return True
        after = self.text[self.i + 1 : self.i + 2]
        return prev.kind == "name" and self.text[self.i - 1] == " " and after not in (" ", "=")

    def _regex(self, line: int, start: int) -> Token:
        text, n = self.text, len(self.text)
        self.i = start + 1
        while True:
            if self.i >= n:
                self._problem("unterminated string", line, fatal=True)
            c = text[self.i]
            if c == "/":
                break
            if c == "#" and self.i + 1 < n and _interpolates(text, self.i + 1):
                self._problem("regex interpolation (#{...}) is not supported")
                if text[self.i + 1] == "{":
                    self.i += 2
                    self._interpolation()
                    continue
            if c == "\\" and self.i + 1 < n:
                if text[self.i + 1] == "\n":
                    self.line += 1
                self.i += 2
                continue
            if c == "\n":
                self.line += 1
            self.i += 1
        source = text[start + 1 : self.i]
        match = _FLAG_LETTERS_RE.match(text, self.i + 1)
        assert match is not None
        self.i = match.end()
        return self._tok("regex", "/regex/", line, start, value=(source, match.group()))

    def _char(self, line: int, start: int) -> Token | None:
        if _CHAR_RE.match(self.text, start) is None:
            return None
        self.i = start + 2
        ch = self.text[start + 1]
        return self._tok("str", "?", line, start, value=ch, parts=(ch,))

    def _number(self, line: int, start: int) -> Token:
        text = self.text
        match = _NUMBER_RE.match(text, start)
        assert match is not None  # a digit always matches
        word = match.group()
        self.i = match.end()
        after = text[self.i : self.i + 1]
        if after and (after.isalnum() or after == "_"):
            self._problem("malformed number")
            while self.i < len(text) and text[self.i] in "0123456789_":  # ``1__`` is one token
                self.i += 1
        elif len(word) > MAX_NUMBER_CHARS:
            self._problem("number too long")
        digits = word.replace("_", "").lower()
        value: int | float
        if len(word) > MAX_NUMBER_CHARS:
            value = 0
        elif digits.startswith(("0x", "0b", "0o")):
            value = int(digits[2:], {"x": 16, "b": 2, "o": 8}[digits[1]])
        elif len(digits) > 1 and digits.startswith("0") and digits.isdigit():
            value = int(digits, 8)
        elif any(ch in digits for ch in ".e"):
            value = float(digits)
        else:
            value = int(digits)
        kind = "float" if isinstance(value, float) else "int"
        return self._tok(kind, text[start : self.i], line, start, value=value)


#: The kind of the token a fatal problem interrupted, by its first character.
_KIND_OF = {
    "'": "str",
    '"': "str",
    "`": "xstr",
    "/": "regex",
    "%": "percent",
    ":": "sym",
    "\n": "nl",
    "=": "nl",
}
