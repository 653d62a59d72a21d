"""Own config fetches remembered by signature (core.servedfetches): a replay gets the key it was
given, only for as long as the signature can be replayed, within a bounded memory."""

from __future__ import annotations

import pytest

from appliance.core.servedfetches import MARGIN, Forgotten, Replay, Served, ServedFetches

WINDOW = 900.0
N1, N2 = ("acme", "n1"), ("acme", "n2")
T0 = 1_000_000.0


def served(i: int) -> Served:
    return Served(bytes([i]) * 32, "c" * 40)


def test_a_served_signature_is_a_replay_with_the_key_it_was_given():
    fetches = ServedFetches(WINDOW)
    assert fetches.check(N1, b"sig1", T0, now=T0) is None
    fetches.remember(N1, b"sig1", T0, served(1), now=T0)
    assert fetches.check(N1, b"sig1", T0, now=T0 + 5) == Replay(served(1))
    assert fetches.check(N1, b"sig2", T0 + 1, now=T0 + 5) is None  # a new signature
    assert fetches.check(N2, b"sig1", T0, now=T0 + 5) is None  # of another node


def test_an_entry_lives_while_its_signed_time_is_in_the_window():
    fetches = ServedFetches(WINDOW)
    fetches.remember(N1, b"sig1", T0, served(1), now=T0 + 100)  # signed 100 s ago
    fetches.remember(N1, b"future", T0 + 600, served(2), now=T0 + 100)  # a clock ahead
    end = T0 + WINDOW + MARGIN
    assert fetches.check(N1, b"sig1", T0, now=end - 1) == Replay(served(1))
    assert fetches.check(N1, b"sig1", T0, now=end) is None
    assert len(fetches) == 1
    assert fetches.check(N1, b"future", T0 + 600, now=end + 599) == Replay(served(2))
    assert fetches.check(N1, b"future", T0 + 600, now=end + 600) is None
    assert len(fetches) == 0
    fetches.remember(N1, b"old", T0, served(3), now=end)  # no longer replayable: not kept
    assert len(fetches) == 0


def test_a_node_over_its_cap_forgets_its_oldest_and_refuses_what_it_may_have_forgotten():
    fetches = ServedFetches(WINDOW, per_node=3)
    fetches.remember(N2, b"other", T0, served(9), now=T0)
    for i in range(5):  # the node's own key signed five fetches: the first two are dropped
        fetches.remember(N1, b"sig%d" % i, T0 + i, served(i), now=T0 + i)
    assert len(fetches) == 4 and fetches.dropped == 2
    assert fetches.check(N1, b"sig1", T0 + 1, now=T0 + 10) == Forgotten()  # not a rotation
    assert fetches.check(N1, b"unknown", T0 + 1, now=T0 + 10) == Forgotten()
    assert fetches.check(N1, b"sig4", T0 + 4, now=T0 + 10) == Replay(served(4))
    assert fetches.check(N1, b"newer", T0 + 2.5, now=T0 + 10) is None  # signed after: new
    assert fetches.check(N2, b"other", T0, now=T0 + 10) == Replay(served(9))  # untouched
    # the refusal ends when what was dropped could no longer be replayed anyway
    end = T0 + 1 + WINDOW + MARGIN
    assert fetches.check(N1, b"unknown", T0 + 1, now=end) is None


def test_the_whole_memory_is_capped_and_drops_what_leaves_the_window_first():
    fetches = ServedFetches(WINDOW, per_node=10, cap=3)
    nodes = [("acme", f"n{i}") for i in range(5)]
    for i, node in enumerate(nodes):
        fetches.remember(node, b"s", T0 + i, served(i), now=T0 + i)
    assert len(fetches) == 3 and fetches.dropped == 2
    assert fetches.check(nodes[0], b"s", T0, now=T0 + 10) == Forgotten()
    assert fetches.check(nodes[1], b"s", T0 + 1, now=T0 + 10) == Forgotten()
    for i in (2, 3, 4):
        assert fetches.check(nodes[i], b"s", T0 + i, now=T0 + 10) == Replay(served(i))


def test_a_flood_stays_bounded_and_is_all_gone_after_the_window():
    fetches = ServedFetches(WINDOW, per_node=4, cap=50)
    for i in range(20_000):
        node = ("acme", f"n{i % 300}")
        fetches.remember(node, i.to_bytes(4, "big"), T0 + i / 100, served(1), now=T0 + i / 100)
        assert len(fetches) <= 50
    assert len(fetches._expiry) <= 2 * 50 + 64 + 1  # heap items of dropped entries are pruned
    assert len(fetches._floors) <= 2 * 300 + 64 + 1
    later = T0 + 200 + WINDOW + MARGIN
    assert fetches.check(("acme", "n1"), b"x", later, now=later) is None
    assert len(fetches) == 0 and not fetches._nodes and not fetches._expiry


def test_a_fetch_whose_answer_failed_is_forgotten():
    fetches = ServedFetches(WINDOW)
    fetches.remember(N1, b"sig1", T0, served(1), now=T0)
    fetches.forget(N1, b"sig1")
    assert fetches.check(N1, b"sig1", T0, now=T0 + 1) is None
    assert len(fetches) == 0


def test_bounds_must_be_positive():
    with pytest.raises(ValueError):
        ServedFetches(WINDOW, cap=0)
