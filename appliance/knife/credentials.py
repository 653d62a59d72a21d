"""Where the operator CLI finds its server URL, user and key: knife's own files, unchanged.

Each setting (server URL, user, key) comes from the first of these that has it:

1. flags: ``--server-url``, ``-o/--org``, ``-u/--user``, ``-k/--key`` (``--profile`` and
   ``-c/--config`` choose what the lower layers read);
2. environment: ``PUSHY_SERVER_URL``, ``PUSHY_ORG``, ``PUSHY_USER``, ``PUSHY_KEY``;
3. the config file: ``-c FILE`` if given (a missing file is an error; ``*.toml`` is read as the
   pushy TOML form below), else the first that exists of knife's search (chef-config's
   WorkstationConfigLoader): ``$KNIFE_HOME/config.rb``, ``$KNIFE_HOME/knife.rb``,
   ``./config.rb``, ``./knife.rb``, then ``config.rb``/``knife.rb`` in the nearest ``.chef``
   directory at or above the current directory, then ``~/.chef/config.rb``/``knife.rb``; when
   knife finds none, ``~/.pushy/config.toml``;
4. the credentials profile: ``$CHEF_CREDENTIALS_FILE`` (if it is a file) or
   ``~/.chef/credentials``, profile ``--profile``, else ``$PUSHY_PROFILE``, ``$CHEF_PROFILE``, the
   content of ``~/.chef/context``, else ``default``. A profile found nowhere is an error listing
   the profiles; except, as in knife, ``default``, and a ``$CHEF_PROFILE``/context profile when
   there is no credentials file at all;
5. the local appliance: ``http://127.0.0.1:10003``, ``pivotal``, ``/var/lib/pushy/pivotal.pem``.

As in knife, the config file beats the credentials profile, and the organization is the
``/organizations/ORG`` part of the server URL unless ``--org``/``PUSHY_ORG`` says otherwise (or,
when the URL has none, the pushy TOML's ``org``).

knife.rb and config.rb are Ruby; they are read without running Ruby. Only ``chef_server_url``,
``node_name`` and ``client_key`` matter (knife.rb has no ``client_name``: that is a credentials
key); every other line is ignored. Their values may be literals or the usual idioms: local
variables (``current_dir = File.dirname(__FILE__)``), ``"#{...}"`` interpolation, ``+``,
``||``, ``File.join``/``expand_path``/``absolute_path``/``dirname``, ``__FILE__``, ``__dir__``,
``ENV[...]``/``ENV.fetch``, ``Dir.home``, ``Dir.pwd``, ``Etc.getlogin``. A needed value that uses
anything else, is set inside a block or conditional, or is nil (an unset ``ENV`` variable), is an
error naming ``FILE:LINE`` rather than a silent guess. ``name = value`` is a Ruby local variable
(as in Ruby, ``node_name = "x"`` sets nothing).

Relative key paths: in knife.rb, relative to the current directory (knife opens the path as
written); in ~/.chef/credentials, relative to ``~/.chef`` (chef-config expands them there), and
a ``client_key`` starting with ``-----BEGIN`` is the key itself (kept in memory only); in the
pushy TOML, relative to that file's directory. ``~`` is expanded everywhere.

The pushy TOML form (``~/.pushy/config.toml`` or ``-c FILE.toml``)::

    server_url = "https://push.example:10003/organizations/acme"  # or chef_server_url
    user = "alice"                                                # or node_name
    key = "~/.pushy/alice.pem"                                    # or client_key
    org = "acme"                                                  # optional

    [profiles.prod]                                               # same keys, over the top ones
    server_url = "https://prod.example:10003/organizations/acme"

When no key is configured anywhere but a config file or credentials profile was found, knife's
default keys are tried: ``USER.pem`` then ``user.pem`` next to the config file, then in
``~/.chef``. Without any configuration the local appliance's superuser key is used.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.knife.rubyconf import RubyConfigError, read_knife_config
from appliance.knife.session import Api, CliError, Credentials
from appliance.tlstrust import VERIFY_MODES, TlsOptions

DEFAULT_URL = "http://127.0.0.1:10003"
DEFAULT_USER = "pivotal"
DEFAULT_KEY = "/var/lib/pushy/pivotal.pem"
MAX_FILE_BYTES = 1024 * 1024
_PEM_START = "-----BEGIN"

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_URL",
    "DEFAULT_USER",
    "connect",
    "find_knife_config",
    "read_knife_config",
    "resolve",
    "select_profile",
    "split_server_url",
]


def split_server_url(url: str) -> tuple[str, str | None]:
    """``https://h/organizations/acme`` → (``https://h``, ``acme``)."""
    parts = urlsplit(url.rstrip("/"))
    base = f"{parts.scheme}://{parts.netloc}"
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) >= 2 and segments[-2] == "organizations":
        return base + "/".join([""] + segments[:-2]), segments[-1]
    return base + parts.path, None


