"""The advertised-address verdict (appliance/core/advertise.py): every status, and the rules
that tell them apart (explicit loopback names, the listen address, IPv4-only sockets)."""

from __future__ import annotations

import pytest

from appliance.core.advertise import CONFIG_EXAMPLE, STATUSES, assess


def check(
    name: str = "push.example.com",
    resolved: list[str] | str = ("192.0.2.10",),  # type: ignore[assignment]
    local: tuple[str, ...] = ("192.0.2.10",),
    *,
    explicit: bool = True,
    listen: str = "tcp://*",
    ipv6: bool = False,
):
    return assess(
        name,
        explicit=explicit,
        resolved=resolved if isinstance(resolved, str) else list(resolved),
        local=frozenset(local),
        listen_address=listen,
        ipv6=ipv6,
    )


def fixes(problem: str | None) -> bool:
    return (
        problem is not None
        and "set server_name" in problem
        and CONFIG_EXAMPLE in problem
        and "systemctl reload pushy-server" in problem
        and "\n" not in problem
    )


def test_ok_names_nothing_wrong():
    v = check()
    assert (v.status, v.ok, v.problem, v.short) == ("ok", True, None, None)
    assert v.server_name == "push.example.com" and v.addresses == ("192.0.2.10",)


def test_unresolved_names_the_resolver_error_and_the_fix():
    v = check("nosuchhost.invalid", "Name or service not known", (), explicit=True)
    assert v.status == "unresolved" and not v.ok and v.addresses == ()
    assert "'nosuchhost.invalid'" in v.problem and "Name or service not known" in v.problem
    assert fixes(v.problem)
    assert v.short == "server_name 'nosuchhost.invalid' does not resolve"


def test_unresolved_when_no_address_or_empty_error():
    assert check(resolved=[], local=()).status == "unresolved"
    assert "(no address)" in (check(resolved="", local=()).problem or "")


def test_unresolved_default_name_says_it_is_the_fqdn():
    v = check("box.internal", "timed out", (), explicit=False)
    assert "server_name 'box.internal' (not set: this machine's FQDN)" in (v.problem or "")


def test_not_local_lists_the_addresses():
    v = check(resolved=["198.51.100.7", "198.51.100.8"], local=())
    assert v.status == "not_local" and v.addresses == ("198.51.100.7", "198.51.100.8")
    assert "198.51.100.7, 198.51.100.8" in v.problem and fixes(v.problem)


def test_duplicate_addresses_are_listed_once():
    v = check(resolved=["192.0.2.10", "192.0.2.10"])
    assert v.addresses == ("192.0.2.10",)


@pytest.mark.parametrize("explicit", [True, False])
def test_loopback_only_is_the_debian_hosts_trap(explicit: bool):
    # /etc/hosts: "127.0.1.1 host.example.com host"; local, listening, and still wrong
    v = check("host.example.com", ["127.0.1.1"], ("127.0.1.1",), explicit=explicit)
    assert v.status == "loopback_only"
    assert "127.0.1.1" in v.problem and "connect to themselves" in v.problem
    assert fixes(v.problem)


def test_default_localhost_is_loopback_only_too():
    v = check("localhost", ["127.0.0.1", "::1"], ("127.0.0.1", "::1"), explicit=False)
    assert v.status == "loopback_only"


@pytest.mark.parametrize(
    ("name", "resolved"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("localhost", ["127.0.0.1", "::1"]),
        ("LOCALHOST.", ["127.0.0.1"]),
        ("box.localhost", ["127.0.0.1"]),
        ("::1", ["::1", "127.0.0.1"]),
    ],
)
def test_explicit_loopback_name_is_fine(name: str, resolved: list[str]):
    v = check(name, resolved, tuple(resolved))
    assert v.status == "ok", v.problem


def test_unspecified_address_counts_as_this_host_only():
    v = check("0.0.0.0", ["0.0.0.0"], ("0.0.0.0",))
    assert v.status == "loopback_only" and "loopback or unspecified" in v.problem


def test_a_real_address_beside_loopback_is_not_loopback_only():
    v = check(resolved=["127.0.1.1", "192.0.2.10"], local=("127.0.1.1", "192.0.2.10"))
    assert v.ok


def test_not_listening_on_a_different_specific_address():
    v = check(listen="tcp://127.0.0.1")
    assert v.status == "not_listening"
    assert "tcp://127.0.0.1" in v.problem and "192.0.2.10" in v.problem
    assert fixes(v.problem) and "zeromq_listen_address" in v.problem
    assert v.short == "ZeroMQ does not listen on server_name 'push.example.com'"


@pytest.mark.parametrize(
    "listen",
    ["tcp://*", "tcp://0.0.0.0", "tcp://192.0.2.10", "tcp://192.0.2.10/", "tcp://eth0"],
)
def test_listening_forms_that_cover_an_ipv4_address(listen: str):
    assert check(listen=listen).ok


def test_one_listened_local_address_is_enough():
    v = check(
        resolved=["192.0.2.10", "192.0.2.11"],
        local=("192.0.2.10", "192.0.2.11"),
        listen="tcp://192.0.2.11",
    )
    assert v.ok


def test_explicit_loopback_literal_the_sockets_do_not_listen_on():
    v = check("127.0.0.2", ["127.0.0.2"], ("127.0.0.2",), listen="tcp://127.0.0.1")
    assert v.status == "not_listening"


def test_ipv6_only_name_with_ipv4_only_sockets_is_not_listening():
    v = check(resolved=["2001:db8::10"], local=("2001:db8::10",))
    assert v.status == "not_listening" and "(IPv4 only)" in v.problem


@pytest.mark.parametrize(
    ("listen", "status"),
    [
        ("tcp://*", "ok"),
        ("tcp://[::]", "ok"),
        ("tcp://[2001:db8::10]", "ok"),
        ("tcp://[2001:db8::11]", "not_listening"),
        ("tcp://0.0.0.0", "not_listening"),
    ],
)
def test_ipv6_listen_forms(listen: str, status: str):
    v = check(resolved=["2001:db8::10"], local=("2001:db8::10",), listen=listen, ipv6=True)
    assert v.status == status


def test_dual_stack_wildcard_takes_ipv4():
    assert check(listen="tcp://[::]", ipv6=True).ok


def test_ipv4_mapped_addresses_compare_as_ipv4():
    v = check(
        resolved=["::ffff:192.0.2.10"], local=("::ffff:192.0.2.10",), listen="tcp://192.0.2.10"
    )
    assert v.ok
    assert check("::ffff:127.0.0.1", ["::ffff:127.0.0.1"], ("::ffff:127.0.0.1",)).ok


def test_order_unresolved_before_everything_and_loopback_before_not_local():
    # a loopback answer that is not bindable here is still the loopback trap, not "not local"
    assert check("h.example", ["127.0.1.1"], ()).status == "loopback_only"
    assert check(resolved="SERVFAIL", local=(), listen="tcp://127.0.0.1").status == "unresolved"


def test_every_status_is_reachable():
    seen = {
        check().status,
        check(resolved="x", local=()).status,
        check(resolved=["198.51.100.7"], local=()).status,
        check("h", ["127.0.1.1"], ("127.0.1.1",)).status,
        check(listen="tcp://127.0.0.1").status,
    }
    assert seen == set(STATUSES)
