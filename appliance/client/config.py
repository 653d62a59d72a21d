"""The node client's settings, read from the original's own config files without running Ruby.

The original client evaluates ``push-jobs-client.rb`` / ``client.rb`` as Ruby (Chef::Config).
Evaluating it here would mean shipping a Ruby interpreter or trusting ``eval``; instead a
small line-oriented parser accepts exactly the subset that the push-jobs cookbook writes
(docs-spec.md §10.2) and that people write by hand, and stops on anything else with
``FILE:LINE: message``:

- comments (``#``, trailing too, ``=begin``/``=end``), blank lines, ``\\`` line continuations;
- ``name VALUE`` / ``name(VALUE)`` / ``whitelist {...}`` / ``whitelist "a" => "b"`` (an
  implicit hash); VALUE is a literal: a string (single-quoted: only ``\\\\`` and ``\\'``;
  double-quoted: Ruby's escapes, never ``#{...}`` interpolation), ``:symbol``,
  ``true``/``false``/``nil``, an integer (``1_000``, ``0x..``, ``0b..``, ``0o..``/``0..``
  octal), a float, ``[...]``, ``{k => v, k: v, "k": v}`` (Ruby 2.x and 3.4 ``inspect``
  forms), a regex ``/.../imx`` (only meaningful as a whitelist key), ``STDOUT``/``STDERR``;
- ``KEY='VALUE'`` (the cookbook's ``environment_variables``; KEY starts upper-case) and
  ``ENV['KEY'] = 'VALUE'``: exported into the client's environment. (In the original these
  lines only defined Ruby constants; exporting them is what the cookbook meant.)
- ``Mixlib::Log::Formatter.show_time = true|false``.

Decisions:
- ``name = 'VALUE'`` with a lower-case name and a quoted string is an environment line too
  (the cookbook writes ``http_proxy='…'`` for such environment variables; in Ruby it assigned
  a local variable and did nothing); any other ``name = VALUE``, or one naming a push client
  setting (``node_name = 'x'``, surely meant as ``node_name 'x'``), is rejected.
- ``nil`` as a setting's value means "use the default" (the original's ``|| default``).
- Setting names must be push-jobs settings or common Chef::Config settings (`IGNORED_KEYS`,
  accepted without effect and listed in ``ClientConfig.ignored``); any other name is an
  error, so a typo such as ``whitelst`` does not silently leave the default whitelist.
- Whitelist hash values accept ``:command_line``/``:lock`` and also the string keys
  ``"command_line"``/``"lock"`` that the cookbook renders from node attributes (the
  original only looked at the symbols). ``:lock => false`` is the same as no lock. A symbol
  as a top-level whitelist key is an error (the original could never match it).
- Regex keys are translated from Ruby to Python (`ruby_regex`): flags ``i``/``m``/``x`` become
  IGNORECASE/DOTALL/VERBOSE (Ruby's ``m`` is Python's DOTALL), ``o``/``u`` are accepted
  and ignored; patterns compile with re.ASCII, as Ruby's ``\\d \\w \\s \\b`` are ASCII.
  ``\\z`` → ``\\Z``; ``\\Z`` → ``(?=\\n?\\Z)``; ``\\h``/``\\H`` → hex digit classes; ``\\e`` →
  ``\\x1b``; ``(?<name>``/``(?'name'`` → ``(?P<name>``; ``\\k<name>`` → ``(?P=name)``;
  ``(?m:`` inline flags → ``(?s:``; POSIX ``[[:alpha:]]`` etc. → ASCII ranges;
  ``\\p{..}``, ``\\g<..>``, ``\\G``, ``\\K``, ``\\R``, ``\\X``, ``\\c``, nested classes and
  ``&&`` are errors. ``^``/``$`` are kept as Python anchors: the whitelist matcher uses
  full-string matching (DESIGN.md), never Ruby's line anchoring.
- ``log_location`` ``STDOUT`` (constant or string) means standard output (``None``);
  ``STDERR`` becomes ``/dev/stderr``. ``log_level :auto`` is ``info``; ``trace`` is ``debug``.
- ``max_body_size`` from the command line is a string converted like Ruby's ``to_i``
  (leading integer, rest ignored), but a string with no leading digits is an error, not 0.
  It must be at least 1024.

The TOML form (a file ending in ``.toml``) has the same keys at top level, plus
``show_time = false``, an ``[environment_variables]`` table, and (TOML only) the node record's
``[attributes]`` table, ``tags`` and ``roles``. The whitelist is a table in order::

    [whitelist]
    "chef-client" = "chef-client"
    "/^deliverance (.+)$/" = 'deliverance eats at \\1'   # a key "/.../flags" is a regex
    "hard chicken" = { command_line = "tastes like chicken", lock = true }

A whitelist key written ``/SOURCE/FLAGS`` (FLAGS from ``imxou``) is always a regex; an exact
job name of that shape cannot be written in TOML (use the Ruby form).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote

__all__ = [
    "DEFAULT_SEARCH",
    "IGNORED_KEYS",
    "ClientConfig",
    "ConfigError",
    "Proxies",
    "RubyRegex",
    "Symbol",
    "WhitelistEntry",
    "find_config",
    "load_config",
    "parse_config",
    "parse_ruby_config",
    "parse_toml_config",
    "ruby_regex",
]

DEFAULT_SEARCH = (
    "/etc/chef/chef-push-client.rb",
    "/etc/chef/push-jobs-client.rb",
    "/etc/chef/client.rb",
)
MAX_CONFIG_CHARS = 4 * 1024 * 1024
_MAX_DEPTH = 32  # nesting of [ ] / { } values
_MAX_NUMBER_CHARS = 64
_DIGITS = frozenset("0123456789")
_FLAGS_SOURCE = "command line"


class ConfigError(ValueError):
    """A bad config file or flag; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str | None, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.path is not None and self.line is not None:
            return f"{self.path}:{self.line}: {self.message}"
        if self.path is not None:
            return f"{self.path}: {self.message}"
        return self.message


