"""Server settings: every key's default, a good value, bad types and bad ranges."""

from __future__ import annotations

import dataclasses
import math
import tomllib

import pytest

from appliance.core.settings import (
    IGNORED_KEYS,
    Settings,
    SettingsError,
    bind_host,
    load_settings,
)

# key: (default, good value, expected stored value, bad types, bad range values)
CASES: dict[str, tuple[object, object, object, list[object], list[object]]] = {
    "api_port": (10003, 8443, 8443, ["10003", 10003.0, True, None], [-1, 65536]),
    "command_port": (10002, 0, 0, ["x", 1.5, False], [-1, 70000]),
    "server_heartbeat_port": (10000, 65535, 65535, [[], {}, True], [-5, 65536]),
    "zeromq_listen_address": (
        "tcp://*",
        "tcp://10.0.0.1",
        "tcp://10.0.0.1",
        [1, True, ["tcp://*"]],
        ["*", "ipc:///tmp/x", "tcp://", "tcp://*:10002", "tcp://a b", "tcp://h/x"],
    ),
    "api_listen_address": ("0.0.0.0", "127.0.0.1", "127.0.0.1", [0, None, True], ["", "a b"]),
    "server_name": (None, "push.example.com", "push.example.com", [1, False], ["", "a b"]),
    "state_dir": ("/var/lib/pushy", "/srv/pushy", "/srv/pushy", [1, True], ["", "rel/dir"]),
    "heartbeat_interval": (1000.0, 250, 250.0, ["1000", True], [0, -1, math.inf, math.nan]),
    "decay_window": (4, 8, 8, ["4", 4.0, True], [0, -1]),
    "down_threshold": (0.6, 0.25, 0.25, ["0.6", False], [0, 2, -0.1, 2.5, math.nan]),
    "detect_offline_nodes_interval": (4, 1, 1, [4.5, "4", True], [0]),
    "rehab_timer": (1000.0, 1500.5, 1500.5, ["1s", True], [0, -100, math.inf]),
    "max_time_skew": (300.0, 60, 60.0, ["300", None], [0, -1]),
    "config_lifetime": (3600.0, 0.5, 0.5, [True], [0, -math.inf]),
    "voting_timeout": (60.0, 120, 120.0, ["60"], [0, -1]),
    "default_running_timeout": (3600, 60, 60, [3600.0, "3600", True], [0, -1, 2**31]),
    "wait_complete_time": (5.0, 0, 0.0, ["5", True], [-0.5, math.inf]),
    "keep_alive_time": (15.0, 1.5, 1.5, ["15", False], [0, -15]),
    "org_feed_expiration": (60.0, 600, 600.0, ["60", True], [0, -1]),
    "max_body_size": (65536, 1048576, 1048576, [65536.0, "65536", True], [0, 1023, 2**27]),
    "max_output_bytes": (10485760, 0, 0, [1.0, "1000", True], [-1, 2**41]),
    "validate_client_node_name": (True, False, False, [1, 0, "true", None], []),
    "disable_curve_encryption": (False, True, True, ["false", 0], []),
    "job_retention_days": (90.0, 0, 0.0, ["90", True], [-1, math.inf]),
    "log_segment_max_bytes": (64 * 1024 * 1024, 4096, 4096, [4096.0, "1M", True], [4095, 0]),
    "session_key_grace": (60.0, 0, 0.0, ["60", True], [-1, math.nan]),
    "log_level": ("info", "DEBUG", "debug", [1, True, None], ["verbose", "", "warn"]),
    "log_format": ("text", "json", "json", [1, True, None, ["json"]], ["JSON", "", "logfmt"]),
    "edge_processes": ("auto", 3, 3, ["3", True, 1.0, "Auto"], [-1, 65]),
    "edge_link_address": ("tcp://127.0.0.1", "tcp://*", "tcp://*", [1, "*"], ["127.0.0.1"]),
    "edge_link_port": (0, 10005, 10005, ["10005", True], [-1, 65536]),
    "store": (
        "file",
        "postgresql://pushy@db.example.com:5432/pushy",
        "postgresql://pushy@db.example.com:5432/pushy",
        [1, True, None],
        ["", "mysql://db/pushy", "File", "postgresql://a b"],
    ),
    "store_password_file": (None, "/etc/pushy/db.pw", "/etc/pushy/db.pw", [1, True], ["db.pw"]),
    "lease_timeout": (10.0, 3, 3.0, ["10", True], [0, 0.5, 3601, math.nan]),
    "api_tls_cert": (None, "/etc/pushy/tls/a.crt", "/etc/pushy/tls/a.crt", [1, True], ["a.crt"]),
    "api_tls_key": (None, "/etc/pushy/tls/a.key", "/etc/pushy/tls/a.key", [[], False], ["a.key"]),
    "metrics_allow": (
        ("127.0.0.0/8", "::1/128"),
        ["10.0.0.0/8", "192.0.2.7", " fd00::/8 "],
        ("10.0.0.0/8", "192.0.2.7/32", "fd00::/8"),
        ["127.0.0.0/8", [1], "", True, {}],
        [["10.0.0.1/8"], ["localhost"], ["10.0.0.0/33"], [""]],
    ),
    "dashboard_session_lifetime": (43200.0, 3600, 3600.0, ["12h", True], [59, 2_592_001]),
}


