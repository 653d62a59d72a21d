"""Server settings: the TOML file's keys, checked here so a typo stops the server at start
with a message naming the key, instead of surfacing as a strange runtime fault.

The file is flat (no tables) and uses the original's names (server-protocol.md §8,
docs-spec.md §9.2). Units follow the original: milliseconds for ``heartbeat_interval`` and
``rehab_timer``, seconds for every other time; fractions are allowed. Defaults follow the
2.1 documentation (DESIGN.md "Defaults"), so ``heartbeat_interval`` is 1000 ms, not the
omnibus 10000.

Decisions:
- ``api_listen_address`` defaults to ``0.0.0.0``, as the original binds (tests pass
  ``127.0.0.1``).
- Port 0 means "pick a free port" (tests); two equal non-zero ports are an error.
- Keys of the original that mean nothing here (its database, Chef server, log directory,
  metrics, ZeroMQ thread count) are accepted with a warning, so an operator sees they
  have no effect; any other unknown key is an error (``unknown setting 'X'``). Debug
  switches that would weaken checks (``skip_header_validation``,
  ``ignore_signature_check``) are not accepted at all.
- A bool is never accepted where a number is wanted (TOML ``true`` is not ``1``), nor an
  integral float where an integer is wanted; ``nan``/``inf`` are never accepted.
- On SIGHUP (``systemctl reload``) the server re-reads the file and takes the `LIVE_KEYS`:
  ``log_level``, ``voting_timeout``, ``default_running_timeout``, ``wait_complete_time``,
  ``keep_alive_time``, ``org_feed_expiration``, ``max_time_skew``, ``config_lifetime``,
  ``session_key_grace``, ``validate_client_node_name``, ``job_retention_days``,
  ``rehab_timer``, ``server_name``, ``metrics_allow`` and ``dashboard_session_lifetime``; each is read where it is used, so it applies to the
  next job, request, message or timer (a new ``server_name``, checked again at every reload,
  goes into the configs fetched and the job commits sent after it; nodes already connected
  keep their connection until they fetch a config again). Every other key (ports, addresses,
  ``state_dir``, CURVE, the heartbeat and liveness parameters nodes were already told, body
  and segment sizes) keeps its running value and is reported as needing a restart
  (`reload_settings`).
- ``api_tls_cert`` / ``api_tls_key`` (absolute paths; both or neither, and the files a
  matching PEM pair: the server's start checks them, ``appliance.server.tls``) serve the API
  over HTTPS. While HTTPS is on, a reload reads both files again (new paths too), so a renewed
  certificate takes effect without a restart; turning HTTPS on or off needs one.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from appliance.core.netallow import parse_networks

__all__ = [
    "IGNORED_KEYS",
    "LIVE_KEYS",
    "Settings",
    "SettingsError",
    "load_settings",
    "reload_settings",
]

#: Original keys accepted but without effect in the appliance (a warning is returned).
IGNORED_KEYS = frozenset(
    {
        "zmq_io_processes",
        "erchef_root_url",
        "chef_api_version",
        "log_dir",
        "db_pool_size",
        "enable_graphite",
    }
)

# "*", an interface or host name, an IPv4 address, or a bracketed IPv6 address.
_ZMQ_ADDRESS = re.compile(r"tcp://(\*|[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_MAX_COUNT = 2**31 - 1
EDGE_SPARE_FDS = 1024  # an edge's descriptors besides its nodes' (and room to grow)  # same ceiling as a job's run_timeout


class SettingsError(ValueError):
    """A bad setting. ``key`` names it; ``message`` (also ``str(err)``) names it too."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Settings:
    """Every knob of ``pushy server``. Build it with `load_settings`."""

    api_port: int = 10003
    command_port: int = 10002
    server_heartbeat_port: int = 10000
    zeromq_listen_address: str = "tcp://*"
    api_listen_address: str = "0.0.0.0"
    server_name: str | None = None  # None: the caller uses the machine's FQDN
    state_dir: str = "/var/lib/pushy"
    heartbeat_interval: float = 1000.0  # ms
    decay_window: int = 4
    down_threshold: float = 0.6
    detect_offline_nodes_interval: int = 4  # in heartbeat intervals
    rehab_timer: float = 1000.0  # ms
    max_time_skew: float = 300.0
    config_lifetime: float = 3600.0
    voting_timeout: float = 60.0
    default_running_timeout: int = 3600
    wait_complete_time: float = 5.0
    keep_alive_time: float = 15.0
    org_feed_expiration: float = 60.0
    max_body_size: int = 65536
    # live output (our client): what is kept of each node's stdout and of its stderr, per job
    max_output_bytes: int = 10 * 1024 * 1024
    validate_client_node_name: bool = True
    disable_curve_encryption: bool = False
    job_retention_days: float = 90.0  # 0 keeps every finished job
    log_segment_max_bytes: int = 64 * 1024 * 1024
    session_key_grace: float = 60.0
    log_level: str = "info"
    # "text" or "json" (one object per line); at restart: the edges take it when they start
    log_format: str = "text"
    # node edges (docs/architecture.md "Edges"): "auto" is one per core, at least 2; 0 keeps
    # the node sockets in the server process
    edge_processes: int | str = "auto"
    edge_link_address: str = "tcp://127.0.0.1"  # "tcp://*" lets edges on other hosts in
    edge_link_port: int = 0  # 0: a free port (enough for local edges); remote ones need one
    # the event log: "file" (under state_dir) or a PostgreSQL URL shared by an active/standby
    # set of servers (docs/operations.md "High availability")
    store: str = "file"
    store_password_file: str | None = None  # the database password, alone in the file
    lease_timeout: float = 10.0  # seconds a silent active keeps the lease (PostgreSQL store)
    # HTTPS on the API port (both or neither; docs/operations.md "HTTPS")
    api_tls_cert: str | None = None
    api_tls_key: str | None = None
    # who may read GET /metrics (no Chef signing: Prometheus cannot sign); empty: no /metrics
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # the web dashboard: how long a session (its cookie) lasts after the log-in link is used
    dashboard_session_lifetime: float = 43200.0

    @property
    def store_url(self) -> str | None:
        """The PostgreSQL URL of the event log, or None for the file log."""
        return None if self.store == "file" else self.store

    def edge_count(self, cores: int | None, known_nodes: int = 0, fd_limit: int = 0) -> int:
        """How many local edge processes to run. ``auto``: one per core (at least 2, at most
        8), and enough that the nodes known so far fit in each edge's descriptor limit (2 per
        node, plus room for everything else), up to 64."""
        if self.edge_processes != "auto":
            return int(self.edge_processes)
        count = max(2, min(cores or 1, 8))
        if known_nodes and fd_limit > EDGE_SPARE_FDS:
            count = max(count, -(-2 * known_nodes // (fd_limit - EDGE_SPARE_FDS)))
        return min(count, 64)

    @property
    def heartbeat_seconds(self) -> float:
        """The beat period (and liveness interval I) in seconds; the config's ``interval``."""
        return self.heartbeat_interval / 1000.0

    @property
    def rehab_seconds(self) -> float:
        """The abort re-send period in rehab, in seconds."""
        return self.rehab_timer / 1000.0

    @property
    def offline_scan_seconds(self) -> float:
        """How often the liveness scanner runs, in seconds."""
        return self.heartbeat_seconds * self.detect_offline_nodes_interval

    @property
    def job_retention_seconds(self) -> float | None:
        """How long finished jobs are kept, or None to keep them forever."""
        return self.job_retention_days * 86400.0 if self.job_retention_days > 0 else None


# ---- checkers: each takes (key, value) and returns the normalised value or raises ----


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(key: str, what: str, value: Any) -> SettingsError:
    return SettingsError(key, f"setting {key!r} must be {what} (got {_show(value)})")


def _int(lo: int, hi: int) -> Callable[[str, Any], int]:
    what = f"an integer from {lo} to {hi}"

    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _fail(key, what, value)
        return value

    return check


def _number(what: str, ok: Callable[[float], bool]) -> Callable[[str, Any], float]:
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(key, what, value)
        try:
            number = float(value)  # an int beyond float range overflows here
        except OverflowError:
            raise _fail(key, what, value) from None
        if not math.isfinite(number) or not ok(number):
            raise _fail(key, what, value)
        return number

    return check


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, "true or false", value)
    return value


def _word(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise _fail(key, "a non-empty string without spaces", value)
    return value


def _zmq_address(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ZMQ_ADDRESS.fullmatch(value):
        raise _fail(key, "'tcp://HOST' without a port, e.g. 'tcp://*'", value)
    return value


def bind_host(zmq_address: str) -> str:
    """The host a ``tcp://HOST`` address binds (``*`` is every IPv4 address). With edges the
    server binds the sockets itself and hands them to libzmq, so HOST must be an IP address."""
    host = zmq_address.removeprefix("tcp://").rstrip("/")
    if host == "*":
        return "0.0.0.0"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"with edges (edge_processes is not 0) the server binds its ZeroMQ sockets itself: "
            f"{zmq_address!r} must be 'tcp://*' or tcp:// and an IP address, e.g. "
            f"'tcp://192.0.2.10' (or set edge_processes = 0)"
        ) from None
    return host


def _abs_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise _fail(key, "an absolute path", value)
    return value


def _edge_processes(key: str, value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 64:
        raise _fail(key, '"auto" or an integer from 0 to 64', value)
    return value


def _store(key: str, value: Any) -> str:
    if isinstance(value, str) and (
        value == "file" or value.startswith(("postgresql://", "postgres://"))
    ):
        if any(c.isspace() for c in value):
            raise _fail(key, '"file" or a postgresql:// URL without spaces', value)
        return value
    raise _fail(key, '"file" or a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)', value)


def _networks(key: str, value: Any) -> tuple[str, ...]:
    what = 'an array of CIDR networks, e.g. ["127.0.0.0/8", "::1/128"]'
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, what, value)
    try:
        return tuple(str(network) for network in parse_networks(value))
    except ValueError as exc:
        raise SettingsError(key, f"setting {key!r} must be {what}: {exc}") from None


def _log_level(key: str, value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
        raise _fail(key, "one of " + ", ".join(_LOG_LEVELS), value)
    return value.lower()


def _log_format(key: str, value: Any) -> str:
    if value not in ("text", "json"):
        raise _fail(key, '"text" or "json"', value)
    return value


_port = _int(0, 65535)
_positive = _number("a number > 0", lambda v: v > 0)
_non_negative = _number("a number >= 0", lambda v: v >= 0)

_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "api_port": _port,
    "command_port": _port,
    "server_heartbeat_port": _port,
    "zeromq_listen_address": _zmq_address,
    "api_listen_address": _word,
    "server_name": _word,
    "state_dir": _abs_path,
    "heartbeat_interval": _positive,
    "decay_window": _int(1, 1_000_000),
    "down_threshold": _number("a number between 0 and 2 (exclusive)", lambda v: 0 < v < 2),
    "detect_offline_nodes_interval": _int(1, 1_000_000),
    "rehab_timer": _positive,
    "max_time_skew": _positive,
    "config_lifetime": _positive,
    "voting_timeout": _positive,
    "default_running_timeout": _int(1, _MAX_COUNT),
    "wait_complete_time": _non_negative,
    "keep_alive_time": _positive,
    "org_feed_expiration": _positive,
    "max_body_size": _int(1024, 64 * 1024 * 1024),
    "max_output_bytes": _int(0, 2**40),
    "validate_client_node_name": _bool,
    "disable_curve_encryption": _bool,
    "job_retention_days": _non_negative,
    "log_segment_max_bytes": _int(4096, 2**40),
    "session_key_grace": _non_negative,
    "log_level": _log_level,
    "log_format": _log_format,
    "edge_processes": _edge_processes,
    "edge_link_address": _zmq_address,
    "edge_link_port": _port,
    "store": _store,
    "store_password_file": _abs_path,
    "lease_timeout": _number("a number from 1 to 3600", lambda v: 1 <= v <= 3600),
    "api_tls_cert": _abs_path,
    "api_tls_key": _abs_path,
    "metrics_allow": _networks,
    "dashboard_session_lifetime": _number(
        "a number from 60 to 2592000 (30 days)", lambda v: 60 <= v <= 2_592_000
    ),
}
_PORT_KEYS = ("server_heartbeat_port", "command_port", "api_port", "edge_link_port")


def load_settings(
    data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, list[str]]:
    """Check the parsed TOML ``data`` and the command line ``overrides`` (which win; a None
    value means "not given") and build the Settings. Returns the settings and a list of
    warnings to log. Raises SettingsError naming the first bad key."""
    if not isinstance(data, Mapping):
        raise SettingsError("", "settings must be a table of key = value pairs")
    warnings: list[str] = []
    values: dict[str, Any] = {}
    merged = [*data.items(), *((k, v) for k, v in (overrides or {}).items() if v is not None)]
    for key, value in merged:
        if key in IGNORED_KEYS:
            warnings.append(f"setting {key!r} has no effect in this server; ignored")
            continue
        check = _CHECKS.get(key)
        if check is None:
            raise SettingsError(key, f"unknown setting {key!r}")
        values[key] = check(key, value)
    settings = Settings(**values)
    seen: dict[int, str] = {}
    for key in _PORT_KEYS:
        port = getattr(settings, key)
        if port and port in seen:
            raise SettingsError(key, f"setting {key!r} uses port {port}, as does {seen[port]!r}")
        seen[port] = key
    if settings.edge_processes != 0:
        for key in ("zeromq_listen_address", "edge_link_address"):
            try:
                bind_host(getattr(settings, key))
            except ValueError as exc:
                raise SettingsError(key, f"setting {key!r}: {exc}") from None
    if settings.disable_curve_encryption:
        warnings.append(
            "setting 'disable_curve_encryption' is true: the command channel is not encrypted"
        )
    if not settings.validate_client_node_name:
        warnings.append(
            "setting 'validate_client_node_name' is false: a client may fetch another node's config"
        )
    return settings, warnings


#: Keys a running server takes from its re-read file on SIGHUP (see the module docstring).
LIVE_KEYS = frozenset(
    {
        "log_level",
        "voting_timeout",
        "default_running_timeout",
        "wait_complete_time",
        "keep_alive_time",
        "org_feed_expiration",
        "max_time_skew",
        "config_lifetime",
        "session_key_grace",
        "validate_client_node_name",
        "job_retention_days",
        "rehab_timer",
        "server_name",
        "metrics_allow",
        "dashboard_session_lifetime",
    }
)
#: Live while HTTPS stays on (the certificate is loaded again), restart-only to turn it on/off.
TLS_KEYS = frozenset({"api_tls_cert", "api_tls_key"})


def reload_settings(running: Settings, loaded: Settings) -> tuple[Settings, list[str], list[str]]:
    """What a reload changes: ``running`` with ``loaded``'s live keys. Returns the settings to
    run with, the live keys that changed, and the keys that differ but need a restart."""
    changed: dict[str, Any] = {}
    restart: list[str] = []
    tls_stays = running.api_tls_cert is not None and loaded.api_tls_cert is not None
    for key in Settings.__dataclass_fields__:
        new = getattr(loaded, key)
        if new == getattr(running, key):
            continue
        if key in LIVE_KEYS or (key in TLS_KEYS and tls_stays):
            changed[key] = new
        else:
            restart.append(key)
    return replace(running, **changed), sorted(changed), restart
