"""The node's server watch (``client.serverwatch``), shared by the agent and the simulator."""

from __future__ import annotations

from appliance.client.serverwatch import ServerWatch


def test_defaults_and_thresholds_from_the_config() -> None:
    watch = ServerWatch.from_heartbeat_config({"offline_threshold": 5, "online_threshold": 1})
    assert (watch.offline_threshold, watch.online_threshold) == (5, 1)
    assert ServerWatch.from_heartbeat_config({}) == ServerWatch(3, 2)


def test_offline_after_more_than_threshold_silent_ticks_then_silent() -> None:
    watch = ServerWatch(offline_threshold=3)
    ticks = [watch.tick() for _ in range(6)]
    assert [t.send for t in ticks] == [True, True, True, True, False, False]
    assert [t.went_offline for t in ticks] == [False, False, False, False, True, False]
    assert ticks[4].missed == 4  # the agent's "Server has missed 4 heartbeats in a row"


def test_server_heartbeats_reset_the_count() -> None:
    watch = ServerWatch(offline_threshold=1)
    for _ in range(10):
        assert watch.tick().send
        assert watch.server_heartbeat() is False  # online all along: no "online again"
    assert watch.offline_counter == 0


def test_back_online_after_more_than_online_threshold_server_heartbeats() -> None:
    watch = ServerWatch(offline_threshold=0, online_threshold=2)
    watch.tick()
    assert watch.tick().went_offline and not watch.online
    assert [watch.server_heartbeat() for _ in range(4)] == [False, False, True, False]
    assert watch.online and watch.tick().send