# ---------------------------------------------------------------------------------------
# Layers


@dataclass
class _Layer:
    """What one source says; ``None`` is "not said here"."""

    name: str
    url: str | None = None
    org: str | None = None
    user: str | None = None
    key: str | None = None  # an absolute or cwd-relative path
    key_pem: str | None = None
    key_dirs: list[Path] = field(default_factory=list)  # where knife looks for default keys
    path: Path | None = None  # the file (an inline key's "path" in messages)
    tls: dict[str, Any] = field(default_factory=dict)  # TlsOptions fields this source sets


def _tilde(path: Path | str, home: Path) -> str:
    """A path as shown in messages: the home directory written ``~``."""
    text, root = str(path), str(home).rstrip("/")
    if root and (text == root or text.startswith(root + "/")):
        return "~" + text[len(root) :]
    return text


def _expand(path: str, home: Path, base: Path) -> str:
    """``~`` and ``~/x`` against ``home``; a relative path against ``base``."""
    if path == "~" or path.startswith("~/"):
        path = str(home) + path[1:]
    elif path.startswith("~"):
        path = os.path.expanduser(path)
    return path if os.path.isabs(path) else str(base / path)


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    if not re.match(r"https?://[^/\s]", url):
        raise CliError(f"{where}: {url!r} is not a server URL (it must start with http(s)://)")
    return url


