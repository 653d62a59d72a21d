"""The client's word on a silent command channel: can the node reach the address it was given?

* ``reach`` (pure): parsing ZeroMQ ``tcp://`` addresses, the line for each probe outcome, and
  which lines a silent period produces.
* ``probe.probe_address`` (shell) against real sockets on 127.0.0.1: a listener (reachable), a
  port bound without listening (refused, no race with other processes), a name that does not
  resolve, an IPv6 literal (libzmq connects over IPv4 only with our options).
* ``Agent._watchdog`` on trio's mock clock: nothing extra when a message arrives in time; when
  none does, the address lines come before the original's "Possible encryption problem?".
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import replace

import pytest
import trio

from appliance.client import reach
from appliance.client.agent import WATCHDOG_SECONDS, Agent
from appliance.client.channel import Connection
from appliance.client.probe import probe_address
from appliance.core.keys import generate_rsa
from tests.support import make_agent

HANG_GUARD = 20  # seconds: a probe that hangs fails the test instead of blocking the suite


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://pushy.example.com:10002", ("pushy.example.com", 10002)),
        ("tcp://10.0.0.5:10000", ("10.0.0.5", 10000)),
        ("tcp://[::1]:10002", ("::1", 10002)),
        ("tcp://[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("tcp://192.168.1.2;server:10002", ("server", 10002)),  # a source address first
        ("tcp://eth0:0;server:10002", ("server", 10002)),
        ("tcp://server", None),
        ("tcp://server:", None),
        ("tcp://:10002", None),
        ("tcp://server:*", None),
        ("tcp://server:0", None),
        ("tcp://server:65536", None),
        ("tcp://server:１２", None),  # non-ASCII digits
        ("ipc:///run/pushy.sock", None),
        ("server:10002", None),
        ("", None),
    ],
)
def test_parse_tcp_address(address, expected):
    assert reach.parse_tcp_address(address) == expected


# ---------------------------------------------------------------------------------------------
# The lines


def test_a_host_that_does_not_resolve():
    level, text = reach.describe(
        "command",
        "tcp://vm:10002",
        reach.Unresolved("vm", "[Errno -2] Name or service not known"),
    )
    assert level == logging.ERROR
    assert text == (
        "The server's config gave command address tcp://vm:10002 (command_port): the host 'vm' "
        "does not resolve here ([Errno -2] Name or service not known); check the server's "
        "server_name setting (the name it gives its nodes), or this node's DNS or /etc/hosts"
    )


def test_a_host_with_only_ipv6_addresses():
    level, text = reach.describe(
        "command",
        "tcp://v6only:10002",
        reach.Unresolved("v6only", "[Errno -5] No address", ("2001:db8::5", "2001:db8::6")),
    )
    assert level == logging.ERROR
    assert "the host 'v6only' has only IPv6 addresses here (2001:db8::5, 2001:db8::6)" in text
    assert "connects over IPv4" in text and "server_name" in text
    assert "does not resolve" not in text


def test_connection_refused_at_an_ip():
    level, text = reach.describe(
        "command",
        "tcp://10.0.0.5:10002",
        reach.Unconnected("10.0.0.5", "10.0.0.5", 10002, errno.ECONNREFUSED, "Connection refused"),
    )
    assert level == logging.ERROR
    assert text == (
        "The server's config gave command address tcp://10.0.0.5:10002 (command_port): could "
        "not connect to 10.0.0.5:10002 (Connection refused); nothing listens there: check that "
        "the server runs on that machine, that its server_name names it and that its "
        "zeromq_listen_address includes that address"
    )


def test_a_name_that_resolves_to_an_address_that_does_not_answer():
    level, text = reach.describe(
        "heartbeat",
        "tcp://pushy:10000",
        reach.Unconnected("pushy", "10.0.0.5", 10000, None, "no answer within 2 s"),
    )
    assert level == logging.ERROR
    assert text.startswith(
        "The server's config gave heartbeat address tcp://pushy:10000 (server_heartbeat_port): "
        "the host 'pushy' resolves to 10.0.0.5, but could not connect to 10.0.0.5:10000 "
        "(no answer within 2 s); check for a firewall dropping port 10000"
    )


def test_another_connect_error_names_the_route():
    _, text = reach.describe(
        "command",
        "tcp://10.9.9.9:10002",
        reach.Unconnected("10.9.9.9", "10.9.9.9", 10002, errno.EHOSTUNREACH, "No route to host"),
    )
    assert "could not connect to 10.9.9.9:10002 (No route to host)" in text
    assert "network route" in text


def test_a_reachable_address_is_said_to_be_reachable():
    level, text = reach.describe(
        "command", "tcp://pushy:10002", reach.Connected("pushy", "10.0.0.5", 10002)
    )
    assert level == logging.INFO
    assert text == (
        "The server's config gave command address tcp://pushy:10002 (command_port): reachable "
        "from here (a TCP connection to 10.0.0.5:10002 opened), yet nothing came back on it"
    )


def test_an_address_that_is_not_tcp_is_not_checked():
    level, text = reach.describe("command", "ipc:///x", reach.NotChecked())
    assert level == logging.WARNING
    assert "ipc:///x" in text and "not checked" in text


def test_report_always_names_the_command_address_first():
    ok = reach.Connected("s", "10.0.0.5", 10002)
    refused = reach.Unconnected("s", "10.0.0.5", 10000, errno.ECONNREFUSED, "Connection refused")
    lines = reach.report(("tcp://s:10002", ok), ("tcp://s:10000", ok))
    assert [level for level, _ in lines] == [logging.INFO]
    assert "tcp://s:10002" in lines[0][1]
    lines = reach.report(("tcp://s:10002", ok), ("tcp://s:10000", refused))
    assert [level for level, _ in lines] == [logging.INFO, logging.ERROR]
    assert "heartbeat address tcp://s:10000 (server_heartbeat_port)" in lines[1][1]
    assert reach.report(("tcp://s:10002", ok)) == [lines[0]]


def test_report_names_an_unknown_host_once():
    unknown = reach.Unresolved("vm", "[Errno -2] Name or service not known")
    lines = reach.report(("tcp://vm:10002", unknown), ("tcp://vm:10000", unknown))
    assert len(lines) == 1 and "tcp://vm:10002" in lines[0][1]
    other = reach.Unresolved("vm2", "[Errno -2] Name or service not known")
    lines = reach.report(("tcp://vm:10002", unknown), ("tcp://vm2:10000", other))
    assert len(lines) == 2 and "the host 'vm2'" in lines[1][1]


def test_report_names_both_ports_when_both_refuse():
    refused = [
        reach.Unconnected("s", "10.0.0.5", port, errno.ECONNREFUSED, "Connection refused")
        for port in (10002, 10000)
    ]
    lines = reach.report(("tcp://s:10002", refused[0]), ("tcp://s:10000", refused[1]))
    assert [level for level, _ in lines] == [logging.ERROR, logging.ERROR]
    assert "10.0.0.5:10002" in lines[0][1] and "nothing listens there" in lines[0][1]
    assert lines[1][1] == (  # the advice is in the line above
        "The server's config gave heartbeat address tcp://s:10000 (server_heartbeat_port): "
        "the host 's' resolves to 10.0.0.5, but could not connect to 10.0.0.5:10000 "
        "(Connection refused)"
    )


def test_report_keeps_the_advice_when_it_differs():
    ok = reach.Connected("s", "10.0.0.5", 10002)
    lost = [reach.Unconnected("s", "10.0.0.5", p, None, "no answer within 2 s") for p in (1, 2)]
    lines = reach.report(("tcp://s:10002", ok), ("tcp://s:10000", lost[0]))
    assert lines[1][1].endswith(
        "server_name names an address of the server that this node can reach"
    )
    lines = reach.report(("tcp://s:1", lost[0]), ("tcp://s:2", lost[1]))
    assert "firewall dropping port 1," in lines[0][1] and "firewall dropping port 2," in lines[1][1]


# ---------------------------------------------------------------------------------------------
# The probe, against real sockets on 127.0.0.1


async def probe(address: str) -> reach.Outcome:
    with trio.fail_after(HANG_GUARD):
        return await probe_address(address)


async def test_probe_reaches_a_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert await probe(f"tcp://127.0.0.1:{port}") == reach.Connected(
            "127.0.0.1", "127.0.0.1", port
        )
        assert await probe(f"tcp://localhost:{port}") == reach.Connected(
            "localhost", "127.0.0.1", port
        )


async def test_probe_of_a_port_nobody_listens_on_is_refused():
    with socket.socket() as held:  # bound, not listening: the port stays ours, connects fail
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        outcome = await probe(f"tcp://127.0.0.1:{port}")
    assert outcome == reach.Unconnected(
        "127.0.0.1", "127.0.0.1", port, errno.ECONNREFUSED, "Connection refused"
    )


async def test_probe_of_a_name_that_does_not_resolve():
    outcome = await probe("tcp://nosuchhost.invalid:10002")
    assert isinstance(outcome, reach.Unresolved), outcome
    assert outcome.host == "nosuchhost.invalid" and outcome.error and outcome.ipv6 == ()


async def test_probe_of_an_ipv6_literal_says_ipv6_only():
    outcome = await probe("tcp://[::1]:10002")
    assert isinstance(outcome, reach.Unresolved), outcome
    assert outcome.ipv6 == ("::1",)


async def test_probe_of_an_address_that_is_not_tcp():
    assert await probe("ipc:///run/pushy.sock") == reach.NotChecked()


# ---------------------------------------------------------------------------------------------
# The watchdog


@pytest.fixture(scope="module")
def node_key():
    return generate_rsa(2048)


@pytest.fixture
def agent(tmp_path, node_key):
    made = make_agent(tmp_path, node_key, file_dir=str(tmp_path / "files"))
    yield made
    made.ctx.destroy(linger=0)


def connection(node_key, command_addr: str, out_addr: str) -> Connection:
    return Connection(
        config={"push_jobs": {"heartbeat": {"command_addr": command_addr, "out_addr": out_addr}}},
        session_key=bytes(32),
        server_key=node_key.public_key(),
        incarnation="i1",
        interval=1.0,
        legacy=False,
    )


async def test_a_message_in_time_means_no_probe(agent, node_key, autojump_clock, monkeypatch):
    probed: list[str] = []

    async def fake_probe(address: str) -> reach.Outcome:
        probed.append(address)
        return reach.NotChecked()

    monkeypatch.setattr("appliance.client.probe.probe_address", fake_probe)
    conn = connection(node_key, "tcp://s:10002", "tcp://s:10000")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent._watchdog, conn)
        await trio.sleep(WATCHDOG_SECONDS - 0.5)
        conn.got_command_message.set()
    assert probed == [] and agent.reconfigure_due is None


async def test_silence_logs_the_addresses_before_the_encryption_line(
    agent, node_key, caplog, monkeypatch
):
    # real time (the probe does real I/O, which a mock clock would jump over), a short watchdog
    monkeypatch.setattr("appliance.client.agent.WATCHDOG_SECONDS", 0.2)
    with socket.socket() as listener, socket.socket() as held:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        held.bind(("127.0.0.1", 0))
        command = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        heartbeat = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        conn = connection(node_key, command, heartbeat)
        with caplog.at_level(logging.INFO, logger="pushy.client"):
            with trio.fail_after(HANG_GUARD):
                await agent._watchdog(conn)
    messages = [r.getMessage() for r in caplog.records if r.name == "pushy.client"]
    reachable = f"[n1] The server's config gave command address {command} (command_port): reachable"
    refused = f"[n1] The server's config gave heartbeat address {heartbeat} (server_heartbeat_port)"
    at = {
        name: next(i for i, m in enumerate(messages) if m.startswith(prefix))
        for name, prefix in (
            ("command", reachable),
            ("heartbeat", refused),
            ("encryption", "[n1] No messages being received on command port in "),
        )
    }
    assert at["command"] < at["heartbeat"] < at["encryption"], messages
    assert "(Connection refused)" in messages[at["heartbeat"]]
    assert messages[at["encryption"]].endswith("s.  Possible encryption problem?")
    assert agent.reconfigure_due is not None  # and the reconfigure still follows


async def test_two_tasks_noticing_the_silence_probe_once(agent, node_key, monkeypatch, caplog):
    probed: list[str] = []

    async def fake_probe(address: str) -> reach.Outcome:
        probed.append(address)
        await trio.sleep(0.05)  # the other task asks meanwhile
        return reach.Unresolved("vm", "[Errno -2] Name or service not known")

    monkeypatch.setattr("appliance.client.probe.probe_address", fake_probe)
    conn = connection(node_key, "tcp://vm:10002", "tcp://vm:10000")
    done: list[int] = []

    async def notice() -> None:
        await agent._diagnose_once(conn)
        done.append(len(caplog.records))  # the lines are out when either goes on

    with caplog.at_level(logging.INFO, logger="pushy.client"), trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(notice)
            nursery.start_soon(notice)
        await agent._diagnose_once(conn)  # and never again on this connection
    assert sorted(probed) == ["tcp://vm:10000", "tcp://vm:10002"]
    lines = [r.getMessage() for r in caplog.records if "does not resolve" in r.getMessage()]
    assert len(lines) == 1 and done == [1, 1]


class SendSink:
    """The DEALER as the heartbeat loop sees it: every send is queued."""

    def send_nowait(self, frames: list[bytes]) -> bool:
        return True

    def close(self) -> None:
        pass


async def run_heartbeats_until_reconfigure(agent: Agent, conn: Connection) -> None:
    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent._heartbeat, conn)
            while agent.reconfigure_due is None:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("heard", [False, True], ids=["never-heard", "heard-before"])
async def test_server_heartbeats_stopping_first_also_names_the_address(
    agent, node_key, caplog, heard
):
    """With short heartbeat intervals, missing server heartbeats reconfigure before the
    watchdog fires: the address is named then, if the command channel never spoke."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        command = f"tcp://127.0.0.1:{held.getsockname()[1]}"
        conn = replace(connection(node_key, command, command), interval=0.01, dealer=SendSink())
        if heard:
            conn.got_command_message.set()
        with caplog.at_level(logging.INFO, logger="pushy.client"):
            await run_heartbeats_until_reconfigure(agent, conn)
    messages = [r.getMessage() for r in caplog.records if r.name == "pushy.client"]
    offline = next(i for i, m in enumerate(messages) if "Considering it offline" in m)
    reconfigure = messages.index("[n1] reconfigure in 0.0 s: server offline")
    said = [i for i, m in enumerate(messages) if f"command address {command}" in m]
    if heard:
        assert said == [], messages
    else:
        assert len(said) == 1 and offline < said[0] < reconfigure, messages
        assert "(Connection refused)" in messages[said[0]]
