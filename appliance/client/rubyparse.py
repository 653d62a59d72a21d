"""The Ruby form of the client config read as literal setting lines, never run as Ruby.

The accepted subset and its decisions are described in `appliance.client.config`'s
docstring. Tokens come from the shared lexer (`appliance.core.rubylex`), which reads any
Ruby; this reader refuses, with ``FILE:LINE: message``, every token that is not part of a
literal setting line (backticks, %-literals, heredocs, variables, operators, interpolation),
and it refuses the first such token in the file before it looks at any statement, so a file
gets the same error whatever its statements say.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from appliance.client.configvalues import (
    MAX_CONFIG_CHARS,
    ConfigError,
    RubyConst,
    RubyRegex,
    Symbol,
)
from appliance.client.settings_table import (
    KNOWN,
    NOT_RUBY_NAMES,
    PUSH_SETTINGS,
    env_problem,
    unknown_message,
)
from appliance.core.rubylex import MAX_NUMBER_CHARS, Lexer, Token, join_lines

__all__ = ["parse_ruby", "parse_ruby_config"]

_MAX_DEPTH = 32  # nesting of [ ] / { } values

_KEYWORDS = frozenset(
    """
    BEGIN END alias and begin break case class def defined? do else elsif end ensure for if in
    module next not or redo rescue retry return self super then undef unless until when while
    yield __FILE__ __LINE__ __dir__ __method__
    """.split()
)
_KERNEL_CALLS = frozenset(
    """
    require require_relative load autoload eval instance_eval class_eval module_eval
    instance_exec binding system exec spawn fork syscall puts print p pp printf putc warn
    raise fail exit exit! abort at_exit sleep trap open send public_send __send__
    define_method lambda proc loop catch throw gets readline readlines select srand rand
    sprintf format set_trace_func trace_var config_context default configurable
    config_strict_mode from_file from_string
    """.split()
)


# ---------------------------------------------------------------------------------------
# Tokens: the shared lexer's, limited to literals


class _Tok(NamedTuple):
    kind: str  # name const label sym str int float regex punct nl eof
    value: Any
    line: int
    spaced: bool = False  # whitespace just before it: `name [1]` is a call, `name[1]` is not


_UNSUPPORTED_CHARS = {
    "`": "backtick command execution is not supported",
    "%": "%-literals (%w, %q, %x, ...) are not supported",
    "<": "heredocs and '<<' are not supported",
    "@": "instance and class variables are not supported",
    "$": "global variables are not supported",
    "|": "blocks and operators are not supported",
    "&": "blocks and operators are not supported",
    "?": "the ?: operator and character literals are not supported",
}


_PUNCT = frozenset({"(", ")", "[", "]", "{", "}", "=>", "=", ",", ".", "::"})
_REFUSED_KINDS = {
    "xstr": _UNSUPPORTED_CHARS["`"],
    "percent": _UNSUPPORTED_CHARS["%"],
    "heredoc": _UNSUPPORTED_CHARS["<"],
}


def _continues(tok: Token) -> bool:
    """Whether a line ending in ``tok`` goes on (as in Ruby, after ``,`` ``=>`` ``=`` ``.``)."""
    return tok.kind == "op" and tok.text in (",", "=>", "=", ".")


def _refusal(tok: Token) -> str | None:
    """Why a token cannot be part of a literal setting line (None: it can)."""
    if tok.kind in _REFUSED_KINDS:
        return _REFUSED_KINDS[tok.kind]
    if tok.kind == "var" or (tok.kind == "str" and tok.text in ("%", "?")):
        return _UNSUPPORTED_CHARS[tok.text[0]]
    if tok.kind != "op" or tok.text in _PUNCT or tok.text in ("..", "..."):
        return None
    if tok.text.startswith(("==", "=~")):
        return "comparisons are not supported"
    if tok.text in (":", ";"):
        return f"unexpected {tok.text!r}"
    return _UNSUPPORTED_CHARS.get(tok.text[0], f"unexpected character {tok.text[0]!r}")


def _literal_tokens(text: str, path: str) -> Iterator[Token]:
    """The lexer's tokens, each refused or passed on in text order; ``-`` glued to the
    number right after it, ``..`` split into dots as the parser expects."""
    raw = Lexer(text, division=False).tokens()
    for tok in raw:
        if tok.kind == "op" and tok.text == "-":
            number = next(raw, tok)
            if number.kind not in ("int", "float") or number.start != tok.start + 1:
                raise ConfigError(path, tok.line, "unexpected character '-'")
            tok = _negative(number, tok, path)
        refusal = _refusal(tok)
        if refusal is not None:
            raise ConfigError(path, tok.line, refusal)
        if tok.problem is not None:
            raise ConfigError(path, tok.problem.line, _message(tok))
        if tok.kind == "op" and tok.text in ("..", "..."):
            for offset in range(len(tok.text)):
                spaced = tok.spaced if offset == 0 else False
                yield tok._replace(text=".", start=tok.start + offset, spaced=spaced)
        elif tok.kind == "data":  # ``__END__`` ends a Ruby program; here it is no setting
            yield tok._replace(kind="name")
        else:
            yield tok


def _message(tok: Token) -> str:
    assert tok.problem is not None
    if tok.kind == "regex" and tok.problem.fatal:  # the client has no division: name the path
        return "unterminated regex literal /.../ (an unquoted path?)"
    return tok.problem.message


def _negative(number: Token, minus: Token, path: str) -> Token:
    if number.problem is not None:
        raise ConfigError(path, number.problem.line, number.problem.message)
    if len(number.text) + 1 > MAX_NUMBER_CHARS:
        raise ConfigError(path, number.line, "number too long")
    return number._replace(start=minus.start, spaced=minus.spaced, value=-number.value)


def _client_tokens(text: str, path: str) -> list[_Tok]:
    """All tokens of the file in the parser's shape; the first refused one raises."""
    toks: list[_Tok] = []
    for tok in join_lines(_literal_tokens(text, path), _continues):
        kind, value = tok.kind, tok.value
        if kind == "op":
            kind, value = "punct", tok.text
        elif kind in ("name", "const"):
            value = tok.text
        elif kind == "sym":
            value = Symbol(tok.value)
        elif kind == "regex":
            value = RubyRegex(*tok.value)
        toks.append(_Tok(kind, value, tok.line, tok.spaced))
    return toks