def _read(path: Path, shown: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {shown}: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise CliError(f"{shown}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CliError(f"{shown}: not UTF-8 text (byte {exc.start})") from None


def _toml(path: Path, shown: str) -> dict[str, Any]:
    try:
        return tomllib.loads(_read(path, shown))
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{shown}: not valid TOML: {exc}") from None


# ---------------------------------------------------------------------------------------
# Finding files


def select_profile(flag: str | None, env: Mapping[str, str], home: Path) -> tuple[str, str | None]:
    """(profile name, what chose it or None for the fallback ``default``)."""
    if flag:
        return flag, "--profile"
    for name in ("PUSHY_PROFILE", "CHEF_PROFILE"):
        if env.get(name):
            return env[name], name
    context = home / ".chef" / "context"
    if context.is_file():
        text = _read(context, _tilde(context, home)).strip()
        if text:
            return text, _tilde(context, home)
    return "default", None


def find_knife_config(env: Mapping[str, str], cwd: Path, home: Path) -> Path | None:
    """knife's config search (chef-config ``locate_local_config``): the first existing file."""
    candidates: list[Path] = []
    dirs: list[Path] = []
    if env.get("KNIFE_HOME"):
        dirs.append(Path(env["KNIFE_HOME"]))
    dirs.append(cwd)
    for parent in (cwd, *cwd.parents):  # the nearest .chef directory, even without a config
        if (parent / ".chef").is_dir():
            dirs.append(parent / ".chef")
            break
    dirs.append(home / ".chef")
    for directory in dirs:
        candidates += [directory / "config.rb", directory / "knife.rb"]
    return next((c for c in candidates if c.is_file()), None)


def _credentials_path(env: Mapping[str, str], home: Path) -> Path:
    explicit = env.get("CHEF_CREDENTIALS_FILE")
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    return home / ".chef" / "credentials"


# ---------------------------------------------------------------------------------------
# Chef's SSL settings (any config source may set them)

#: Chef setting → `TlsOptions` field
SSL_KEYS = {
    "ssl_verify_mode": "verify_mode",
    "verify_api_cert": "verify_api_cert",
    "trusted_certs_dir": "trusted_certs_dir",
    "ssl_ca_file": "ca_file",
    "ssl_ca_path": "ca_path",
}


def _ssl_value(layer: _Layer, key: str, value: Any, where: str, home: Path, base: Path) -> None:
    """One SSL setting into ``layer.tls``, checked: ``:verify_peer``/``:verify_none`` (a
    string in TOML), a boolean, or a path (``~`` and relative paths expanded)."""
    if value is None:
        return
    if key == "ssl_verify_mode":
        mode = value.lstrip(":") if isinstance(value, str) else None
        if mode not in VERIFY_MODES:
            raise CliError(f"{where}: ssl_verify_mode must be :verify_peer or :verify_none")
        layer.tls["verify_mode"] = mode
    elif key == "verify_api_cert":
        if not isinstance(value, bool):
            raise CliError(f"{where}: verify_api_cert must be true or false")
        layer.tls["verify_api_cert"] = value
    else:
        if not isinstance(value, str) or not value.strip():
            raise CliError(f"{where}: {key} must be a non-empty string (a path)")
        layer.tls[SSL_KEYS[key]] = _expand(value.strip(), home, base)


def tls_options(layers: list[_Layer], default_dir: Path) -> TlsOptions:
    """Each SSL setting from the first layer that sets it; ``trusted_certs_dir`` defaults to
    ``default_dir`` (chef-config: ``trusted_certs`` next to the config file)."""
    values: dict[str, Any] = {"trusted_certs_dir": str(default_dir)}
    for layer in reversed(layers):
        values.update(layer.tls)
    return TlsOptions(**values)


# ---------------------------------------------------------------------------------------
# ~/.chef/credentials and the pushy TOML form


def _string_value(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CliError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _credentials_layer(data: Mapping[str, Any], profile: str, path: Path, home: Path) -> _Layer:
    shown = _tilde(path, home)
    table = data[profile]
    where = f"{shown} [{profile}]"
    if not isinstance(table, dict):
        raise CliError(f"{shown}: {profile} is not a [table]")
    if "node_name" in table and "client_name" in table:
        raise CliError(f"{where}: give node_name or client_name, not both")
    layer = _Layer(where, key_dirs=[home / ".chef"], path=path)
    url = _string_value(table, "chef_server_url", where)
    if url is not None:
        layer.url = _check_url(url, where)
    layer.user = _string_value(table, "client_name", where) or _string_value(
        table, "node_name", where
    )
    key = _string_value(table, "client_key", where)
    if key is not None and key.startswith(_PEM_START):
        layer.key_pem = key
    elif key is not None:
        layer.key = _expand(key, home, home / ".chef")
    for name in SSL_KEYS:
        _ssl_value(layer, name, table.get(name), where, home, home / ".chef")
    return layer


_TOML_KEYS = {
    "server_url": "url",
    "chef_server_url": "url",
    "user": "user",
    "node_name": "user",
    "client_name": "user",
    "key": "key",
    "client_key": "key",
    "org": "org",
}


def _toml_values(
    table: Mapping[str, Any], where: str, layer: _Layer, home: Path, base: Path
) -> None:
    seen: dict[str, str] = {}
    for key in table:
        if key == "profiles":
            continue
        if key in SSL_KEYS:
            _ssl_value(layer, key, table[key], where, home, base)
            continue
        target = _TOML_KEYS.get(key)
        if target is None:
            known = ", ".join(sorted([*_TOML_KEYS, *SSL_KEYS]))
            raise CliError(f"{where}: unknown setting {key!r} (known: {known}, [profiles.NAME])")
        if target in seen:
            raise CliError(f"{where}: both {seen[target]} and {key} are set; keep one")
        seen[target] = key
        text = _string_value(table, key, where)
        if target == "url":
            layer.url = _check_url(text or "", where)
        elif target == "user":
            layer.user = text
        elif target == "org":
            layer.org = text
        elif text is not None and text.startswith(_PEM_START):
            layer.key, layer.key_pem = None, text
        elif text is not None:
            layer.key, layer.key_pem = _expand(text, home, base), None


def _toml_layer(path: Path, profile: str, home: Path, cwd: Path) -> tuple[_Layer, list[str]]:
    """The pushy TOML file's values (with ``[profiles.PROFILE]`` on top) and its profiles."""
    shown = _tilde(path, home)
    data = _toml(path, shown)
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise CliError(f"{shown}: profiles must be tables: [profiles.NAME]")
    absolute = path if path.is_absolute() else cwd / path
    layer = _Layer(shown, key_dirs=[absolute.parent], path=absolute)
    _toml_values(data, shown, layer, home, absolute.parent)
    if profile in profiles:
        layer.name = f"{shown} [{profile}]"
        _toml_values(profiles[profile], layer.name, layer, home, absolute.parent)
    return layer, sorted(profiles)


def _url_org(layer: _Layer) -> None:
    """Fold a layer's ``org`` into its URL, so that the URL stays one value."""
    if layer.url is not None and layer.org is not None:
        base, _ = split_server_url(layer.url)
        layer.url = f"{base}/organizations/{layer.org}"


def _knife_layer(path: Path, env: Mapping[str, str], cwd: Path, home: Path) -> _Layer:
    shown = _tilde(path, home)
    absolute = path if path.is_absolute() else cwd / path
    try:
        values = read_knife_config(
            _read(absolute, shown), str(path), shown=shown, env=env, cwd=cwd, home=home
        )
    except RubyConfigError as exc:
        raise CliError(exc.message) from None
    layer = _Layer(shown, path=absolute, key_dirs=[absolute.parent, home / ".chef"])
    for name, (value, line) in values.items():
        where = f"{shown}:{line}"
        if name in SSL_KEYS:
            _ssl_value(layer, name, value, where, home, cwd)
            continue
        if not isinstance(value, str):
            raise CliError(f"{where}: {name} must be a string")
        if name == "chef_server_url":
            layer.url = _check_url(value, where)
        elif name == "node_name":
            layer.user = value
        elif name == "client_key":
            layer.key = _expand(value, home, cwd)
    return layer


# ---------------------------------------------------------------------------------------
# Putting it together


def _config_layer(
    args: argparse.Namespace, env: Mapping[str, str], cwd: Path, home: Path, profile: str
) -> tuple[_Layer | None, list[str]]:
    explicit = getattr(args, "config", None)
    if explicit:
        path = Path(_expand(str(explicit), home, cwd))
        if not path.is_file():
            raise CliError(f"the config file {explicit} (-c) does not exist")
        if path.suffix.lower() == ".toml":
            return _toml_layer(path, profile, home, cwd)
        return _knife_layer(path, env, cwd, home), []
    found = find_knife_config(env, cwd, home)
    if found is not None:
        return _knife_layer(found, env, cwd, home), []
    pushy = home / ".pushy" / "config.toml"
    if pushy.is_file():
        return _toml_layer(pushy, profile, home, cwd)
    return None, []


def resolve(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
) -> Credentials:
    """The server, organization, user and key for this command (see the module docstring)."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    if home is None:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    profile, chooser = select_profile(getattr(args, "profile", None), env, home)

    config, toml_profiles = _config_layer(args, env, cwd, home, profile)
    credentials: _Layer | None = None
    creds_path = _credentials_path(env, home)
    creds_profiles: list[str] = []
    if creds_path.is_file():
        shown = _tilde(creds_path, home)
        data = _toml(creds_path, shown)
        creds_profiles = sorted(k for k, v in data.items() if isinstance(v, dict))
        if profile in data:
            credentials = _credentials_layer(data, profile, creds_path, home)
    # knife ignores a profile when there is no credentials file; pushy's own choosers do not
    insists = (
        creds_path.is_file() or chooser in ("--profile", "PUSHY_PROFILE") or bool(toml_profiles)
    )
    if profile != "default" and credentials is None and profile not in toml_profiles and insists:
        places = [f"{_tilde(creds_path, home)} ({', '.join(creds_profiles) or 'no profiles'})"]
        if config is not None and toml_profiles:
            places.append(f"{config.name} ({', '.join(toml_profiles)})")
        if not creds_path.is_file():
            places[0] = f"{_tilde(creds_path, home)} (no such file)"
        raise CliError(f"profile {profile!r} (from {chooser}) not found in " + "; ".join(places))

    flags = _Layer(
        "flags",
        url=getattr(args, "server_url", None),
        org=getattr(args, "org", None),
        user=getattr(args, "user", None),
        key=getattr(args, "key", None),
    )
    environment = _Layer(
        "environment",
        url=env.get("PUSHY_SERVER_URL") or None,
        org=env.get("PUSHY_ORG") or None,
        user=env.get("PUSHY_USER") or None,
        key=env.get("PUSHY_KEY") or None,
    )
    for layer in (flags, environment):
        if layer.url is not None:
            layer.url = _check_url(
                layer.url, "--server-url" if layer is flags else "PUSHY_SERVER_URL"
            )
        if layer.key is not None:
            layer.key = _expand(layer.key, home, cwd)
    if config is not None:
        _url_org(config)
    layers = [layer for layer in (flags, environment, config, credentials) if layer is not None]

    def first(attr: str) -> tuple[Any, _Layer | None]:
        for layer in layers:
            if getattr(layer, attr) is not None:
                return getattr(layer, attr), layer
        return None, None

    url, url_from = first("url")
    base, url_org = split_server_url(url or DEFAULT_URL)
    org = flags.org or environment.org or url_org or (config.org if config else None)
    user, user_from = first("user")
    user = user or DEFAULT_USER
    key_from = next((la for la in layers if la.key is not None or la.key_pem is not None), None)
    key_pem = key_from.key_pem if key_from is not None else None
    key: str | None = key_from.key if key_from is not None else None
    if key_from is not None and key_pem is not None:
        key = str(key_from.path)
    elif key is None:
        key, key_from = _default_key(user, [la for la in (config, credentials) if la])
    sources = []
    for layer in (url_from, user_from, key_from):
        name = _source_name(layer)
        if name not in sources:
            sources.append(name)
    # chef-config: trusted_certs_dir is ``trusted_certs`` in the config file's directory,
    # else in ~/.chef (the pushy TOML is not Chef's: ~/.chef, shared with knife)
    knife_rb = config is not None and config.path is not None and config.path.suffix != ".toml"
    certs_home = config.path.parent if knife_rb and config.path else home / ".chef"
    tls = tls_options([la for la in (config, credentials) if la], certs_home / "trusted_certs")
    return Credentials(base, org, user, Path(key), ", ".join(sources), key_pem, tls)


def _source_name(layer: _Layer | None) -> str:
    if layer is None:
        return "defaults"
    return {"flags": "command-line flags", "environment": "PUSHY_* environment"}.get(
        layer.name, layer.name
    )


def _default_key(user: str, found: list[_Layer]) -> tuple[str, _Layer | None]:
    """knife's ``find_default_key`` when some configuration was found; else the appliance's."""
    dirs: list[Path] = []
    for layer in found:
        dirs += [d for d in layer.key_dirs if d not in dirs]
    for name in (f"{user}.pem", "user.pem"):
        for directory in dirs:
            if (directory / name).is_file():
                return str(directory / name), found[0]
    if user == DEFAULT_USER:
        return DEFAULT_KEY, None
    if not found:
        raise CliError(f"no key for {user!r}: give --key or PUSHY_KEY")
    where = ", ".join(layer.name for layer in found)
    raise CliError(
        f"no key for {user!r}: set client_key in {where}, or give --key / PUSHY_KEY "
        f"(looked for {user}.pem and user.pem in {', '.join(str(d) for d in dirs)})"
    )


def connect(args: argparse.Namespace) -> Api:
    """A signed connection for a command, with the credentials its flags and files give."""
    return Api(resolve(args))
