"""The SSE fan-out: every subscriber gets every event; one that falls behind is dropped."""

from __future__ import annotations

import trio

from appliance.server.feeds import SUBSCRIBER_BUFFER, Hub


async def test_each_subscriber_gets_every_item_in_order():
    hub = Hub()
    a, b = hub.subscribe("t"), hub.subscribe("t")
    other = hub.subscribe("u")
    for i in range(5):
        hub.publish("t", i)
    got_a = [a.receive.receive_nowait() for _ in range(5)]
    got_b = [b.receive.receive_nowait() for _ in range(5)]
    assert got_a == got_b == [0, 1, 2, 3, 4]
    try:
        other.receive.receive_nowait()
        raise AssertionError("another topic's subscriber got an item")
    except trio.WouldBlock:
        pass


async def test_a_slow_subscriber_is_dropped_not_buffered_without_bound():
    hub = Hub()
    slow, fast = hub.subscribe("t"), hub.subscribe("t")
    for i in range(SUBSCRIBER_BUFFER + 10):
        hub.publish("t", i)
        if i % 100 == 0:  # the fast reader keeps up
            while True:
                try:
                    fast.receive.receive_nowait()
                except trio.WouldBlock:
                    break
    assert slow.dropped and not fast.dropped
    assert hub.subscriber_count() == 1
    # the dropped reader still drains what it had, then sees the end and can resume
    drained = 0
    try:
        while True:
            slow.receive.receive_nowait()
            drained += 1
    except trio.EndOfChannel:
        pass
    assert drained == SUBSCRIBER_BUFFER


async def test_unsubscribe_forgets_empty_topics():
    hub = Hub()
    sub = hub.subscribe("t")
    hub.unsubscribe("t", sub)
    assert hub.topics == {}
    hub.publish("t", 1)  # nobody listening: nothing happens
