"""knife.rb / config.rb read without running Ruby: the settings the CLI needs.

Only ``chef_server_url``, ``node_name``, ``client_key`` and Chef's SSL settings
(``ssl_verify_mode``, ``verify_api_cert``, ``trusted_certs_dir``, ``ssl_ca_file``,
``ssl_ca_path``) matter; every other line is ignored. A value may also be a ``:symbol`` (read
as `RubySymbol`) or ``true``/``false`` (a Python bool); the caller checks each setting's type.
Values may be literals or the usual idioms: local variables (``current_dir =
File.dirname(__FILE__)``), ``"#{...}"`` interpolation, ``+``, ``||``,
``File.join``/``expand_path``/``absolute_path``/``dirname``, ``__FILE__``, ``__dir__``,
``ENV[...]``/``ENV.fetch``, ``Dir.home``, ``Dir.pwd``, ``Etc.getlogin``. A needed value that uses
anything else, is set inside a block or conditional, or is nil is an error naming ``FILE:LINE``
rather than a silent guess.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core.rubylex import Lexer, Token, join_lines

NEEDED = (
    "chef_server_url",
    "node_name",
    "client_key",
    "ssl_verify_mode",
    "verify_api_cert",
    "trusted_certs_dir",
    "ssl_ca_file",
    "ssl_ca_path",
)


class RubySymbol(str):
    """A ``:symbol`` value (its name), kept apart from a string of the same text."""


class RubyConfigError(ValueError):
    """A knife.rb this reader cannot take; ``str()`` is ``FILE:LINE: message``. The CLI turns
    it into its own error (same text, same exit status) where it reads the file."""

    def __init__(self, shown: str, line: int, message: str) -> None:
        super().__init__(f"{shown}:{line}: {message}")
        self.message = f"{shown}:{line}: {message}"
        self.line = line


_CONTINUE_OPS = frozenset(
    "+ - * / % , . &. || && = += -= *= ||= &&= => ( [ { << == != ? : ! and or not".split()
)


def _continues(tok: Token) -> bool:
    """Whether a line ending in ``tok`` goes on (after an operator, ``and``, ``or``...)."""
    return tok.kind in ("op", "name") and tok.text in _CONTINUE_OPS


_VALUE_KINDS = frozenset({"name", "const", "var", "int", "float", "str", "sym", "xstr", "regex"})


def _tokens(text: str, shown: str) -> list[Token]:
    """The file's tokens up to ``__END__``; only what stops any Ruby reader is an error."""
    out: list[Token] = []
    text = text.replace("\r\n", "\n")
    for tok in join_lines(_colons_split(Lexer(text).tokens(), text), _continues):
        fatal = tok.fatal
        if fatal is not None:
            raise RubyConfigError(shown, fatal.end_line, fatal.message)
        if tok.kind in ("data", "eof"):
            break
        if tok.kind == "op" and tok.text == ";":  # inside brackets: ignored
            continue
        out.append(tok)
    return out


def _colons_split(tokens: Iterable[Token], text: str) -> Iterator[Token]:
    """A label (``a:``, ``"a":``) and a symbol glued to a value (``x:y``) are read here as the
    value and an operator ``:``: this reader finds settings by name, so ``node_name`` in
    ``if x then node_name:...`` must still be a name, and a line ending in ``:`` goes on."""
    prev: Token | None = None
    for tok in tokens:
        colon = tok._replace(kind="op", text=":", value=None, parts=(), problems=(), spaced=False)
        glued = prev is not None and prev.kind in _VALUE_KINDS and text[tok.start - 1] not in " (,"
        if tok.kind == "label" and tok.text in ("'", '"'):
            yield tok._replace(kind="str")
            yield colon
        elif tok.kind == "label":
            yield tok._replace(kind="const" if tok.text[0].isupper() else "name")
            yield colon._replace(start=tok.start + len(tok.text))
        elif tok.kind == "sym" and tok.text != ":" and glued:
            yield colon
            kind = "const" if tok.text[0].isupper() else "name"
            yield tok._replace(kind=kind, start=tok.start + 1, spaced=False, value=None)
        else:
            yield tok
        prev = tok


class _Nil:
    """Ruby's nil, with why (``ENV['X'] is not set``) for the error message."""

    def __init__(self, why: str) -> None:
        self.why = why


class _Unsupported(Exception):
    pass


_Value = str | bool | _Nil


@dataclass
class _Scope:
    file: str  # __FILE__ as knife passes it (the config path)
    cwd: Path
    home: Path
    env: Mapping[str, str]
    locals: dict[str, _Value | _Unsupported] = field(default_factory=dict)


class _Parser:
    """Expressions over one statement's tokens, evaluated straight away."""

    def __init__(self, toks: list[Token], scope: _Scope) -> None:
        self.toks = toks
        self.pos = 0
        self.scope = scope

    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.toks[index] if index < len(self.toks) else None

    def at(self, kind: str, text: str | None = None, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == kind and (text is None or tok.text == text)

    def take(self, kind: str, text: str | None = None) -> Token:
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
                if isinstance(side, bool | RubySymbol):
                    raise _Unsupported("'+' of a symbol or boolean")
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
            if isinstance(value, bool):
                raise _Unsupported(f"the method .{method} of a boolean")
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
        if tok.kind == "sym" and tok.text != ":":
            return RubySymbol(tok.text)
        if tok.kind == "op" and tok.text == "(":
            value = self.expr()
            self.take("op", ")")
            return value
        if tok.kind == "op" and tok.text == "::" and self.at("const"):
            return self.primary()
        if tok.kind == "name":
            if tok.text == "nil":
                return _Nil("nil")
            if tok.text in ("true", "false"):
                return tok.text == "true"
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
            if isinstance(value, bool):
                raise _Unsupported(f"a boolean passed to {call}")
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

    def interpolate(self, tok: Token) -> str:
        out = []
        for part in tok.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            if not part:
                continue
            inner = _Parser([t for t in part if not (t.kind == "op" and t.text == ";")], self.scope)
            value = inner.expr()
            if not inner.done():
                raise _Unsupported(f"{inner.peek().text!r} inside #{{...}}")  # type: ignore[union-attr]
            if isinstance(value, bool):
                value = "true" if value else "false"
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


def _statements(toks: list[Token]) -> list[list[Token]]:
    out: list[list[Token]] = []
    current: list[Token] = []
    for tok in toks:
        if tok.kind == "nl":
            if current:
                out.append(current)
            current = []
        else:
            current.append(tok)
    if current:
        out.append(current)
    merged: list[list[Token]] = []
    for statement in out:  # a line starting with ``.method`` continues the previous one
        if merged and statement[0].kind == "op" and statement[0].text in (".", "&."):
            merged[-1].extend(statement)
        else:
            merged.append(statement)
    return merged


def _depth_change(statement: list[Token]) -> tuple[int, int]:
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
) -> dict[str, tuple[str | bool, int]]:
    """``{setting: (value, line)}`` for the settings of `NEEDED` that a knife.rb sets.

    ``path`` is ``__FILE__`` (the config path as knife has it); errors name ``shown``."""
    shown = shown or path
    scope = _Scope(path, cwd, home, env)
    found: dict[str, tuple[str | bool, int]] = {}
    depth = 0
    for statement in _statements(_tokens(text, shown)):
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


def _no_nested_setting(statement: list[Token], shown: str) -> None:
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


def _setting(statement: list[Token], scope: _Scope, shown: str) -> str | bool:
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


def _closing(toks: list[Token]) -> int:
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
