"""The decaying heartbeat average of server-protocol.md §4.1, checked numerically."""

import pytest

from appliance.core import liveness

T0 = 1_700_000_000.0


def test_create_counts_the_first_heartbeat():
    h = liveness.create(T0, 0.6)
    assert h == liveness.Health(avg=1.2, interval_start=T0, hb=1)


def test_advance_within_an_interval_changes_nothing():
    h = liveness.Health(avg=0.9, interval_start=T0, hb=2)
    liveness.advance(h, T0 + 9.999, 10.0, 4)
    assert h == liveness.Health(avg=0.9, interval_start=T0, hb=2)


def test_advance_applies_the_formula_for_several_intervals():
    h = liveness.Health(avg=0.8, interval_start=T0, hb=3)
    liveness.advance(h, T0 + 35.0, 10.0, 4)
    assert h.avg == pytest.approx((0.8 * 0.75 + 3 * 0.25) * 0.75**2)
    assert h.interval_start == pytest.approx(T0 + 30.0)
    assert h.hb == 0


def test_advance_counts_whole_intervals_without_float_loss():
    # 0.3 / 0.1 == 2.9999999999999996 in floats; three intervals have passed.
    h = liveness.Health(avg=1.0, interval_start=0.0, hb=0)
    liveness.advance(h, 0.3, 0.1, 4)
    assert h.avg == pytest.approx(0.75**3)
    assert h.interval_start == pytest.approx(0.3)


def test_decay_window_weights():
    h = liveness.Health(avg=1.0, interval_start=0.0, hb=4)
    liveness.advance(h, 1.0, 1.0, 2)  # NOW = HIST = 0.5
    assert h.avg == pytest.approx(2.5)


def test_steady_state_is_one_and_silence_decays_it():
    interval, window, threshold = 0.1, 4, 0.25
    h = liveness.create(0.0, threshold)
    for k in range(1, 200):
        assert liveness.on_heartbeat(h, k * interval + 0.05, interval, window, threshold)
    last_start = h.interval_start
    liveness.advance(h, last_start + interval, interval, window)
    assert h.avg == pytest.approx(1.0, abs=1e-9)
    liveness.advance(h, last_start + 2 * interval, interval, window)
    assert h.avg == pytest.approx(0.75, abs=1e-9)
    liveness.advance(h, last_start + 3 * interval, interval, window)
    assert h.avg == pytest.approx(0.5625, abs=1e-9)


def test_eunit_parameters_die_after_five_empty_intervals():
    interval, window, threshold = 0.1, 4, 0.25
    h = liveness.Health(avg=1.0, interval_start=0.0, hb=0)  # the last beat's interval closed
    # 0.75, 0.5625, 0.4219, 0.3164 stay above 0.25; 0.2373 does not.
    for n in range(1, 5):
        assert not liveness.is_dead(h, n * interval, interval, window, threshold)
    assert liveness.is_dead(h, 5 * interval, interval, window, threshold)
    assert h.avg == pytest.approx(0.75**5)


def test_a_heartbeat_after_a_gap_can_kill_its_own_node():
    interval, window, threshold = 10.0, 4, 0.6
    h = liveness.Health(avg=1.0, interval_start=T0, hb=1)
    # (1.0*0.75 + 0.25) * 0.75**2 = 0.5625 < 0.6: "should_die".
    assert not liveness.on_heartbeat(h, T0 + 30.0, interval, window, threshold)
    h = liveness.Health(avg=1.0, interval_start=T0, hb=1)
    assert liveness.on_heartbeat(h, T0 + 20.0, interval, window, threshold)
    assert h.hb == 1


def test_a_fresh_node_survives_its_first_intervals():
    interval, window, threshold = 10.0, 4, 0.6
    h = liveness.create(T0, threshold)  # 1.2
    for k in range(1, 10):
        assert liveness.on_heartbeat(h, T0 + k * interval, interval, window, threshold)
    assert not liveness.is_dead(h, T0 + 10 * interval, interval, window, threshold)


