"""The client's setting names and the check that turns each raw value into its typed form.

One table (`CHECKS`) says which settings exist and what shape each takes; the Ruby reader,
the TOML reader and the command-line flags all go through it (`config._build`), so a setting
is added in one place. `IGNORED_KEYS` are Chef::Config settings that may sit in a shared
client.rb: accepted, without effect.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from appliance.client.configvalues import RubyConst, RubyRegex, Symbol, WhitelistEntry
from appliance.client.rubyregex import ruby_regex
from appliance.core.rubylex import MAX_NUMBER_CHARS

__all__ = [
    "CHECKS",
    "FIELD_NAMES",
    "FLAG_KEYS",
    "IGNORED_KEYS",
    "KNOWN",
    "NODE_RECORD_SETTINGS",
    "NOT_RUBY_NAMES",
    "PROXY_KEYS",
    "PROXY_SCHEMES",
    "PUSH_SETTINGS",
    "SETTINGS",
    "Invalid",
    "env_problem",
    "unknown_message",
]

PROXY_SCHEMES = ("http", "https", "ftp")
PROXY_KEYS = tuple(
    f"{scheme}_proxy{suffix}" for scheme in PROXY_SCHEMES for suffix in ("", "_user", "_pass")
) + ("no_proxy",)


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
    enforce_default_paths enforce_path_sanity environment_path event_loggers
    exception_handlers file_atomic_update file_backup_path file_staging_uses_destdir fips
    force_formatter force_logger formatter formatters group group_path http_disable_auth_on_redirect
    http_retry_count http_retry_delay interval json_attribs listen local_key_generation local_mode
    lockfile_timeout log_location_format minimal_ohai named_run_list no_lazy_load node_path
    normal_attribute_blacklist normal_attribute_whitelist override_attribute_blacklist
    override_attribute_whitelist pid_file policy_group policy_name policy_path
    report_handlers rest_timeout role_path run_lock_timeout rubygems_url script_path
    show_download_progress solo solo_legacy_mode splay ssl_client_cert
    ssl_client_key start_handlers stream_execute_output syntax_check_cache_path
    treat_deprecation_warnings_as_errors umask use_policyfile user user_path
    validation_client_name validation_key validation_key_contents verbose_logging why_run
    windows_service
    """.split()
)

#: What the node record for search says about the node (Chef's ``environment``, and pushy's own
#: ``roles`` and ``tags``: unknown to Chef::Config, which ignores them, so a file that sets them
#: still works with the original client).
NODE_RECORD_SETTINGS = ("environment", "roles", "tags")
# Settings of the push client itself: ``node_name = 'x'`` is surely a typo for ``node_name 'x'``.
PUSH_SETTINGS = frozenset(
    {
        "chef_server_url",
        "node_name",
        "client_key",
        "whitelist",
        "file_dir",
        "allow_unencrypted",
        "allowed_overwritable_env_vars",
        "max_body_size",
        *NODE_RECORD_SETTINGS,
    }
)
SETTINGS = frozenset(
    {
        *PUSH_SETTINGS,
        "log_level",
        "log_format",
        "log_location",
        "lockfile",
        "file_cache_path",
        "ssl_verify_mode",
        "trusted_certs_dir",
        "verify_api_cert",
        "ssl_ca_file",
        "ssl_ca_path",
        *PROXY_KEYS,
    }
)
# Keys of the raw settings that a Ruby file writes another way (or cannot write at all).
NOT_RUBY_NAMES = {
    "environment_variables": "write one KEY='VALUE' line per environment variable",
    "show_time": "write Mixlib::Log::Formatter.show_time = true|false",
    "attributes": "node attributes are accepted only in the TOML form",
}
KNOWN = SETTINGS | IGNORED_KEYS | set(NOT_RUBY_NAMES)


def unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(SETTINGS | IGNORED_KEYS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown setting '{name}'{hint}"


def env_problem(key: str, value: str) -> str | None:
    if not key or "=" in key or "\0" in key:
        return f"invalid environment variable name {key!r}"
    if "\0" in value:
        return f"environment variable {key} contains a NUL character"
    return None


# ---------------------------------------------------------------------------------------
# Checking raw values


class Invalid(Exception):
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
    if isinstance(value, RubyConst):
        return value.name
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise Invalid(f"must be a non-empty string (got {_show(value)})")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false (got {_show(value)})")
    return value


def _ruby_to_i(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid(f"must be an integer (got {_show(value)})")
    if isinstance(value, str):
        match = re.match(r"[ \t\n\v\f\r]*([-+]?[0-9]+(?:_[0-9]+)*)", value)
        if match is None:
            raise Invalid(f"must be an integer (got {_show(value)})")
        if len(match.group(1)) > MAX_NUMBER_CHARS:
            raise Invalid(f"is too large (got {_show(value)})")
        value = int(match.group(1).replace("_", ""))
    if value < 1024:
        raise Invalid(f"must be at least 1024 (got {value})")
    return value


def _word_choice(choices: Iterable[str], aliases: Mapping[str, str]) -> Callable[[Any], str]:
    allowed = tuple(choices)

    def check(value: Any) -> str:
        word = value.name if isinstance(value, Symbol) else value
        if isinstance(word, str):
            word = aliases.get(word.lower(), word.lower())
            if word in allowed:
                return word
        raise Invalid(f"must be one of {', '.join(allowed)} (got {_show(value)})")

    return check


def _log_location(value: Any) -> str | None:
    name = value.name if isinstance(value, RubyConst) else value
    if name == "STDOUT":
        return None
    if name == "STDERR":
        return "/dev/stderr"
    return _string(value)


_CHEF_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _chef_name(value: Any) -> str:
    """A role or environment name as Chef allows it (letters, digits, ``_``, ``-``)."""
    if not isinstance(value, str) or not _CHEF_NAME.fullmatch(value):
        raise Invalid(f"must be a name of letters, digits, _ and - (got {_show(value)})")
    return value


def _chef_names(value: Any) -> tuple[str, ...]:
    names = _string_list(value)
    for name in names:
        _chef_name(name)
    return names


def _string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"must be an array of strings (got {_show(value)})")
    return tuple(value)


def _environment(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise Invalid(f'must be a table of NAME = "VALUE" (got {_show(value)})')
    pairs = []
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise Invalid(f"must map names to strings (got {_show(key)} = {_show(item)})")
        problem = env_problem(key, item)
        if problem:
            raise Invalid(problem)
        pairs.append((key, item))
    return tuple(pairs)


def _attributes(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"must be a table (got {_show(value)})")
    return MappingProxyType(dict(value))


def _whitelist(value: Any) -> tuple[WhitelistEntry, ...]:
    if not isinstance(value, dict):
        raise Invalid(f"must be a hash of job name => command (got {_show(value)})")
    key_lines = getattr(value, "key_lines", {})
    entries = []
    for key, item in value.items():
        try:
            entries.append(_whitelist_entry(key, item))
        except Invalid as exc:
            raise Invalid(str(exc), key_lines.get(key)) from None
    return tuple(entries)


def _whitelist_entry(key: Any, value: Any) -> WhitelistEntry:
    pattern: str | re.Pattern[str]
    if isinstance(key, RubyRegex):
        try:
            pattern = ruby_regex(key)
        except ValueError as exc:
            raise Invalid(f"key {key!r}: {exc}") from None
    elif isinstance(key, str):
        pattern = key
    elif isinstance(key, Symbol):
        raise Invalid(f"key {key!r} is a symbol; job names are strings: write '{key.name}'")
    else:
        raise Invalid(f"key {_show(key)} must be a string or a regex")
    if isinstance(value, str):
        return WhitelistEntry(pattern, value)
    if not isinstance(value, dict):
        raise Invalid(
            f"entry {_show(key)} must be a command string or a hash with :command_line "
            f"(got {_show(value)})"
        )
    command: str | None = None
    lock: bool | str | None = None
    for item_key, item in value.items():
        name = item_key.name if isinstance(item_key, Symbol) else item_key
        if name == "command_line":
            if not isinstance(item, str):
                raise Invalid(f"entry {_show(key)}: :command_line must be a string")
            command = item
        elif name == "lock":
            if item is False or item is None:
                lock = None
            elif item is True or (isinstance(item, str) and item and "\0" not in item):
                lock = item
            else:
                raise Invalid(f"entry {_show(key)}: :lock must be true, false or a path")
        else:
            raise Invalid(
                f"entry {_show(key)}: unknown key {_show(item_key)} (use :command_line, :lock)"
            )
    if command is None:
        raise Invalid(f"entry {_show(key)} has no :command_line")
    return WhitelistEntry(pattern, command, lock)


CHECKS: dict[str, Callable[[Any], Any]] = {
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
    "log_format": _word_choice(("text", "json"), {}),
    "log_location": _log_location,
    "lockfile": _string,
    "file_cache_path": _string,
    "ssl_verify_mode": _word_choice(("verify_peer", "verify_none"), {}),
    "trusted_certs_dir": _string,
    "verify_api_cert": _bool,
    "ssl_ca_file": _string,
    "ssl_ca_path": _string,
    "environment_variables": _environment,
    "show_time": _bool,
    "attributes": _attributes,
    "environment": _chef_name,
    "tags": _string_list,
    "roles": _chef_names,
    **{key: _string for key in PROXY_KEYS},
}
FIELD_NAMES = {
    "environment_variables": "environment",
    "attributes": "node_attributes",
    "environment": "chef_environment",
}
FLAG_KEYS = SETTINGS | {"show_time"}
