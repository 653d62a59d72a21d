"""knife.rb / config.rb read without running Ruby: the three settings the CLI needs.

Only ``chef_server_url``, ``node_name`` and ``client_key`` matter; every other line is ignored.
Values may be literals or the usual idioms: local variables (``current_dir =
File.dirname(__FILE__)``), ``"#{...}"`` interpolation, ``+``, ``||``,
``File.join``/``expand_path``/``absolute_path``/``dirname``, ``__FILE__``, ``__dir__``,
``ENV[...]``/``ENV.fetch``, ``Dir.home``, ``Dir.pwd``, ``Etc.getlogin``. A needed value that uses
anything else, is set inside a block or conditional, or is nil is an error naming ``FILE:LINE``
rather than a silent guess.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.knife.session import CliError

NEEDED = ("chef_server_url", "node_name", "client_key")


class RubyConfigError(CliError):
    def __init__(self, shown: str, line: int, message: str) -> None:
        super().__init__(f"{shown}:{line}: {message}")
        self.line = line


@dataclass
class _Tok:
    kind: str  # name const var sym num str op other nl
    text: str
    line: int
    parts: tuple[Any, ...] = ()  # str: literal text pieces and token lists (``#{...}``)


_CONTINUE_OPS = frozenset(
    "+ - * / % , . &. || && = += -= *= ||= &&= => ( [ { << == != ? : ! and or not".split()
)
_OPS = sorted(
    "... ** ||= &&= :: || && == != =~ => <= >= += -= *= << .. &. ->".split(), key=len, reverse=True
)
_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}
_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "s": " ",
    "r": "\r",
    "e": "\x1b",
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
}
_VALUE_KINDS = frozenset({"name", "const", "var", "num", "str", "sym", "other"})


class _Lexer:
    """Ruby tokens, enough to find statements, strings (with ``#{}``) and comments."""

    def __init__(self, text: str, shown: str) -> None:
        self.s = text.replace("\r\n", "\n")
        self.shown = shown
        self.i = 0
        self.line = 1
        self.heredocs: list[tuple[str, bool]] = []

    def error(self, message: str, line: int | None = None) -> RubyConfigError:
        return RubyConfigError(self.shown, line or self.line, message)

    def tokens(self, nested: bool = False) -> list[_Tok]:
        s, out, depth = self.s, [], 0
        at_line_start = True
        for _ in range(len(s) + 1):  # every pass consumes at least one character
            if self.i >= len(s):
                if nested:
                    raise self.error("unterminated #{...} interpolation")
                return out
            c = s[self.i]
            if at_line_start and not nested:
                at_line_start = False
                if s.startswith("=begin", self.i):
                    end = re.compile(r"^=end\b.*$", re.M).search(s, self.i)
                    if end is None:
                        raise self.error("=begin without =end")
                    self.line += s.count("\n", self.i, end.end())
                    self.i = end.end()
                    continue
                end_of_line = s.find("\n", self.i)
                if s[self.i : len(s) if end_of_line < 0 else end_of_line].rstrip() == "__END__":
                    return out
            if c == "\n":
                self.i += 1
                self.line += 1
                self._skip_heredocs()
                at_line_start = True
                last = out[-1] if out else None
                if nested or depth > 0 or last is None or last.kind == "nl":
                    continue
                if last.kind in ("op", "name") and last.text in _CONTINUE_OPS:
                    continue
                out.append(_Tok("nl", "\n", self.line - 1))
                continue
            if c in " \t\f\v":
                self.i += 1
                continue
            if c == "\\" and s.startswith("\\\n", self.i):
                self.i += 2
                self.line += 1
                continue
            if c == "#":
                end = s.find("\n", self.i)
                self.i = len(s) if end < 0 else end
                continue
            if c == ";":
                self.i += 1
                if depth == 0 and not nested and out and out[-1].kind != "nl":
                    out.append(_Tok("nl", ";", self.line))
                continue
            start_line = self.line
            if c == "'":
                self.i += 1
                out.append(_Tok("str", "'", start_line, (self._single("'", ""),)))
                continue
            if c in '"`':
                self.i += 1
                parts = self._double(c, "")  # `command` runs a program: not a value here
                out.append(_Tok("str" if c == '"' else "other", c, start_line, parts))
                continue
            if c == "%" and self._percent(out):
                continue
            if c == ":" and not s.startswith("::", self.i):
                m = re.compile(r":([A-Za-z_]\w*[?!=]?|\"|')").match(s, self.i)
                if m and (not out or out[-1].kind not in _VALUE_KINDS or s[self.i - 1] in " (,"):
                    if m.group(1) in "\"'":
                        self.i = m.end()
                        if m.group(1) == "'":
                            self._single("'", "")
                        else:
                            self._double('"', "")
                        out.append(_Tok("sym", ":", start_line))
                    else:
                        self.i = m.end()
                        out.append(_Tok("sym", m.group(1), start_line))
                    continue
            if c == "<" and self._heredoc(out):
                continue
            if c == "/" and self._regex_starts(out):
                self.i += 1
                self._double("/", "")
                while self.i < len(s) and s[self.i] in "imxounse":
                    self.i += 1
                out.append(_Tok("other", "/regex/", start_line))
                continue
            m = re.compile(r"(@@?|\$)?[A-Za-z_]\w*[?!]?").match(s, self.i)
            if m:
                self.i = m.end()
                word = m.group(0)
                if (
                    word.endswith(("?", "!"))
                    and s.startswith("=", self.i)
                    and not s.startswith("==", self.i)
                ):
                    word = word[:-1]
                    self.i -= 1
                kind = "var" if m.group(1) else "const" if word[0].isupper() else "name"
                out.append(_Tok(kind, word, start_line))
                continue
            m = re.compile(r"\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?|0[xXbBoO][\da-fA-F_]+").match(
                s, self.i
            )
            if m:
                self.i = m.end()
                out.append(_Tok("num", m.group(0), start_line))
                continue
            if c == "?" and re.compile(r"\?[A-Za-z0-9_](?![\w])").match(s, self.i):
                if out and out[-1].kind not in _VALUE_KINDS:
                    self.i += 2
                    out.append(_Tok("str", "?", start_line, (s[self.i - 1],)))
                    continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                if nested and depth == 0 and c == "}":
                    self.i += 1
                    return out
                depth = max(0, depth - 1)
            op = next((o for o in _OPS if s.startswith(o, self.i)), c)
            self.i += len(op)
            out.append(_Tok("op", op, start_line))
        raise self.error("cannot tokenize")  # unreachable: the loop is bounded by the text

    def _regex_starts(self, out: list[_Tok]) -> bool:
        """``/`` opens a regex after an operator, or as a method argument (``x /re/``)."""
        if not out or out[-1].kind in ("op", "nl"):
            return True
        after = self.s[self.i + 1 : self.i + 2]
        return out[-1].kind == "name" and self.s[self.i - 1] == " " and after not in (" ", "=")

    def _skip_heredocs(self) -> None:
        s = self.s
        while self.heredocs:
            ident, indented = self.heredocs.pop(0)
            for _ in range(len(s) + 1):
                if self.i >= len(s):
                    raise self.error(f"heredoc {ident} is not terminated")
                end = s.find("\n", self.i)
                end = len(s) if end < 0 else end
                text = s[self.i : end]
                self.i = min(len(s), end + 1)
                self.line += 1
                if (text.strip() if indented else text) == ident:
                    break

    def _heredoc(self, out: list[_Tok]) -> bool:
        m = re.compile(r"<<([~-]?)(?:([A-Za-z_]\w*)|(['\"`])([^'\"`\n]+)\3)").match(self.s, self.i)
        if m is None:
            return False
        ident = m.group(2) or m.group(4)
        if not m.group(1) and not m.group(3) and not ident.isupper():
            return False  # ``list <<value`` is an append
        self.heredocs.append((ident, bool(m.group(1))))
        self.i = m.end()
        out.append(_Tok("other", "<<heredoc", self.line))
        return True

    def _percent(self, out: list[_Tok]) -> bool:
        m = re.compile(r"%([qQwWiIrsx]?)([^\w\s])").match(self.s, self.i)
        if m is None:
            return False
        if out and out[-1].kind in _VALUE_KINDS and self.s[self.i + 1 : self.i + 2] in " =":
            return False  # ``a % b`` / ``a %= b``
        if not m.group(1) and out and out[-1].kind in _VALUE_KINDS and self.s[self.i - 1] != " ":
            return False
        kind, opener = m.group(1), m.group(2)
        closer = _PAIRS.get(opener, opener)
        line = self.line
        self.i = m.end()
        if kind in ("q", "w", "i", "s"):
            text = self._single(closer, opener if closer != opener else "")
            parts: tuple[Any, ...] = (text,)
        else:
            parts = self._double(closer, opener if closer != opener else "")
        if kind in ("", "Q", "q"):
            out.append(_Tok("str", "%", line, parts))
        else:
            out.append(_Tok("other", f"%{kind}", line))
        return True

    def _single(self, closer: str, opener: str) -> str:
        s, buf, level = self.s, [], 0
        while self.i < len(s):
            c = s[self.i]
            self.i += 1
            if c == "\n":
                self.line += 1
            if c == "\\" and self.i < len(s) and s[self.i] in (closer, "\\", opener or closer):
                buf.append(s[self.i])
                self.i += 1
            elif opener and c == opener:
                level += 1
                buf.append(c)
            elif c == closer and level:
                level -= 1
                buf.append(c)
            elif c == closer:
                return "".join(buf)
            else:
                buf.append(c)
        raise self.error("unterminated string")

    def _double(self, closer: str, opener: str) -> tuple[Any, ...]:
        s, parts, buf, level = self.s, [], [], 0
        while self.i < len(s):
            c = s[self.i]
            self.i += 1
            if c == "\n":
                self.line += 1
            if c == "\\" and self.i < len(s):
                buf.append(self._escape())
            elif c == "#" and s.startswith("{", self.i):
                self.i += 1
                parts.append("".join(buf))
                buf = []
                parts.append(self.tokens(nested=True))
            elif opener and c == opener:
                level += 1
                buf.append(c)
            elif c == closer and level:
                level -= 1
                buf.append(c)
            elif c == closer:
                parts.append("".join(buf))
                return tuple(p for p in parts if p != "")
            else:
                buf.append(c)
        raise self.error("unterminated string")

    def _escape(self) -> str:
        s = self.s
        d = s[self.i]
        self.i += 1
        if d in _ESCAPES and not (d == "0" and s[self.i : self.i + 1].isdigit()):
            return _ESCAPES[d]
        if d == "\n":
            self.line += 1
            return ""
        if d == "u":
            m = re.compile(r"\{([0-9a-fA-F ]+)\}|([0-9a-fA-F]{4})").match(s, self.i)
            if m:
                self.i = m.end()
                codes = (m.group(1) or m.group(2)).split()
                return "".join(chr(int(code, 16)) for code in codes)
        if d == "x":
            m = re.compile(r"[0-9a-fA-F]{1,2}").match(s, self.i)
            if m:
                self.i = m.end()
                return chr(int(m.group(0), 16))
        if d in "01234567":
            m = re.compile(r"[0-7]{0,2}").match(s, self.i)
            self.i = m.end() if m else self.i
            return chr(int(d + (m.group(0) if m else ""), 8))
        return d


class _Nil:
    """Ruby's nil, with why (``ENV['X'] is not set``) for the error message."""

    def __init__(self, why: str) -> None:
        self.why = why


class _Unsupported(Exception):
    pass


_Value = str | _Nil


@dataclass
class _Scope:
    file: str  # __FILE__ as knife passes it (the config path)
    cwd: Path
    home: Path
    env: Mapping[str, str]
    locals: dict[str, _Value | _Unsupported] = field(default_factory=dict)


class _Parser:
    """Expressions over one statement's tokens, evaluated straight away."""

    def __init__(self, toks: list[_Tok], scope: _Scope) -> None:
        self.toks = toks
        self.pos = 0
        self.scope = scope

    def peek(self, offset: int = 0) -> _Tok | None:
        index = self.pos + offset
        return self.toks[index] if index < len(self.toks) else None

    def at(self, kind: str, text: str | None = None, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == kind and (text is None or tok.text == text)

    def take(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None or tok.kind != kind or (text is not None and tok.text != text):
            found = "the end of the line" if tok is None else repr(tok.text)
            raise _Unsupported(f"expected {text or kind}, found {found}")
        self.pos += 1
        return tok

    def done(self) -> bool:
        return self.pos >= len(self.toks)

    def expr(self) -> _Value:
        value = self.add()
        while self.at("op", "||") or self.at("name", "or"):
            self.pos += 1
            right = self.add()
            value = right if isinstance(value, _Nil) else value
        return value

    def add(self) -> _Value:
        value = self.postfix()
        while self.at("op", "+"):
            self.pos += 1
            right = self.postfix()
            for side in (value, right):
                if isinstance(side, _Nil):
                    raise _Unsupported(f"nil in '+': {side.why}")
            value = str(value) + str(right)
        return value

    def postfix(self) -> _Value:
        value = self.primary()
        while self.at("op", ".") or self.at("op", "&."):
            self.pos += 1
            method = self.take("name").text
            if self.at("op", "(") and self.at("op", ")", 1):
                self.pos += 2
            if isinstance(value, _Nil):
                if method == "to_s":
                    value = ""
                    continue
                raise _Unsupported(f"nil.{method}: {value.why}")
            if method in ("to_s", "freeze", "dup", "to_str"):
                continue
            if method == "strip":
                value = value.strip(" \t\n\v\f\r\0")
            elif method == "chomp":
                value = value[:-1] if value.endswith("\n") else value
            else:
                raise _Unsupported(f"the method .{method}")
        return value

    def args(self) -> list[_Value]:
        self.take("op", "(")
        values: list[_Value] = []
        while not self.at("op", ")"):
            if values:
                self.take("op", ",")
            values.append(self.expr())
        self.take("op", ")")
        return values

    def primary(self) -> _Value:
        tok = self.peek()
        if tok is None:
            raise _Unsupported("a value is missing")
        self.pos += 1
        if tok.kind == "str":
            return self.interpolate(tok)
        if tok.kind == "op" and tok.text == "(":
            value = self.expr()
            self.take("op", ")")
            return value
        if tok.kind == "op" and tok.text == "::" and self.at("const"):
            return self.primary()
        if tok.kind == "name":
            if tok.text == "nil":
                return _Nil("nil")
            if tok.text == "__FILE__":
                return self.scope.file
            if tok.text == "__dir__":
                return _dirname(_expand_path(self.scope.file, None, self.scope))
            local = self.scope.locals.get(tok.text)
            if local is None:
                raise _Unsupported(f"{tok.text!r} (not a local variable of this file)")
            if isinstance(local, _Unsupported):
                raise _Unsupported(f"{tok.text} ({local})")
            return local
        if tok.kind == "const":
            return self.constant(tok.text)
        raise _Unsupported(repr(tok.text))

    def constant(self, name: str) -> _Value:
        if name == "ENV" and self.at("op", "["):
            self.pos += 1
            key = self.expr()
            self.take("op", "]")
            return self.env(key, None)
        self.take("op", ".")
        method = self.take("name").text
        call = f"{name}.{method}"
        if call == "ENV.fetch":
            values = self.args()
            if len(values) not in (1, 2):
                raise _Unsupported("ENV.fetch takes one or two arguments")
            return self.env(values[0], values[1] if len(values) == 2 else None, fetch=True)
        if call in ("Dir.home", "Dir.pwd", "Etc.getlogin"):
            if self.at("op", "("):
                if self.args():
                    raise _Unsupported(f"{call} with arguments")
            if call == "Dir.home":
                return str(self.scope.home)
            if call == "Dir.pwd":
                return str(self.scope.cwd)
            login = self.scope.env.get("USER") or self.scope.env.get("LOGNAME")
            return login if login else _Nil("Etc.getlogin: neither USER nor LOGNAME is set")
        if name != "File" or method not in ("join", "expand_path", "absolute_path", "dirname"):
            raise _Unsupported(call)
        values = self.args()
        for value in values:
            if isinstance(value, _Nil):
                raise _Unsupported(f"nil passed to {call}: {value.why}")
        texts = [str(v) for v in values]
        if method == "join":
            return _join(texts)
        if method == "dirname":
            if len(texts) != 1:
                raise _Unsupported("File.dirname takes one argument")
            return _dirname(texts[0])
        if len(texts) not in (1, 2):
            raise _Unsupported(f"{call} takes one or two arguments")
        base = texts[1] if len(texts) == 2 else None
        if method == "absolute_path":
            base = _expand_path(base, None, self.scope) if base else str(self.scope.cwd)
            return posixpath.normpath(posixpath.join(base, texts[0]))
        return _expand_path(texts[0], base, self.scope)

    def env(self, key: _Value, default: _Value | None, *, fetch: bool = False) -> _Value:
        if not isinstance(key, str):
            raise _Unsupported("ENV[] of nil")
        value = self.scope.env.get(key)
        if value is not None:
            return value
        if default is not None:
            return default
        if fetch:
            raise _Unsupported(f"ENV.fetch({key!r}): {key} is not set")
        return _Nil(f"ENV[{key!r}] is not set")

    def interpolate(self, tok: _Tok) -> str:
        out = []
        for part in tok.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if not part:
                continue
            inner = _Parser(part, self.scope)
            value = inner.expr()
            if not inner.done():
                raise _Unsupported(f"{inner.peek().text!r} inside #{{...}}")  # type: ignore[union-attr]
            out.append("" if isinstance(value, _Nil) else value)
        return "".join(out)


def _join(parts: list[str]) -> str:
    """Ruby's File.join: one separator between parts."""
    out = ""
    for index, part in enumerate(parts):
        if index == 0:
            out = part
        elif out.endswith("/") and part.startswith("/"):
            out += part.lstrip("/")
        elif out.endswith("/") or part.startswith("/"):
            out += part
        else:
            out += "/" + part
    return out


def _dirname(path: str) -> str:
    """Ruby's File.dirname: ``"a.rb"`` → ``"."``, trailing slashes ignored."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/" if path else "."
    head = posixpath.dirname(stripped)
    return head.rstrip("/") or ("/" if head else ".")


def _expand_path(path: str, base: str | None, scope: _Scope) -> str:
    if path == "~" or path.startswith("~/"):
        path = str(scope.home) + path[1:]
    elif path.startswith("~"):
        raise _Unsupported(f"File.expand_path({path!r}): ~user")
    if not posixpath.isabs(path):
        root = _expand_path(base, None, scope) if base else str(scope.cwd)
        path = posixpath.join(root, path)
    return posixpath.normpath(path)


_BLOCK_OPENERS = frozenset({"if", "unless", "case", "while", "until", "begin", "def", "class"})
_BLOCK_OPENERS |= {"module", "for"}


def _statements(toks: list[_Tok]) -> list[list[_Tok]]:
    out: list[list[_Tok]] = []
    current: list[_Tok] = []
    for tok in toks:
        if tok.kind == "nl":
            if current:
                out.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        out.append(current)
    merged: list[list[_Tok]] = []
    for statement in out:  # a line starting with ``.method`` continues the previous one
        if merged and statement[0].kind == "op" and statement[0].text in (".", "&."):
            merged[-1].extend(statement)
        else:
            merged.append(statement)
    return merged


def _depth_change(statement: list[_Tok]) -> tuple[int, int]:
    """(blocks opened, blocks closed) by one statement."""
    opened = closed = 0
    for index, tok in enumerate(statement):
        if tok.kind != "name":
            continue
        prev = statement[index - 1] if index else None
        if tok.text in _BLOCK_OPENERS and (
            prev is None or (prev.kind == "op" and prev.text in ("=", "||=", "(", ","))
        ):
            opened += 1
        elif tok.text == "do":
            opened += 1
        elif tok.text == "end" and (prev is None or prev.text != "."):
            closed += 1
    return opened, closed


def read_knife_config(
    text: str,
    path: str,
    *,
    shown: str | None = None,
    env: Mapping[str, str],
    cwd: Path,
    home: Path,
) -> dict[str, tuple[str, int]]:
    """``{setting: (value, line)}`` for the settings of `NEEDED` that a knife.rb sets.

    ``path`` is ``__FILE__`` (the config path as knife has it); errors name ``shown``."""
    shown = shown or path
    scope = _Scope(path, cwd, home, env)
    found: dict[str, tuple[str, int]] = {}
    depth = 0
    for statement in _statements(_Lexer(text, shown).tokens()):
        first, line = statement[0], statement[0].line
        opened, closed = _depth_change(statement)
        assigns = len(statement) > 1 and statement[1].kind == "op" and statement[1].text == "="
        if first.kind == "name" and assigns:
            try:
                if depth or opened:
                    raise _Unsupported(f"assigned inside a block or conditional (line {line})")
                parser = _Parser(statement[2:], scope)
                value = parser.expr()
                if not parser.done():
                    raise _Unsupported(f"{parser.peek().text!r}")  # type: ignore[union-attr]
                scope.locals[first.text] = value
            except _Unsupported as exc:
                scope.locals[first.text] = _Unsupported(f"set at line {line}: {exc}")
        elif first.kind == "name" and first.text in NEEDED and len(statement) > 1:
            if depth or opened:
                raise RubyConfigError(
                    shown,
                    line,
                    f"{first.text} is set inside a block or conditional; pushy reads this file "
                    "without running Ruby: set it at the top level, or use flags/environment",
                )
            found[first.text] = (_setting(statement, scope, shown), line)
        else:
            _no_nested_setting(statement, shown)
        depth = max(0, depth + opened - closed)
    return found


def _no_nested_setting(statement: list[_Tok], shown: str) -> None:
    """``if prod then chef_server_url "..." end`` on one line: refuse, do not guess."""
    for index in range(1, len(statement) - 1):
        tok, before, after = statement[index], statement[index - 1], statement[index + 1]
        if tok.kind != "name" or tok.text not in NEEDED or before.text in (".", "&.", "::"):
            continue
        if after.kind in ("str", "const", "name") or after.text == "(":
            raise RubyConfigError(
                shown,
                tok.line,
                f"{tok.text} is set inside a block or conditional; pushy reads this file "
                "without running Ruby: set it at the top level, or use flags/environment",
            )


def _setting(statement: list[_Tok], scope: _Scope, shown: str) -> str:
    name, line = statement[0].text, statement[0].line
    for tok in statement[1:]:
        if tok.kind == "name" and tok.text in ("if", "unless", "rescue", "while", "until"):
            raise RubyConfigError(
                shown, line, f"{name} is set conditionally ({tok.text}); pushy cannot decide it"
            )
    rest = statement[1:]
    if rest[0].kind == "op" and rest[0].text == "(" and _closing(rest) == len(rest) - 1:
        rest = rest[1:-1]
    parser = _Parser(rest, scope)
    try:
        value = parser.expr()
        if not parser.done():
            raise _Unsupported(f"{parser.peek().text!r}")  # type: ignore[union-attr]
    except _Unsupported as exc:
        raise RubyConfigError(
            shown, line, f"cannot evaluate {name} without running Ruby: {exc}"
        ) from None
    if isinstance(value, _Nil):
        raise RubyConfigError(shown, line, f"{name} is nil: {value.why}")
    return value


def _closing(toks: list[_Tok]) -> int:
    """Index of the bracket that closes ``toks[0]``."""
    level = 0
    for index, tok in enumerate(toks):
        if tok.kind == "op" and tok.text in "([{":
            level += 1
        elif tok.kind == "op" and tok.text in ")]}":
            level -= 1
            if level == 0:
                return index
    return -1