@dataclass(frozen=True)
class Symbol:
    """A Ruby symbol (``:name``); kept apart from strings, as Ruby keeps them apart."""

    name: str

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f":{self.name}"


@dataclass(frozen=True)
class RubyRegex:
    """A Ruby regex literal as written: compile it with `ruby_regex`."""

    source: str
    flags: str = ""

    def __repr__(self) -> str:
        return f"/{self.source}/{self.flags}"


@dataclass(frozen=True)
class _Const:
    name: str  # STDOUT or STDERR


@dataclass(frozen=True)
class WhitelistEntry:
    """One whitelist line: exact job name or compiled regex → command line (and lock)."""

    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None = None


_PROXY_SCHEMES = ("http", "https", "ftp")
_PROXY_KEYS = tuple(
    f"{scheme}_proxy{suffix}" for scheme in _PROXY_SCHEMES for suffix in ("", "_user", "_pass")
) + ("no_proxy",)


@dataclass(frozen=True)
class Proxies:
    """Chef's forward-proxy settings (the cookbook's ``push_jobs.proxy``)."""

    http_proxy: str | None = None
    http_proxy_user: str | None = None
    http_proxy_pass: str | None = None
    https_proxy: str | None = None
    https_proxy_user: str | None = None
    https_proxy_pass: str | None = None
    ftp_proxy: str | None = None
    ftp_proxy_user: str | None = None
    ftp_proxy_pass: str | None = None
    no_proxy: str | None = None

    def as_env(self) -> dict[str, str]:
        """Environment variables as Chef exports them (lower and upper case names)."""
        env: dict[str, str] = {}
        for scheme in _PROXY_SCHEMES:
            url = getattr(self, f"{scheme}_proxy")
            if not url:
                continue
            if "://" not in url:
                url = f"http://{url}"
            user = getattr(self, f"{scheme}_proxy_user")
            if user:
                password = getattr(self, f"{scheme}_proxy_pass")
                cred = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
                head, _, rest = url.partition("://")
                url = f"{head}://{cred}@{rest}"
            env[f"{scheme}_proxy"] = env[f"{scheme.upper()}_PROXY"] = url
        if self.no_proxy:
            env["no_proxy"] = env["NO_PROXY"] = self.no_proxy
        return env


def _default_whitelist() -> tuple[WhitelistEntry, ...]:
    return (WhitelistEntry("chef-client", "chef-client"),)