def test_cases_cover_every_setting() -> None:
    assert set(CASES) == {f.name for f in dataclasses.fields(Settings)}


def test_empty_file_gives_the_documented_defaults() -> None:
    settings, warnings = load_settings({}, {})
    assert settings == Settings()
    assert warnings == []
    for key, (default, *_rest) in CASES.items():
        value = getattr(settings, key)
        assert value == default and type(value) is type(default), key


@pytest.mark.parametrize("key", list(CASES))
def test_good_value(key: str) -> None:
    _default, good, stored, _types, _ranges = CASES[key]
    settings, _warnings = load_settings({key: good}, {})
    value = getattr(settings, key)
    assert value == stored and type(value) is type(stored)


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k, case in CASES.items() for v in case[3]],
)
def test_bad_type_names_the_key(key: str, value: object) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({key: value}, {})
    assert info.value.key == key
    assert f"'{key}'" in str(info.value) and str(info.value) == info.value.message


@pytest.mark.parametrize(
    ("key", "value"),
    [(k, v) for k, case in CASES.items() for v in case[4]],
)
def test_bad_range_names_the_key(key: str, value: object) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({key: value}, {})
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_error_message_shows_what_was_expected_and_got() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"api_port": True}, {})
    assert str(info.value) == "setting 'api_port' must be an integer from 0 to 65535 (got true)"
    with pytest.raises(SettingsError) as info:
        load_settings({"down_threshold": {"a": 1}}, {})
    assert str(info.value).endswith("(got a table)")