def _detection_delay(phase: float, scan_offset: float) -> float:
    """Seconds from a node's last heartbeat until the 40 s scanner declares it dead."""
    interval, window, threshold, scan_every = 10.0, 4, 0.6, 40.0
    h = liveness.create(T0, threshold)
    beats = 30
    for k in range(1, beats + 1):
        assert liveness.on_heartbeat(h, T0 + k * interval + phase, interval, window, threshold)
    last = T0 + beats * interval + phase
    scan = T0 + scan_offset
    for _ in range(1000):
        if scan > last and liveness.is_dead(h, scan, interval, window, threshold):
            return scan - last
        if scan <= last:
            assert not liveness.is_dead(h, scan, interval, window, threshold)
        scan += scan_every
    raise AssertionError("never declared dead")


def test_a_dead_node_is_noticed_20_to_70_seconds_after_its_last_beat():
    delays = [
        _detection_delay(phase, float(offset))
        for phase in (0.0, 2.5, 5.0, 7.5, 9.9)
        for offset in range(0, 40, 1)
    ]
    assert all(20.0 <= d <= 70.0 for d in delays)
    # The window is real at both ends, not just a loose bound.
    assert min(delays) < 21.0
    assert max(delays) >= 69.0


def test_non_positive_interval_is_rejected():
    with pytest.raises(ValueError):
        liveness.advance(liveness.create(T0, 0.6), T0 + 1, 0.0, 4)


def test_clock_going_backwards_does_not_decay():
    h = liveness.Health(avg=1.0, interval_start=T0, hb=1)
    liveness.advance(h, T0 - 100.0, 10.0, 4)
    assert h == liveness.Health(avg=1.0, interval_start=T0, hb=1)


# Attention: the receiver's own standstills -------------------------------------------------
def test_attention_without_a_tick_takes_time_as_given():
    a = liveness.Attention()
    assert [a.at(t) for t in (0.0, 100.0, 5.0)] == [0.0, 100.0, 5.0]


def test_attention_excuses_a_standstill_but_one_tick():
    a = liveness.Attention(tick=0.25)
    for k in range(9):  # read every tick (and a little late): nothing is excused
        assert a.at(k * 0.3) == pytest.approx(k * 0.3)
    assert a.at(2.4 + 3.0) == pytest.approx(2.4 + 0.25)  # stood still 3 s
    assert a.at(5.6) == pytest.approx(2.65 + 0.2)  # and from then on, 2.75 s behind
    assert a.excused == pytest.approx(2.75)


def test_attention_after_a_standstill_keeps_a_beating_node_alive_and_a_silent_one_dies():
    interval, window, threshold, tick = 0.2, 4, 0.6, 0.05
    a = liveness.Attention(tick=tick)
    beating = liveness.create(a.at(0.0), threshold)
    silent = liveness.create(a.at(0.0), threshold)
    t = 0.0
    for _ in range(20):  # both beat every interval, read every tick
        for _ in range(4):
            t += tick
            a.at(t)
        liveness.on_heartbeat(beating, a.at(t), interval, window, threshold)
        liveness.on_heartbeat(silent, a.at(t), interval, window, threshold)
    t += 2.0  # the receiver stood still 2 s; the beats sent meanwhile were queued
    assert not liveness.is_dead(beating, a.at(t), interval, window, threshold)
    for _ in range(10):  # the queue drains: ten beats at once
        assert liveness.on_heartbeat(beating, a.at(t), interval, window, threshold)
    for _ in range(40):  # then 2 s of beats as before; the silent node has said nothing since
        t += tick
        if round(t / tick) % 4 == 0:
            liveness.on_heartbeat(beating, a.at(t), interval, window, threshold)
        a.at(t)
    assert not liveness.is_dead(beating, a.at(t), interval, window, threshold)
    assert liveness.is_dead(silent, a.at(t), interval, window, threshold)
    # without the excuse the 2 s standstill would have killed both
    plain = liveness.Health(avg=1.0, interval_start=0.0, hb=1)
    assert liveness.is_dead(plain, 2.0, interval, window, threshold)