def _empty_mapping() -> Mapping[str, Any]:
    return MappingProxyType({})


_ORG_RE = re.compile(r"/organizations/+([^/]+)/*")


@dataclass(frozen=True)
class ClientConfig:
    """Everything ``pushy client`` needs; build it with `load_config` / `parse_config`."""

    chef_server_url: str = "https://localhost:443"
    node_name: str | None = None  # None: the caller uses the machine's FQDN
    client_key: str = "/etc/chef/client.pem"
    whitelist: tuple[WhitelistEntry, ...] = field(default_factory=_default_whitelist)
    file_dir: str = "/tmp/chef-push"
    allow_unencrypted: bool = False
    allowed_overwritable_env_vars: tuple[str, ...] | None = None
    max_body_size: int = 63000
    log_level: str = "info"
    log_location: str | None = None  # None: standard output
    lockfile: str | None = None
    file_cache_path: str = "/var/chef/cache"
    ssl_verify_mode: str = "verify_peer"
    trusted_certs_dir: str = "/etc/chef/trusted_certs"
    verify_api_cert: bool = False
    environment: tuple[tuple[str, str], ...] = ()  # exported into the client's environment
    show_time: bool = True
    proxies: Proxies = field(default_factory=Proxies)
    node_attributes: Mapping[str, Any] = field(default_factory=_empty_mapping)  # TOML only
    tags: tuple[str, ...] = ()  # TOML only
    roles: tuple[str, ...] = ()  # TOML only
    ignored: tuple[str, ...] = ()  # Chef settings found in the file that have no effect here
    source: str | None = None  # the file the settings came from

    @property
    def org(self) -> str:
        """The organization named in ``chef_server_url`` (as the original extracts it)."""
        match = _ORG_RE.search(self.chef_server_url)
        if match is None:
            raise ConfigError(self.source, None, "chef_server must end in /organizations/ORG_NAME")
        return match.group(1)


# ---------------------------------------------------------------------------------------
# Setting names

#: Chef::Config settings that may appear in a shared client.rb; accepted, without effect.
IGNORED_KEYS = frozenset(
    """
    acl_path add_formatter audit_mode authentication_protocol_version automatic_attribute_blacklist
    automatic_attribute_whitelist blocked_automatic_attributes blocked_default_attributes
    blocked_normal_attributes blocked_override_attributes cache_options cache_path
    checksum_path chef_guid chef_guid_path chef_license chef_repo_path chef_server_root
    chef_zero_host chef_zero_port client_d_dir client_fork client_key_contents client_path
    client_registration_retries config_d_dir container_path cookbook_artifact_path cookbook_path
    cookbook_sync_threads data_bag_decrypt_minimum_version data_bag_path
    default_attribute_blacklist default_attribute_whitelist diff_disabled diff_filesize_threshold
    diff_output_threshold disable_event_loggers download_progress_interval enable_reporting
    enable_reporting_url_fatals enable_selinux_file_permission_fixup encrypted_data_bag_secret
    enforce_default_paths enforce_path_sanity environment environment_path event_loggers
    exception_handlers file_atomic_update file_backup_path file_staging_uses_destdir fips
    force_formatter force_logger formatter formatters group group_path http_disable_auth_on_redirect
    http_retry_count http_retry_delay interval json_attribs listen local_key_generation local_mode
    lockfile_timeout log_location_format minimal_ohai named_run_list no_lazy_load node_path
    normal_attribute_blacklist normal_attribute_whitelist override_attribute_blacklist
    override_attribute_whitelist pid_file policy_group policy_name policy_path
    report_handlers rest_timeout role_path run_lock_timeout rubygems_url script_path
    show_download_progress solo solo_legacy_mode splay ssl_ca_file ssl_ca_path ssl_client_cert
    ssl_client_key start_handlers stream_execute_output syntax_check_cache_path
    treat_deprecation_warnings_as_errors umask use_policyfile user user_path
    validation_client_name validation_key validation_key_contents verbose_logging why_run
    windows_service
    """.split()
)

