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

- The node record for search: Chef's ``environment "prod"`` (a Chef::Config setting, used
  here as the node's ``chef_environment``), and pushy's ``roles ["web"]`` (searchable as
  ``role:web``) and ``tags ["canary"]``; Chef::Config ignores settings it does not know, so
  the original client still reads such a file.

The TOML form (a file ending in ``.toml``) has the same keys at top level, plus
``show_time = false``, an ``[environment_variables]`` table, and (TOML only) the node record's
``[attributes]`` table. The whitelist is a table in order::

    [whitelist]
    "chef-client" = "chef-client"
    "/^deliverance (.+)$/" = 'deliverance eats at \\1'   # a key "/.../flags" is a regex
    "hard chicken" = { command_line = "tastes like chicken", lock = true }

A whitelist key written ``/SOURCE/FLAGS`` (FLAGS from ``imxou``) is always a regex; an exact
job name of that shape cannot be written in TOML (use the Ruby form).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from appliance.client.configvalues import (
    MAX_CONFIG_CHARS,
    ConfigError,
    RubyRegex,
    Symbol,
    WhitelistEntry,
)
from appliance.client.rubyparse import parse_ruby, parse_ruby_config
from appliance.client.rubyregex import ruby_regex
from appliance.client.settings_table import (
    CHECKS,
    FIELD_NAMES,
    FLAG_KEYS,
    IGNORED_KEYS,
    KNOWN,
    PROXY_KEYS,
    PROXY_SCHEMES,
    Invalid,
    unknown_message,
)
from appliance.tlstrust import TlsOptions

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
_FLAGS_SOURCE = "command line"
DEFAULT_SERVER_URL = "https://localhost:443"  # Chef's default: names no organization


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
        for scheme in PROXY_SCHEMES:
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

    chef_server_url: str = DEFAULT_SERVER_URL
    node_name: str | None = None  # None: the caller uses the machine's FQDN
    client_key: str = "/etc/chef/client.pem"
    whitelist: tuple[WhitelistEntry, ...] = field(default_factory=_default_whitelist)
    file_dir: str = "/tmp/chef-push"
    allow_unencrypted: bool = False
    allowed_overwritable_env_vars: tuple[str, ...] | None = None
    max_body_size: int = 63000
    log_level: str = "info"
    log_format: str = "text"  # or "json": one object per line (appliance.logformat)
    log_location: str | None = None  # None: standard output
    lockfile: str | None = None
    file_cache_path: str = "/var/chef/cache"
    ssl_verify_mode: str = "verify_peer"
    trusted_certs_dir: str = "/etc/chef/trusted_certs"
    verify_api_cert: bool = False
    ssl_ca_file: str | None = None
    ssl_ca_path: str | None = None
    environment: tuple[tuple[str, str], ...] = ()  # exported into the client's environment
    show_time: bool = True
    proxies: Proxies = field(default_factory=Proxies)
    node_attributes: Mapping[str, Any] = field(default_factory=_empty_mapping)  # TOML only
    chef_environment: str = "_default"  # the setting ``environment``, as Chef names it
    tags: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # Chef settings found in the file that have no effect here
    source: str | None = None  # the file the settings came from

    @property
    def tls(self) -> TlsOptions:
        """Chef's SSL settings for the HTTPS requests to the server (``appliance.tlstrust``)."""
        return TlsOptions(
            verify_mode=self.ssl_verify_mode,
            verify_api_cert=self.verify_api_cert,
            trusted_certs_dir=self.trusted_certs_dir,
            ca_file=self.ssl_ca_file,
            ca_path=self.ssl_ca_path,
        )

    @property
    def org(self) -> str:
        """The organization named in ``chef_server_url`` (as the original extracts it)."""
        match = _ORG_RE.search(self.chef_server_url)
        if match is None:
            url = self.chef_server_url
            said = (
                "chef_server_url is not set"
                if url == DEFAULT_SERVER_URL
                else f"chef_server_url '{url}' names no organization"
            )
            raise ConfigError(self.source, None, f"{said}: it must end in /organizations/ORG_NAME")
        return match.group(1)


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


def _build(
    raw: Mapping[str, Any],
    lines: Mapping[str, int],
    source: str | None,
    flags: Mapping[str, Any],
) -> ClientConfig:
    values: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str) or key not in KNOWN:
            raise ConfigError(source, lines.get(str(key)), unknown_message(str(key)))
        if key in IGNORED_KEYS:
            ignored.append(key)
            continue
        if value is None:  # nil: the default
            continue
        try:
            values[key] = CHECKS[key](value)
        except Invalid as exc:
            raise ConfigError(source, exc.line or lines.get(key), f"{key} {exc}") from None
    for key, value in flags.items():
        if value is None:
            continue
        if key not in FLAG_KEYS:
            raise ConfigError(_FLAGS_SOURCE, None, f"unknown option {key!r}")
        try:
            values[key] = CHECKS[key](value)
        except Invalid as exc:
            raise ConfigError(_FLAGS_SOURCE, None, f"{key} {exc}") from None
    proxies = Proxies(**{key: values.pop(key) for key in PROXY_KEYS if key in values})
    fields = {FIELD_NAMES.get(key, key): value for key, value in values.items()}
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
    raw, lines = parse_ruby(text, path)
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
