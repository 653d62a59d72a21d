"""Fan-out of SSE events to subscribers, with bounded buffers.

A subscriber that cannot keep up is dropped rather than buffered without bound; it can resume
with ``Last-Event-ID`` (the job feed replays from the job's event list).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

SUBSCRIBER_BUFFER = 1024
END = object()  # sentinel: the feed ended (job finished)


@dataclass(frozen=True, slots=True)
class Output:
    """A live output event of ``job`` (``data``: node, stream, offset, data): not in the job's
    event list, so never replayed, and skipped for a reader that falls behind."""

    job: str
    data: dict[str, Any]


@dataclass(eq=False)
class Subscriber:
    send: trio.MemorySendChannel
    receive: trio.MemoryReceiveChannel
    dropped: bool = False
    kind: str = ""  # what reads it: "sse", "websocket" (GET /metrics counts them)


@dataclass
class Hub:
    topics: dict[Any, set[Subscriber]] = field(default_factory=lambda: defaultdict(set))

    def subscribe(self, topic: Any, kind: str = "") -> Subscriber:
        send, receive = trio.open_memory_channel(SUBSCRIBER_BUFFER)
        sub = Subscriber(send, receive, kind=kind)
        self.topics[topic].add(sub)
        return sub

    def subscribe_many(
        self, topics: Iterable[Any], buffer: int = SUBSCRIBER_BUFFER, kind: str = ""
    ) -> Subscriber:
        """One subscriber on several topics: one channel, so items keep their publish order.

        Dropped from every topic once its buffer is full (the closed channel makes the other
        topics' next publish drop it too); ``unsubscribe`` it from each topic when done."""
        send, receive = trio.open_memory_channel(buffer)
        sub = Subscriber(send, receive, kind=kind)
        for topic in topics:
            self.topics[topic].add(sub)
        return sub

    def unsubscribe(self, topic: Any, sub: Subscriber) -> None:
        subs = self.topics.get(topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.topics[topic]
        sub.send.close()

    def publish(self, topic: Any, item: Any) -> None:
        for sub in list(self.topics.get(topic, ())):
            try:
                sub.send.send_nowait(item)
            except trio.WouldBlock:
                sub.dropped = True
                self.unsubscribe(topic, sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(topic, sub)

    def publish_lossy(self, topic: Any, item: Any) -> None:
        """Publish unless a subscriber's buffer is half full: that reader misses ``item``
        (live output, which it can read in full over REST) but is not dropped, and the room
        left keeps the events that are never skipped."""
        for sub in list(self.topics.get(topic, ())):
            stats = sub.send.statistics()
            if stats.current_buffer_used * 2 >= stats.max_buffer_size:
                continue
            try:
                sub.send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self.topics.values())

    def readers(self) -> Counter[str]:
        """Subscribers by kind, each once however many topics it reads."""
        subs: set[Subscriber] = set()
        for topic_subs in self.topics.values():
            subs.update(topic_subs)
        return Counter(sub.kind for sub in subs)