# Settings of the push client itself: ``node_name = 'x'`` is surely a typo for ``node_name 'x'``.
_PUSH_SETTINGS = frozenset(
    {
        "chef_server_url",
        "node_name",
        "client_key",
        "whitelist",
        "file_dir",
        "allow_unencrypted",
        "allowed_overwritable_env_vars",
        "max_body_size",
    }
)
_SETTINGS = frozenset(
    {
        *_PUSH_SETTINGS,
        "log_level",
        "log_location",
        "lockfile",
        "file_cache_path",
        "ssl_verify_mode",
        "trusted_certs_dir",
        "verify_api_cert",
        *_PROXY_KEYS,
    }
)
# Keys of the raw settings that a Ruby file writes another way (or cannot write at all).
_NOT_RUBY_NAMES = {
    "environment_variables": "write one KEY='VALUE' line per environment variable",
    "show_time": "write Mixlib::Log::Formatter.show_time = true|false",
    "attributes": "node attributes are accepted only in the TOML form",
    "tags": "node tags are accepted only in the TOML form",
    "roles": "node roles are accepted only in the TOML form",
}
_KNOWN = _SETTINGS | IGNORED_KEYS | set(_NOT_RUBY_NAMES)

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
# Tokenizer


class _Tok(NamedTuple):
    kind: str  # name const label sym str int float regex punct nl eof
    value: Any
    line: int
    spaced: bool = False  # whitespace just before it: `name [1]` is a call, `name[1]` is not


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[?!]?")
_NUMBER_RE = re.compile(
    r"""-?(?:
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
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
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


def _continues(tok: _Tok) -> bool:
    """Whether a line ending in ``tok`` goes on (as in Ruby, after ``,`` ``=>`` ``=`` ``.``)."""
    return tok.kind == "nl" or (tok.kind == "punct" and tok.value in (",", "=>", "=", "."))


def _is_ident_start(ch: str) -> bool:
    return ch == "_" or (ch.isascii() and ch.isalpha())


class _Lexer:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.i = 0
        self.line = 1
        self.toks: list[_Tok] = []
        self.stack: list[tuple[str, int]] = []
        self.start = 0

    def error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(self.path, self.line if line is None else line, message)

    def emit(self, kind: str, value: Any, line: int) -> None:
        spaced = self.start > 0 and self.text[self.start - 1] in " \t\\"
        self.toks.append(_Tok(kind, value, line, spaced))

    def run(self) -> list[_Tok]:
        text, n = self.text, len(self.text)
        while self.i < n:
            c = text[self.i]
            start_line = self.line
            self.start = self.i
            if c == "\n":
                if not self.stack and self.toks and not _continues(self.toks[-1]):
                    self.emit("nl", None, self.line)
                self.line += 1
                self.i += 1
            elif c in " \t\r\f\v":
                self.i += 1
            elif c == "#":
                end = text.find("\n", self.i)
                self.i = n if end < 0 else end
            elif c == "\\" and text.startswith(("\n", "\r\n"), self.i + 1):
                self.i = text.index("\n", self.i) + 1
                self.line += 1
            elif c == "=" and self._at_line_start() and _BEGIN_RE.match(text, self.i):
                self._skip_block_comment()
            elif c == "'":
                value = self._single_quoted()
                self._string_or_label(value, start_line)
            elif c == '"':
                value = self._double_quoted('"')
                self._string_or_label(value, start_line)
            elif c == ":":
                self._colon()
            elif _is_ident_start(c):
                match = _NAME_RE.match(text, self.i)
                assert match is not None
                word = match.group()
                self.i = match.end()
                if text.startswith(":", self.i) and not text.startswith("::", self.i):
                    self.i += 1
                    self.emit("label", word, start_line)
                else:
                    self.emit("const" if word[0].isupper() else "name", word, start_line)
            elif c in "0123456789" or (c == "-" and text[self.i + 1 : self.i + 2] in _DIGITS):
                self._number()
            elif c == "/":
                self._regex()
            elif c in _OPEN:
                self.stack.append((c, self.line))
                self.emit("punct", c, start_line)
                self.i += 1
            elif c in _CLOSE:
                if not self.stack:
                    raise self.error(f"unmatched {c!r}")
                opener, opened = self.stack.pop()
                if opener != _CLOSE[c]:
                    raise self.error(f"{c!r} does not match {opener!r} opened on line {opened}")
                self.emit("punct", c, start_line)
                self.i += 1
            elif text.startswith("=>", self.i):
                self.emit("punct", "=>", start_line)
                self.i += 2
            elif text.startswith(("==", "=~"), self.i):
                raise self.error("comparisons are not supported")
            elif c in "=,.":
                self.emit("punct", c, start_line)
                self.i += 1
            elif c == ";":
                if self.stack:
                    raise self.error("unexpected ';'")
                if self.toks and self.toks[-1].kind != "nl":
                    self.emit("nl", None, start_line)
                self.i += 1
            elif c in _UNSUPPORTED_CHARS:
                raise self.error(_UNSUPPORTED_CHARS[c])
            else:
                raise self.error(f"unexpected character {c!r}")
        if self.stack:
            opener, opened = self.stack[-1]
            raise self.error(f"{opener!r} is never closed", opened)
        self.emit("eof", None, self.line)
        return self.toks

    def _at_line_start(self) -> bool:
        return self.i == 0 or self.text[self.i - 1] == "\n"

    def _skip_block_comment(self) -> None:
        match = _END_RE.search(self.text, self.i)
        if match is None:
            raise self.error("=begin without =end")
        end = self.text.find("\n", match.start())
        end = len(self.text) if end < 0 else end
        self.line += self.text.count("\n", self.i, end)
        self.i = end

    def _string_or_label(self, value: str, line: int) -> None:
        if self.text.startswith(":", self.i) and not self.text.startswith("::", self.i):
            self.i += 1
            self.emit("label", value, line)
        else:
            self.emit("str", value, line)

    def _single_quoted(self) -> str:
        text, n = self.text, len(self.text)
        start_line = self.line
        out: list[str] = []
        i = self.i + 1
        while True:
            if i >= n:
                raise self.error("unterminated string", start_line)
            c = text[i]
            if c == "'":
                break
            if c == "\\" and i + 1 < n and text[i + 1] in "\\'":
                out.append(text[i + 1])
                i += 2
                continue
            if c == "\n":
                self.line += 1
            out.append(c)
            i += 1
        self.i = i + 1
        return "".join(out)

    def _double_quoted(self, quote_char: str) -> str:
        text, n = self.text, len(self.text)
        start_line = self.line
        out: list[str] = []
        i = self.i + 1
        while True:
            if i >= n:
                raise self.error("unterminated string", start_line)
            c = text[i]
            if c == quote_char:
                break
            if c == "#" and i + 1 < n and _interpolates(text, i + 1):
                raise self.error("string interpolation (#{...}, #@, #$) is not supported")
            if c == "\n":
                self.line += 1
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= n:
                raise self.error("unterminated string", start_line)
            i = self._escape(i + 1, out)
        self.i = i + 1
        return "".join(out)

    def _escape(self, i: int, out: list[str]) -> int:
        """Decode the escape whose letter is at ``i``; return the index after it."""
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
                raise self.error("invalid \\x escape")
            out.append(chr(int(match.group(), 16)))
            return match.end()
        if d == "u":
            return self._unicode_escape(i, out)
        if d in "cCM":
            raise self.error(f"the \\{d} control/meta escape is not supported")
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
            end = match.end()
        else:
            match = _HEX4_RE.match(text, i + 1)
            if match is None:
                raise self.error("invalid \\u escape")
            codes = [int(match.group(), 16)]
            end = match.end()
        for code in codes:
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise self.error("invalid \\u escape (not a Unicode scalar value)")
            out.append(chr(code))
        return end

    def _colon(self) -> None:
        text = self.text
        line = self.line
        nxt = text[self.i + 1 : self.i + 2]
        if nxt == ":":
            self.emit("punct", "::", line)
            self.i += 2
        elif nxt == '"':
            self.i += 1
            self.emit("sym", Symbol(self._double_quoted('"')), line)
        elif nxt == "'":
            self.i += 1
            self.emit("sym", Symbol(self._single_quoted()), line)
        elif nxt and _is_ident_start(nxt):
            match = _NAME_RE.match(text, self.i + 1)
            assert match is not None
            self.i = match.end()
            self.emit("sym", Symbol(match.group()), line)
        else:
            raise self.error("unexpected ':'")

    def _number(self) -> None:
        match = _NUMBER_RE.match(self.text, self.i)
        if match is None:
            raise self.error("malformed number")
        word = match.group()
        after = self.text[match.end() : match.end() + 1]
        if after and (after.isalnum() or after == "_"):
            raise self.error("malformed number")
        if len(word) > _MAX_NUMBER_CHARS:
            raise self.error("number too long")
        self.i = match.end()
        digits = word.replace("_", "")
        body = digits.lstrip("-").lower()
        sign = -1 if digits.startswith("-") else 1
        value: int | float
        if body.startswith(("0x", "0b", "0o")):
            value = sign * int(body[2:], {"x": 16, "b": 2, "o": 8}[body[1]])
        elif len(body) > 1 and body.startswith("0") and body.isdigit():
            value = sign * int(body, 8)
        elif any(ch in body for ch in ".e"):
            value = float(digits)
        else:
            value = int(digits)
        self.emit("float" if isinstance(value, float) else "int", value, self.line)

    def _regex(self) -> None:
        text, n = self.text, len(self.text)
        start_line = self.line
        i = self.i + 1
        while True:
            if i >= n:
                raise self.error("unterminated regex literal /.../ (an unquoted path?)", start_line)
            c = text[i]
            if c == "/":
                break
            if c == "#" and i + 1 < n and _interpolates(text, i + 1):
                raise self.error("regex interpolation (#{...}) is not supported")
            if c == "\\" and i + 1 < n:
                if text[i + 1] == "\n":
                    self.line += 1
                i += 2
                continue
            if c == "\n":
                self.line += 1
            i += 1
        source = text[self.i + 1 : i]
        match = _FLAG_LETTERS_RE.match(text, i + 1)
        assert match is not None
        self.i = match.end()
        self.emit("regex", RubyRegex(source, match.group()), start_line)


def _interpolates(text: str, i: int) -> bool:
    """Whether ``#`` followed by ``text[i:]`` interpolates in a Ruby double-quoted string."""
    ch = text[i]
    if ch == "{":
        return True
    if ch in "@$" and i + 1 < len(text):
        nxt = text[i + 1]
        return _is_ident_start(nxt) or (ch == "@" and nxt == "@")
    return False


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
            and name not in _PUSH_SETTINGS
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
        if name in _NOT_RUBY_NAMES:
            raise self.error(f"'{name}' is not a Chef setting: {_NOT_RUBY_NAMES[name]}", tok)
        if name not in _KNOWN:
            raise self.error(_unknown_message(name), tok)
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
        problem = _env_problem(key, value)
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
                return _Const(tok.value)
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


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_SETTINGS | IGNORED_KEYS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown setting '{name}'{hint}"


def _env_problem(key: str, value: str) -> str | None:
    if not key or "=" in key or "\0" in key:
        return f"invalid environment variable name {key!r}"
    if "\0" in value:
        return f"environment variable {key} contains a NUL character"
    return None


def _parse_ruby(text: str, path: str) -> tuple[dict[str, Any], dict[str, int]]:
    if not isinstance(text, str):
        raise ConfigError(path, None, "config text must be a string")
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(path, None, f"config file larger than {MAX_CONFIG_CHARS} characters")
    toks = _Lexer(text, path).run()
    return _Parser(toks, path).program()


def parse_ruby_config(text: str, path: str = "<config>") -> dict[str, Any]:
    """The settings a Ruby config file sets, as raw values (strings, `Symbol`, `RubyRegex`,
    numbers, lists, dicts); nothing is evaluated. Raises ConfigError with file and line."""
    return _parse_ruby(text, path)[0]


# ---------------------------------------------------------------------------------------
# TOML form

_TOML_REGEX_KEY = re.compile(r"/(.*)/([imxou]*)", re.S)


def parse_toml_config(text: str, path: str | None = "<config>") -> dict[str, Any]:
    """The settings of the TOML form, with the same keys as `parse_ruby_config`; whitelist
    keys written ``/.../flags`` become `RubyRegex`."""
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(path, None, f"config file larger than {MAX_CONFIG_CHARS} characters")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, int(found.group(1)) if found else None, str(exc)) from None
    except RecursionError:
        raise ConfigError(path, None, "values are nested too deeply") from None
    whitelist = data.get("whitelist")
    if isinstance(whitelist, dict):
        converted: dict[Any, Any] = {}
        for key, value in whitelist.items():
            match = _TOML_REGEX_KEY.fullmatch(key)
            converted[RubyRegex(match.group(1), match.group(2)) if match else key] = value
        data["whitelist"] = converted
    return data


