"""Server-side node liveness: the original's decaying heartbeat average (server-protocol.md §4.1).

Each interval of length I contributes its heartbeat count with weight 1/W to a running
average; an empty interval only decays it. A node beating once per interval settles at 1.0,
and falls below the threshold T about two empty intervals after its last beat.

Times are float seconds, but interval arithmetic is done in integer microseconds (as the
original did) so that ``floor((now - start) / I)`` never loses an interval to float rounding
(0.3 / 0.1 is 2.9999999999999996).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attention", "Health", "advance", "create", "is_dead", "on_heartbeat"]


@dataclass
class Health:
    avg: float
    interval_start: float
    hb: int


@dataclass
class Attention:
    """Liveness time: the receiver's own standstills left out.

    A node is judged by the gaps between its beats as the receiver saw them. When the receiving
    process stood still (starved of CPU, stopped, a long step of its own), the beats sent
    meanwhile wait in its socket: the gap is ours, not the node's, and judging it would mark
    live nodes offline. The shell reads the time at least every ``tick`` (``at``); a longer gap
    between two readings is a standstill, and all of it but one tick is excused from then on.
    ``tick`` None: times are taken as given (the pure tables' tests drive time by hand).
    """

    tick: float | None = None
    last: float | None = None
    excused: float = 0.0

    def at(self, now: float) -> float:
        if self.tick is None:
            return now
        if self.last is not None and now - self.last > 2 * self.tick:
            self.excused += now - self.last - self.tick
        self.last = now
        return now - self.excused


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def create(now: float, threshold: float) -> Health:
    """The record made on the first validated heartbeat, which it counts."""
    return Health(avg=2 * threshold, interval_start=now, hb=1)


def advance(h: Health, now: float, interval: float, decay_window: float) -> None:
    """Fold every whole interval elapsed since ``interval_start`` into ``avg``."""
    step = _us(interval)
    if step <= 0:
        raise ValueError("interval must be positive")
    start = _us(h.interval_start)
    n = (_us(now) - start) // step
    if n > 0:
        weight_now = 1.0 / decay_window
        weight_hist = 1.0 - weight_now
        h.avg = (h.avg * weight_hist + h.hb * weight_now) * weight_hist ** (n - 1)
        h.interval_start = (start + n * step) / 1_000_000
        h.hb = 0


def on_heartbeat(
    h: Health, now: float, interval: float, decay_window: float, threshold: float
) -> bool:
    """Count a later heartbeat; False means "should_die" (the catch-up decay fell below T)."""
    advance(h, now, interval, decay_window)
    h.hb += 1
    return h.avg >= threshold


def is_dead(h: Health, now: float, interval: float, decay_window: float, threshold: float) -> bool:
    """The scanner's check, run every ``interval * detect_offline_nodes_interval``."""
    advance(h, now, interval, decay_window)
    return h.avg < threshold
