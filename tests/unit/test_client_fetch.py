"""The client's configuration fetch (``client.fetch``) and channel helpers (``client.channel``),
without a server: the request the original server expects, what its answer becomes, the
backoff on trio's mock clock, and the node record's PUT-then-POST."""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import replace
from typing import Any

import pytest
import trio
import zmq

from appliance.client import channel, fetch
from appliance.client.channel import (
    Connection,
    check_inbound,
    command_sockets,
    outbound_frames,
)
from appliance.client.config import ClientConfig
from appliance.core import servedfetches, wire
from appliance.core.keys import encrypt_session_key, generate_rsa, public_pem

NODE = "node1"
SESSION_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def keys():
    return generate_rsa(2048), generate_rsa(2048)  # the node's, the server's


def config(**changes: Any) -> ClientConfig:
    return replace(
        ClientConfig(), chef_server_url="https://chef.example:8443/organizations/acme/", **changes
    )


def answer(node_key, server_key, *, curve: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "public_key": public_pem(server_key),
        "incarnation_id": "inc-1",
        "encoded_session_key": {
            "method": "hmac_sha256",
            "key": encrypt_session_key(node_key.public_key(), SESSION_KEY),
        },
        "push_jobs": {
            "heartbeat": {
                "out_addr": "tcp://s:10000",
                "command_addr": "tcp://s:10002",
                "interval": 2,
            }
        },
    }
    if curve:
        body["curve_public_key"] = "x" * 40
    return body


