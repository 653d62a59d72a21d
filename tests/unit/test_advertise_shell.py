"""The shell around the verdict (appliance/server/advertise.py): the bounded look-up, what a
check leaves behind for the config route, ``/pushy/_status`` and the STATUS line. The
resolver is replaced, except for a look-up of the literal 127.0.0.1 (its bind test binds a UDP
socket to 127.0.0.1, port 0)."""

from __future__ import annotations

import logging
import threading

import pytest
import trio

from appliance.core.settings import Settings
from appliance.server import advertise
from appliance.server.advertise import Advertiser, look_up

PORTS = {"command_port": 10002, "server_heartbeat_port": 10000}


def test_look_up_of_a_loopback_literal_is_local():
    assert look_up("127.0.0.1") == ("127.0.0.1", ["127.0.0.1"], frozenset({"127.0.0.1"}))


async def test_a_resolver_that_does_not_answer_is_unresolved_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    release = threading.Event()

    def stuck(configured: str | None) -> advertise.Lookup:
        release.wait(10)  # the abandoned thread ends when the test does
        return "never", ["192.0.2.1"], frozenset()

    monkeypatch.setattr(advertise, "look_up", stuck)
    advertiser = Advertiser("placeholder", timeout=0.2)
    try:
        with trio.fail_after(5):
            start = trio.current_time()
            verdict = await advertiser.check(Settings(server_name="slow.example"), PORTS)
            assert trio.current_time() - start < 2
    finally:
        release.set()
    assert verdict.status == "unresolved"
    assert "no answer from the resolver within 0.2 s" in (verdict.problem or "")
    assert advertiser.server_name == "slow.example"
    assert any(r.levelno == logging.WARNING and "slow.example" in r.message for r in caplog.records)


async def test_a_check_sets_the_running_name_and_what_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    answers = {
        "gone.example": ("gone.example", "Name or service not known", frozenset()),
        "push.example": ("push.example", ["192.0.2.10"], frozenset({"192.0.2.10"})),
    }
    monkeypatch.setattr(advertise, "look_up", lambda name: answers[name])
    advertiser = Advertiser("placeholder")
    caplog.set_level(logging.INFO, "pushy.server")

    await advertiser.check(Settings(server_name="gone.example"), PORTS)
    assert advertiser.endpoint(10002) == "tcp://gone.example:10002"
    assert advertiser.status_suffix() == (
        "; WARNING: server_name 'gone.example' does not resolve (see /pushy/_status)"
    )
    report = advertiser.report(PORTS)
    assert report["status"] == "unresolved" and "gone.example" in report["problem"]

    await advertiser.check(Settings(server_name="push.example"), PORTS)
    assert advertiser.status_suffix() == ""
    assert advertiser.report(PORTS) == {
        "server_name": "push.example",
        "addresses": ["192.0.2.10"],
        "status": "ok",
        "problem": None,
        "command_addr": "tcp://push.example:10002",
        "heartbeat_addr": "tcp://push.example:10000",
    }
    assert (
        "nodes are told to connect to tcp://push.example:10002 and tcp://push.example:10000"
        in caplog.text
    )