# ---------------------------------------------------------------------------------------
# Parser


def _describe(tok: _Tok) -> str:
    if tok.kind == "nl":
        return "end of line"
    if tok.kind == "eof":
        return "end of file"
    if tok.kind == "label":
        return f"'{tok.value}:'"
    if tok.kind in ("str", "sym", "regex", "int", "float"):
        return f"a {tok.kind} value"
    return repr(tok.value)


class _RubyHash(dict[Any, Any]):
    """A parsed hash literal that remembers each key's line, for errors in long whitelists."""

    key_lines: dict[Any, int]


class _Parser:
    def __init__(self, toks: list[_Tok], path: str) -> None:
        self.toks = toks
        self.path = path
        self.pos = 0
        self.raw: dict[str, Any] = {}
        self.lines: dict[str, int] = {}

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def at(self, kind: str, value: Any = None) -> bool:
        tok = self.peek()
        return tok.kind == kind and (value is None or tok.value == value)

    def error(self, message: str, tok: _Tok | None = None) -> ConfigError:
        return ConfigError(self.path, (tok or self.peek()).line, message)

    def expect(self, value: str) -> _Tok:
        if not self.at("punct", value):
            raise self.error(f"expected {value!r}, found {_describe(self.peek())}")
        return self.take()

    def program(self) -> tuple[dict[str, Any], dict[str, int]]:
        while not self.at("eof"):
            if self.at("nl"):
                self.take()
                continue
            tok = self.take()
            if tok.kind == "name":
                self.setting(tok)
            elif tok.kind == "const":
                self.constant_statement(tok)
            else:
                raise self.error(
                    f"unexpected {_describe(tok)} at the start of a line "
                    "(expected a setting such as: node_name 'NAME')",
                    tok,
                )
            if not (self.at("nl") or self.at("eof")):
                raise self.error(
                    f"unexpected {_describe(self.peek())} after the value "
                    "(only one literal value per line is supported)"
                )
        return self.raw, self.lines

    # -- statements --

    def setting(self, tok: _Tok) -> None:
        name = tok.value
        if name in _KEYWORDS:
            raise self.error(
                f"Ruby '{name}' is not supported: the config file is parsed as simple "
                "setting lines, never run as Ruby",
                tok,
            )
        if name in _KERNEL_CALLS:
            raise self.error(
                f"'{name}' is not supported: the config file is parsed as simple setting "
                "lines, never run as Ruby",
                tok,
            )
        nxt = self.peek()
        after = self.toks[self.pos + 1] if self.pos + 1 < len(self.toks) else nxt
        if (
            nxt.kind == "punct"
            and nxt.value == "="
            and after.kind == "str"
            and name not in PUSH_SETTINGS
        ):
            # The cookbook writes one NAME='VALUE' line per environment variable, whatever the
            # case of the name (http_proxy='…' is common): export it like the upper-case form.
            self.take()
            self.environment_line(name, tok)
            return
        if nxt.kind == "punct" and nxt.value == "=":
            raise self.error(
                f"'{name} = ...' is a Ruby local variable assignment and sets nothing; write "
                f"'{name} VALUE' for a setting, or NAME='VALUE' (upper case) for an "
                "environment variable",
                tok,
            )
        if nxt.kind == "punct" and (
            nxt.value in (".", "::") or (nxt.value == "[" and not nxt.spaced)
        ):
            raise self.error(f"method calls such as '{name}{nxt.value}...' are not supported", tok)
        if name in NOT_RUBY_NAMES:
            raise self.error(f"'{name}' is not a Chef setting: {NOT_RUBY_NAMES[name]}", tok)
        if name not in KNOWN:
            raise self.error(unknown_message(name), tok)
        if nxt.kind in ("nl", "eof"):
            raise self.error(f"setting '{name}' has no value", tok)
        self.raw[name] = self.argument(name)
        self.lines[name] = tok.line

    def argument(self, name: str) -> Any:
        if self.at("punct", "("):
            self.take()
            if self.at("punct", ")"):
                raise self.error(f"setting '{name}' has no value")
            value = self.call_args(name, 1)
            self.expect(")")
            return value
        if self.at("punct", "{"):
            return self.hash_literal(1)
        return self.call_args(name, 0)

    def call_args(self, name: str, depth: int) -> Any:
        if self.at("label"):
            return self.bare_hash(depth, None)
        value = self.value(depth)
        if self.at("punct", "=>"):
            return self.bare_hash(depth, value)
        if self.at("punct", ","):
            raise self.error(f"setting '{name}' takes a single value")
        return value

    def constant_statement(self, tok: _Tok) -> None:
        name = tok.value
        if name == "ENV" and self.at("punct", "["):
            self.take()
            key_tok = self.peek()
            key = self.value(1)
            if not isinstance(key, str):
                raise self.error("ENV[...] needs a quoted string name", key_tok)
            self.expect("]")
            self.expect("=")
            self.environment_line(key, tok)
            return
        if self.at("punct", "="):
            self.take()
            self.environment_line(name, tok)
            return
        path = [name]
        while self.at("punct", "::"):
            self.take()
            part = self.take()
            if part.kind not in ("const", "name"):
                raise self.error(f"unexpected {_describe(part)} after '::'", part)
            path.append(part.value)
        dotted = "::".join(path)
        if self.at("punct", "."):
            self.take()
            attr = self.take()
            if (
                dotted == "Mixlib::Log::Formatter"
                and attr.kind == "name"
                and attr.value == "show_time"
                and self.at("punct", "=")
            ):
                self.take()
                value_tok = self.peek()
                value = self.value(0)
                if not isinstance(value, bool):
                    raise self.error(
                        "Mixlib::Log::Formatter.show_time must be true or false", value_tok
                    )
                self.raw["show_time"] = value
                self.lines["show_time"] = tok.line
                return
            raise self.error(
                f"'{dotted}.{attr.value}' is not supported (the only method line accepted is "
                "Mixlib::Log::Formatter.show_time = true|false)",
                tok,
            )
        if self.at("punct", "["):
            raise self.error(
                f"'{dotted}[...]' is not supported; write 'name VALUE' to set a setting", tok
            )
        raise self.error(f"unexpected constant '{dotted}'", tok)

    def environment_line(self, key: str, tok: _Tok) -> None:
        value_tok = self.peek()
        value = self.value(0)
        if not isinstance(value, str):
            raise self.error(f"environment variable {key} needs a quoted string value", value_tok)
        problem = env_problem(key, value)
        if problem:
            raise self.error(problem, tok)
        env = self.raw.setdefault("environment_variables", {})
        env[key] = value
        self.lines.setdefault("environment_variables", tok.line)

    # -- values --

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.error("values are nested too deeply")
        tok = self.take()
        kind = tok.kind
        if kind in ("str", "sym", "int", "float", "regex"):
            return tok.value
        if kind == "name":
            literals = {"true": True, "false": False, "nil": None}
            if tok.value in literals:
                return literals[tok.value]
            raise self.error(
                f"'{tok.value}' is not a literal value (variables and method calls are not "
                "supported; quote strings)",
                tok,
            )
        if kind == "const":
            if tok.value in ("STDOUT", "STDERR") and not self.at("punct", "::"):
                return RubyConst(tok.value)
            raise self.error(
                f"'{tok.value}' is not a literal value (only STDOUT and STDERR are accepted)", tok
            )
        if kind == "punct" and tok.value == "[":
            return self.array_rest(depth + 1)
        if kind == "punct" and tok.value == "{":
            self.pos -= 1
            return self.hash_literal(depth + 1)
        raise self.error(f"expected a value, found {_describe(tok)}", tok)

    def array_rest(self, depth: int) -> list[Any]:
        items: list[Any] = []
        while not self.at("punct", "]"):
            items.append(self.value(depth))
            if self.at("punct", ","):
                self.take()
            elif not self.at("punct", "]"):
                raise self.error(f"expected ',' or ']', found {_describe(self.peek())}")
        self.take()
        return items

    def hash_literal(self, depth: int) -> dict[Any, Any]:
        if depth > _MAX_DEPTH:
            raise self.error("values are nested too deeply")
        self.expect("{")
        result = _RubyHash()
        result.key_lines = {}
        while not self.at("punct", "}"):
            self.pair(depth, result, None)
            if self.at("punct", ","):
                self.take()
            elif not self.at("punct", "}"):
                raise self.error(f"expected ',' or '}}', found {_describe(self.peek())}")
        self.take()
        return result

    def bare_hash(self, depth: int, first_key: Any) -> dict[Any, Any]:
        result = _RubyHash()
        result.key_lines = {}
        self.pair(depth + 1, result, first_key)
        while self.at("punct", ","):
            self.take()
            self.pair(depth + 1, result, None)
        return result

    def pair(self, depth: int, result: _RubyHash, key: Any) -> None:
        key_tok = self.toks[self.pos - 1] if key is not None else self.peek()
        if key is None and key_tok.kind == "label":
            self.take()
            key = Symbol(key_tok.value)
        else:
            if key is None:
                key = self.value(depth)
            self.expect("=>")
        if not isinstance(key, (str, Symbol, RubyRegex, int, float, bool)) and key is not None:
            raise self.error("unsupported hash key (use a string, symbol or regex)", key_tok)
        result[key] = self.value(depth)
        result.key_lines[key] = key_tok.line


def parse_ruby(text: str, path: str) -> tuple[dict[str, Any], dict[str, int]]:
    if not isinstance(text, str):
        raise ConfigError(path, None, "config text must be a string")
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(path, None, f"config file larger than {MAX_CONFIG_CHARS} characters")
    return _Parser(_client_tokens(text, path), path).program()


def parse_ruby_config(text: str, path: str = "<config>") -> dict[str, Any]:
    """The settings a Ruby config file sets, as raw values (strings, `Symbol`, `RubyRegex`,
    numbers, lists, dicts); nothing is evaluated. Raises ConfigError with file and line."""
    return parse_ruby(text, path)[0]