class Requests:
    """``signed_request`` as the fetch sees it: records calls, answers from a list."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple] = []
        self.tls: list[Any] = []  # the SSL settings each request was sent with

    def __call__(self, origin, method, path, body, user, key_pem, *, timeout, tls):
        self.calls.append((origin, method, path, body, user, timeout))
        self.tls.append(tls)
        reply = self.answers.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


async def do_fetch(cfg: ClientConfig, node_key) -> Connection:
    return await fetch.fetch_config(
        cfg, node=NODE, key_pem="PEM", private_key=node_key, curve_public=b"ab+/cd="
    )


def test_server_origin_keeps_the_prefix_for_signing():
    assert fetch.server_origin("https://h:8443/organizations/acme/") == (
        "https://h:8443",
        "/organizations/acme",
    )
    assert fetch.server_origin("http://h") == ("http://h", "")


async def test_fetch_asks_as_the_original_and_builds_a_connection(keys, monkeypatch):
    node_key, server_key = keys
    requests = Requests((200, answer(node_key, server_key)))
    monkeypatch.setattr(fetch, "signed_request", requests)
    cfg = config()
    conn = await do_fetch(cfg, node_key)
    origin, method, path, body, user, timeout = requests.calls[0]
    assert (origin, method, body, user) == ("https://chef.example:8443", "GET", None, NODE)
    assert requests.tls == [cfg.tls]  # Chef's ssl_verify_mode, trusted_certs_dir, ...
    assert timeout == fetch.CONFIG_TIMEOUT_SECONDS
    split = urllib.parse.urlsplit(path)
    assert split.path == "/organizations/acme/pushy/config/node1"
    assert urllib.parse.parse_qs(split.query) == {"ccpk": ["ab+/cd="], "version": ["2.0"]}
    assert "ccpk=ab%2B%2Fcd%3D&version=2.0" in path
    assert conn.session_key == SESSION_KEY and conn.incarnation == "inc-1"
    assert conn.interval == 2.0 and conn.legacy is False and conn.sequence == 0
    assert conn.dealer is None and conn.sub is None


async def test_legacy_server_is_fatal_unless_allowed(keys, monkeypatch, caplog):
    node_key, server_key = keys
    legacy = answer(node_key, server_key, curve=False)
    monkeypatch.setattr(fetch, "signed_request", Requests((200, legacy), (200, legacy)))
    with pytest.raises(fetch.FatalConfigError) as err:
        await do_fetch(config(), node_key)
    assert err.value.exit_status == 1 and str(err.value).startswith("Exiting: No key returned")
    with caplog.at_level(logging.WARNING, logger="pushy.client"):
        conn = await do_fetch(config(allow_unencrypted=True), node_key)
    assert conn.legacy is True
    assert "falling back to 1.x protocol (no encryption)" in caplog.text


async def test_bad_answers(keys, monkeypatch):
    node_key, server_key = keys
    broken = answer(node_key, server_key)
    broken["encoded_session_key"] = {"key": "not base64!"}
    monkeypatch.setattr(fetch, "signed_request", Requests((403, {"error": "no"}), (200, broken)))
    with pytest.raises(ValueError, match="HTTP 403"):
        await do_fetch(config(), node_key)
    with pytest.raises(fetch.FatalConfigError, match="No session key found in config") as err:
        await do_fetch(config(), node_key)
    assert err.value.exit_status == 255


async def test_retries_back_off_doubling_with_jitter(autojump_clock, monkeypatch):
    monkeypatch.setattr(channel.random, "random", lambda: 0.0)  # no jitter: exact waits
    attempts: list[float] = []
    sentinel = object()

    async def flaky() -> Any:
        attempts.append(trio.current_time())
        if len(attempts) < 4:
            raise OSError("refused")
        return sentinel

    start = trio.current_time()
    got = await fetch.fetch_until_it_works(flaky, NODE, trio.Event())
    assert got is sentinel
    assert [round(t - start, 3) for t in attempts] == [0.0, 1.0, 3.0, 7.0]


async def test_retries_stop_at_stop_and_fatal_goes_through(autojump_clock):
    stopping = trio.Event()

    async def failing() -> Any:
        stopping.set()
        raise ValueError("no config")

    assert await fetch.fetch_until_it_works(failing, NODE, stopping) is None

    async def fatal() -> Any:
        raise fetch.FatalConfigError("bad", 1)

    with pytest.raises(fetch.FatalConfigError):
        await fetch.fetch_until_it_works(fatal, NODE, trio.Event())


async def test_node_record_put_then_post(monkeypatch, caplog):
    requests = Requests((404, None), (201, {}))
    monkeypatch.setattr(fetch, "signed_request", requests)
    with caplog.at_level(logging.INFO, logger="pushy.client"):
        await fetch.publish_node_record(config(tags=["web"]), node=NODE, key_pem="PEM")
    (o1, m1, p1, record, _, _), (o2, m2, p2, _, _, _) = requests.calls
    assert (o1, m1, p1) == ("https://chef.example:8443", "PUT", "/organizations/acme/nodes/node1")
    assert (o2, m2, p2) == ("https://chef.example:8443", "POST", "/organizations/acme/nodes")
    assert record["name"] == NODE and record["normal"]["tags"] == ["web"]
    assert "[node1] published the node record for search" in caplog.text


def test_channel_frames_count_and_check(keys, caplog):
    node_key, server_key = keys
    conn = Connection(
        config={},
        session_key=SESSION_KEY,
        server_key=server_key.public_key(),
        incarnation="inc-1",
        interval=1.0,
        legacy=False,
    )
    ident = {"node": NODE, "client": "host", "org": "acme", "incarnation": "me"}
    first = outbound_frames(conn, "heartbeat", None, job_state="idle", **ident)
    second = outbound_frames(conn, "heartbeat", None, job_state="idle", **ident)
    assert [wire.decode_body(f[1])["sequence"] for f in (first, second)] == [1, 2]
    assert conn.sequence == 2
    assert wire.hmac_ok(SESSION_KEY, first[1], wire.parse_header(first[0]).signature)

    now = time.time()
    from_server = wire.hmac_frames(
        SESSION_KEY, wire.server_message(1, now, {"type": "ack", "job_id": None})
    )
    assert check_inbound(conn, from_server, NODE)["type"] == "ack"
    with caplog.at_level(logging.WARNING, logger="pushy.client"):
        assert check_inbound(conn, [from_server[1]], NODE) is None
        assert check_inbound(conn, [from_server[0], from_server[1] + b" "], NODE) is None
    assert "[node1] dropped a message of 1 frames" in caplog.text
    assert "[node1] Received invalid message (" in caplog.text


def test_command_sockets_have_the_original_options():
    ctx = zmq.Context()
    try:
        public, secret = zmq.curve_keypair()
        server_public, _ = zmq.curve_keypair()
        hb = {"command_addr": "tcp://127.0.0.1:1", "out_addr": "tcp://127.0.0.1:2"}
        dealer, sub = command_sockets(
            ctx, hb, ({"curve_public_key": server_public.decode()}, public, secret)
        )
        assert (dealer.linger, dealer.sndhwm, dealer.rcvhwm, sub.linger) == (0, 3, 0, 0)
        assert dealer.mechanism == zmq.CURVE and dealer.curve_server == 0
        dealer.close()
        sub.close()
        plain, plain_sub = command_sockets(ctx, hb, None)  # legacy: no CURVE
        assert plain.mechanism == zmq.NULL
        plain.close()
        plain_sub.close()
    finally:
        ctx.destroy(linger=0)


def test_config_path_is_the_fleet_s_and_the_client_s():
    path = fetch.config_path("/organizations/acme", NODE, b"ab+/cd=")
    assert path == "/organizations/acme/pushy/config/node1?ccpk=ab%2B%2Fcd%3D&version=2.0"
    assert fetch.config_path("", NODE, b"k").startswith("/pushy/config/node1?ccpk=k&")


def test_answer_becomes_a_connection_without_io(keys):
    node_key, server_key = keys
    conn = fetch.connection_from_answer(
        200, answer(node_key, server_key), node_key, allow_unencrypted=False, node=NODE
    )
    assert (conn.session_key, conn.incarnation, conn.interval) == (SESSION_KEY, "inc-1", 2.0)
    assert not conn.legacy and not conn.got_command_message.is_set()
    with pytest.raises(ValueError, match=r"^HTTP 404 Not Found: gone$"):
        fetch.connection_from_answer(404, b"gone", node_key, allow_unencrypted=False, node=NODE)
    with pytest.raises(ValueError, match="HTTP 200"):
        fetch.connection_from_answer(200, [1], node_key, allow_unencrypted=False, node=NODE)


def test_backoff_and_jitter(monkeypatch):
    monkeypatch.setattr(channel.random, "random", lambda: 1.0)  # the most jitter
    assert fetch.backoff(1.0) == (0.9, 2.0)
    assert fetch.backoff(100.0) == (90.0, fetch.BACKOFF_MAX_SECONDS)
    assert channel.jittered(60.0) == 54.0
    assert channel.lifetime_seconds({}) == 3240.0
    assert channel.lifetime_seconds({"lifetime": 100}) == 90.0


def test_verified_body_without_the_session_key_takes_only_rsa(keys):
    node_key, server_key = keys
    conn = Connection(
        config={"max_message_skew": 10},
        session_key=SESSION_KEY,
        server_key=server_key.public_key(),
        incarnation="inc-1",
        interval=1.0,
        legacy=False,
    )
    body = wire.server_message(1, time.time(), {"type": "heartbeat"})
    hmac_signed = wire.hmac_frames(SESSION_KEY, body)
    assert channel.verified_body(conn, hmac_signed)["type"] == "heartbeat"
    with pytest.raises(wire.MessageError, match="bad_signature"):
        channel.verified_body(conn, hmac_signed, session_key=False)
    stale = wire.hmac_frames(SESSION_KEY, wire.server_message(1, time.time() - 60, {}))
    with pytest.raises(wire.MessageError, match="stale"):
        channel.verified_body(conn, stale)  # the config's max_message_skew
    rsa_signed = wire.rsa_frames(server_key, body)
    assert channel.verified_body(conn, rsa_signed, session_key=False)["type"] == "heartbeat"


def test_a_401_is_a_refusal_with_the_server_s_words(keys):
    node_key, _ = keys
    body = {"error": ["Invalid signature for user or client 'node1'"]}
    with pytest.raises(fetch.Refused) as info:
        fetch.connection_from_answer(401, body, node_key, allow_unencrypted=False, node=NODE)
    assert str(info.value) == "HTTP 401: Invalid signature for user or client 'node1'"
    assert isinstance(info.value, ValueError)  # retried like any answer worth retrying


@pytest.mark.parametrize(
    ("said", "words"),
    [
        (
            "Invalid signature for user or client 'node1'",
            "The server does not know the key in /k.pem: give the client a new key on a "
            "workstation with `pushy admin client rotate-key node1 -o acme --key-file FILE` "
            "and copy FILE to /k.pem, or copy the node's right key to /k.pem",
        ),
        (
            "Failed to authenticate as 'node1'. Ensure that your node_name and client key "
            "are correct.",
            "The server has no client named 'node1' in organization 'acme': create it",
        ),
        (
            "Failed to authenticate as node1. Synchronize the clock on your host.",
            "clock is more than 15 minutes away",
        ),
        (
            servedfetches.REPLAYED,
            "this client fetched within the same second",
        ),
    ],
)
def test_refusal_advice_says_what_to_fix(said, words):
    text = fetch.refusal_advice(
        fetch.Refused([said]),
        node=NODE,
        org="acme",
        server_url="http://s/organizations/acme",
        key_file="/k.pem",
    )
    assert text.startswith(
        f"The server http://s/organizations/acme refuses node 'node1' (HTTP 401: {said}). "
    )
    assert words in text


async def test_a_refusal_is_explained_once_then_short_lines(autojump_clock, monkeypatch, caplog):
    """The full explanation at the first refusal and again every EXPLAIN_EVERY_SECONDS; one
    short WARNING line for each retry in between; the retries keep backing off."""
    monkeypatch.setattr(channel.random, "random", lambda: 0.0)
    stopping = trio.Event()
    start = trio.current_time()

    async def refused() -> Any:
        if trio.current_time() - start > fetch.EXPLAIN_EVERY_SECONDS + 300:
            stopping.set()
        raise fetch.Refused(["Invalid signature for user or client 'node1'"])

    with caplog.at_level(logging.INFO, logger="pushy.client"):
        got = await fetch.fetch_until_it_works(
            refused, NODE, stopping, lambda exc: f"EXPLAINED {exc}"
        )
    assert got is None
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    full = [i for i, (level, _) in enumerate(records) if level == "ERROR"]
    assert [records[i][1] for i in full] == [
        "[node1] Could not download push jobs config: EXPLAINED HTTP 401: Invalid signature "
        "for user or client 'node1'"
    ] * 2
    between = records[full[0] + 1 : full[1]]
    assert {level for level, _ in between} == {"WARNING"}
    assert between[0][1] == (
        "[node1] still refused (HTTP 401: Invalid signature for user or client 'node1'); "
        "retrying in 2 s"
    )
    assert between[-1][1].endswith("retrying in 120 s")
    # 1+2+4+...+64 s, then every 120 s: about 20 retries in 30 minutes
    assert 15 <= len(between) <= 25, records