# ---------------------------------------------------------------------------------------
# Ruby regex → Python

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


# ---------------------------------------------------------------------------------------
# Checking raw values


class _Invalid(Exception):
    """A value of the wrong shape; the caller adds the file, the setting name and (unless
    ``line`` says where inside a multi-line value) the setting's line."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, dict):
        return "a hash"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, _Const):
        return value.name
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Invalid(f"must be a non-empty string (got {_show(value)})")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false (got {_show(value)})")
    return value


def _ruby_to_i(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Invalid(f"must be an integer (got {_show(value)})")
    if isinstance(value, str):
        match = re.match(r"[ \t\n\v\f\r]*([-+]?[0-9]+(?:_[0-9]+)*)", value)
        if match is None:
            raise _Invalid(f"must be an integer (got {_show(value)})")
        if len(match.group(1)) > _MAX_NUMBER_CHARS:
            raise _Invalid(f"is too large (got {_show(value)})")
        value = int(match.group(1).replace("_", ""))
    if value < 1024:
        raise _Invalid(f"must be at least 1024 (got {value})")
    return value


def _word_choice(choices: Iterable[str], aliases: Mapping[str, str]) -> Callable[[Any], str]:
    allowed = tuple(choices)

    def check(value: Any) -> str:
        word = value.name if isinstance(value, Symbol) else value
        if isinstance(word, str):
            word = aliases.get(word.lower(), word.lower())
            if word in allowed:
                return word
        raise _Invalid(f"must be one of {', '.join(allowed)} (got {_show(value)})")

    return check


def _log_location(value: Any) -> str | None:
    name = value.name if isinstance(value, _Const) else value
    if name == "STDOUT":
        return None
    if name == "STDERR":
        return "/dev/stderr"
    return _string(value)


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"must be an array of strings (got {_show(value)})")
    return tuple(value)


def _environment(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise _Invalid(f'must be a table of NAME = "VALUE" (got {_show(value)})')
    pairs = []
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _Invalid(f"must map names to strings (got {_show(key)} = {_show(item)})")
        problem = _env_problem(key, item)
        if problem:
            raise _Invalid(problem)
        pairs.append((key, item))
    return tuple(pairs)


def _attributes(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a table (got {_show(value)})")
    return MappingProxyType(dict(value))


def _whitelist(value: Any) -> tuple[WhitelistEntry, ...]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be a hash of job name => command (got {_show(value)})")
    key_lines = getattr(value, "key_lines", {})
    entries = []
    for key, item in value.items():
        try:
            entries.append(_whitelist_entry(key, item))
        except _Invalid as exc:
            raise _Invalid(str(exc), key_lines.get(key)) from None
    return tuple(entries)


def _whitelist_entry(key: Any, value: Any) -> WhitelistEntry:
    pattern: str | re.Pattern[str]
    if isinstance(key, RubyRegex):
        try:
            pattern = ruby_regex(key)
        except ValueError as exc:
            raise _Invalid(f"key {key!r}: {exc}") from None
    elif isinstance(key, str):
        pattern = key
    elif isinstance(key, Symbol):
        raise _Invalid(f"key {key!r} is a symbol; job names are strings: write '{key.name}'")
    else:
        raise _Invalid(f"key {_show(key)} must be a string or a regex")
    if isinstance(value, str):
        return WhitelistEntry(pattern, value)
    if not isinstance(value, dict):
        raise _Invalid(
            f"entry {_show(key)} must be a command string or a hash with :command_line "
            f"(got {_show(value)})"
        )
    command: str | None = None
    lock: bool | str | None = None
    for item_key, item in value.items():
        name = item_key.name if isinstance(item_key, Symbol) else item_key
        if name == "command_line":
            if not isinstance(item, str):
                raise _Invalid(f"entry {_show(key)}: :command_line must be a string")
            command = item
        elif name == "lock":
            if item is False or item is None:
                lock = None
            elif item is True or (isinstance(item, str) and item and "\0" not in item):
                lock = item
            else:
                raise _Invalid(f"entry {_show(key)}: :lock must be true, false or a path")
        else:
            raise _Invalid(
                f"entry {_show(key)}: unknown key {_show(item_key)} (use :command_line, :lock)"
            )
    if command is None:
        raise _Invalid(f"entry {_show(key)} has no :command_line")
    return WhitelistEntry(pattern, command, lock)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "chef_server_url": _string,
    "node_name": _string,
    "client_key": _string,
    "whitelist": _whitelist,
    "file_dir": _string,
    "allow_unencrypted": _bool,
    "allowed_overwritable_env_vars": _string_list,
    "max_body_size": _ruby_to_i,
    "log_level": _word_choice(
        ("debug", "info", "warn", "error", "fatal"),
        {"auto": "info", "trace": "debug", "warning": "warn"},
    ),
    "log_location": _log_location,
    "lockfile": _string,
    "file_cache_path": _string,
    "ssl_verify_mode": _word_choice(("verify_peer", "verify_none"), {}),
    "trusted_certs_dir": _string,
    "verify_api_cert": _bool,
    "environment_variables": _environment,
    "show_time": _bool,
    "attributes": _attributes,
    "tags": _string_list,
    "roles": _string_list,
    **{key: _string for key in _PROXY_KEYS},
}
_FIELD_NAMES = {"environment_variables": "environment", "attributes": "node_attributes"}
_FLAG_KEYS = _SETTINGS | {"show_time"}


def _build(
    raw: Mapping[str, Any],
    lines: Mapping[str, int],
    source: str | None,
    flags: Mapping[str, Any],
) -> ClientConfig:
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str) or key not in _KNOWN:
            raise ConfigError(source, lines.get(str(key)), _unknown_message(str(key)))
        if key in IGNORED_KEYS:
            ignored.append(key)
            continue
        if value is None:  # nil: the default
            continue
        try:
            values[key] = _CHECKS[key](value)
        except _Invalid as exc:
            raise ConfigError(source, exc.line or lines.get(key), f"{key} {exc}") from None
    for key, value in flags.items():
        if value is None:
            continue
        if key not in _FLAG_KEYS:
            raise ConfigError(_FLAGS_SOURCE, None, f"unknown option {key!r}")
        try:
            values[key] = _CHECKS[key](value)
        except _Invalid as exc:
            raise ConfigError(_FLAGS_SOURCE, None, f"{key} {exc}") from None
    proxies = Proxies(**{key: values.pop(key) for key in _PROXY_KEYS if key in values})
    fields = {_FIELD_NAMES.get(key, key): value for key, value in values.items()}
    return ClientConfig(**fields, proxies=proxies, ignored=tuple(ignored), source=source)


def parse_config(
    text: str, path: str | None = None, flags: Mapping[str, Any] | None = None
) -> ClientConfig:
    """Settings from config text (TOML when ``path`` ends in ``.toml``, else the Ruby
    subset), then the explicit ``flags`` (None values are "not given") on top. ``path``
    None means "no config file": defaults and flags only."""
    flags = flags or {}
    if path is None:
        return _build({}, {}, None, flags)
    if path.lower().endswith(".toml"):
        return _build(parse_toml_config(text, path), {}, path, flags)
    raw, lines = _parse_ruby(text, path)
    return _build(raw, lines, path, flags)


def find_config(
    explicit: str | None,
    search: Iterable[str] = DEFAULT_SEARCH,
    exists: Callable[[str], bool] = os.path.exists,
) -> str | None:
    """The ``-c`` file when given, else the first existing default file (searched once)."""
    if explicit:
        return explicit
    return next((path for path in search if exists(path)), None)


def _read_text(path: str) -> str:
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_CHARS * 4 + 1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def load_config(path: str | None, flags: Mapping[str, Any]) -> ClientConfig:
    """Defaults < the config file at ``path`` (None: no file) < explicit ``flags``.
    Raises ConfigError for bad contents and OSError when the file cannot be read."""
    text = "" if path is None else _read_text(path)
    return parse_config(text, path, flags)