@pytest.mark.parametrize(
    "key", ["heartbeat", "api-port", "pushy_common.max_time_skew", "skip_header_validation", ""]
)
def test_unknown_key(key: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({key: 1}, {})
    assert info.value.key == key
    assert str(info.value) == f"unknown setting {key!r}"


def test_unknown_key_in_overrides() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'nope'"):
        load_settings({}, {"nope": 1})


@pytest.mark.parametrize("key", sorted(IGNORED_KEYS))
def test_original_only_keys_are_ignored_with_a_warning(key: str) -> None:
    settings, warnings = load_settings({key: "anything"}, {})
    assert settings == Settings()
    assert len(warnings) == 1 and f"'{key}'" in warnings[0]


def test_overrides_win_and_none_means_not_given() -> None:
    settings, _ = load_settings(
        {"api_port": 9000, "command_port": 9002, "log_level": "debug"},
        {"api_port": 0, "command_port": None, "api_listen_address": "127.0.0.1"},
    )
    assert settings.api_port == 0
    assert settings.command_port == 9002
    assert settings.api_listen_address == "127.0.0.1"
    assert settings.log_level == "debug"


def test_overrides_are_validated() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({}, {"api_port": "x"})
    assert info.value.key == "api_port"


def test_overrides_may_be_omitted() -> None:
    assert load_settings({"decay_window": 2})[0].decay_window == 2


def test_equal_ports_are_refused_but_zero_may_repeat() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({"command_port": 10000}, {})
    assert info.value.key == "command_port"
    assert "'server_heartbeat_port'" in str(info.value)
    with pytest.raises(SettingsError) as info:
        load_settings({"api_port": 7000, "command_port": 7000}, {})
    assert info.value.key == "api_port"
    settings, _ = load_settings({"api_port": 0, "command_port": 0, "server_heartbeat_port": 0})
    assert (settings.api_port, settings.command_port, settings.server_heartbeat_port) == (0, 0, 0)


def test_security_switches_warn() -> None:
    _, warnings = load_settings({"disable_curve_encryption": True}, {})
    assert any("disable_curve_encryption" in w for w in warnings)
    _, warnings = load_settings({"validate_client_node_name": False}, {})
    assert any("validate_client_node_name" in w for w in warnings)


def test_huge_override_number_is_a_clean_error() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({}, {"keep_alive_time": 10**400})
    assert info.value.key == "keep_alive_time"
    with pytest.raises(SettingsError):
        load_settings({}, {"api_port": 10**400})


def test_not_a_table() -> None:
    with pytest.raises(SettingsError):
        load_settings(["api_port"], {})  # type: ignore[arg-type]


def test_zeromq_address_forms() -> None:
    for good in ("tcp://*", "tcp://eth0", "tcp://[::1]", "tcp://host-1.example.com"):
        single = {"zeromq_listen_address": good, "edge_processes": 0}  # libzmq resolves names
        assert load_settings(single)[0].zeromq_listen_address == good
    for bad in ("tcp://[]", "tcp://::1", "tcp://u@h"):
        with pytest.raises(SettingsError):
            load_settings({"zeromq_listen_address": bad})


def test_derived_seconds() -> None:
    settings, _ = load_settings(
        {"heartbeat_interval": 250, "rehab_timer": 1500, "detect_offline_nodes_interval": 4}
    )
    assert settings.heartbeat_seconds == 0.25
    assert settings.rehab_seconds == 1.5
    assert settings.offline_scan_seconds == 1.0
    assert Settings().heartbeat_seconds == 1.0
    assert Settings().job_retention_seconds == 90 * 86400
    assert Settings(job_retention_days=0).job_retention_seconds is None


def test_a_real_toml_file() -> None:
    text = """
        api_port = 0
        api_listen_address = "127.0.0.1"
        zeromq_listen_address = "tcp://127.0.0.1"
        heartbeat_interval = 100
        down_threshold = 0.25
        keep_alive_time = 0.5
        state_dir = "/tmp/pushy-test"
        server_name = "localhost"
        log_level = "warning"
        zmq_io_processes = 1
    """
    settings, warnings = load_settings(tomllib.loads(text), {})
    assert settings.heartbeat_interval == 100.0 and settings.down_threshold == 0.25
    assert settings.server_name == "localhost" and settings.keep_alive_time == 0.5
    assert warnings == ["setting 'zmq_io_processes' has no effect in this server; ignored"]
    with pytest.raises(SettingsError) as info:
        load_settings(tomllib.loads("heartbeat_interval = nan"), {})
    assert info.value.key == "heartbeat_interval"
    with pytest.raises(SettingsError) as info:
        load_settings(tomllib.loads("[pushy]\napi_port = 1"), {})
    assert str(info.value) == "unknown setting 'pushy'"


def test_auto_edges_follow_the_cores_and_the_descriptor_limit() -> None:
    auto, _ = load_settings({}, {})
    assert auto.edge_count(1) == 2 and auto.edge_count(4) == 4 and auto.edge_count(32) == 8
    assert auto.edge_count(None) == 2
    # 20,000 known nodes under a 20,000-descriptor limit: 40,000 descriptors need 3 edges
    assert auto.edge_count(2, 20_000, 20_000) == 3
    assert auto.edge_count(2, 20_000, 65_536) == 2
    assert auto.edge_count(2, 10_000_000, 20_000) == 64
    fixed, _ = load_settings({"edge_processes": 1}, {})
    assert fixed.edge_count(8, 20_000, 20_000) == 1
    assert load_settings({"edge_processes": 0}, {})[0].edge_count(8) == 0


def test_edges_need_ip_addresses_to_bind_and_say_so() -> None:
    """With edges the server binds the node and link sockets itself: a host name is refused
    at load with the setting named (it used to end the start in a traceback)."""
    for key in ("zeromq_listen_address", "edge_link_address"):
        with pytest.raises(SettingsError) as caught:
            load_settings({key: "tcp://localhost"}, {})
        assert caught.value.key == key and "edge_processes = 0" in str(caught.value)
    single, _ = load_settings({"zeromq_listen_address": "tcp://localhost", "edge_processes": 0}, {})
    assert single.zeromq_listen_address == "tcp://localhost"  # libzmq resolves it itself
    for address, host in (
        ("tcp://*", "0.0.0.0"),
        ("tcp://[::1]", "::1"),
        ("tcp://10.0.0.1", "10.0.0.1"),
    ):
        assert (
            load_settings({"zeromq_listen_address": address}, {})[0].zeromq_listen_address
            == address
        )
        assert bind_host(address) == host
