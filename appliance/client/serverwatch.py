"""Is the server there? The node's count of missed server heartbeats, as the original client
keeps it: shared by the agent (``client.agent``) and the simulated node (``bench.simnode``).

Pure and clock-free: the counters move on the node's own heartbeat ticks (one per interval)
and on the server's heartbeats, so the caller's loop supplies the time. After more than
``offline_threshold`` ticks without a server heartbeat the server is offline: the node stops
heartbeating and reconfigures. While offline, more than ``online_threshold`` server heartbeats
in a row bring it back online.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OFFLINE_THRESHOLD = 3  # the config's defaults (push_jobs.heartbeat.*_threshold)
ONLINE_THRESHOLD = 2


@dataclass(frozen=True)
class Tick:
    send: bool  # send our heartbeat now (only while the server is online)
    went_offline: bool  # this tick found the server offline: log it and reconfigure
    missed: int  # server heartbeats missed in a row so far (for the log line)


@dataclass
class ServerWatch:
    offline_threshold: int = OFFLINE_THRESHOLD
    online_threshold: int = ONLINE_THRESHOLD
    online: bool = True
    offline_counter: int = 0
    online_counter: int = 0

    @classmethod
    def from_heartbeat_config(cls, heartbeat: Mapping[str, Any]) -> ServerWatch:
        """Thresholds from the config's ``push_jobs.heartbeat`` object."""
        return cls(
            offline_threshold=int(heartbeat.get("offline_threshold", OFFLINE_THRESHOLD)),
            online_threshold=int(heartbeat.get("online_threshold", ONLINE_THRESHOLD)),
        )

    def tick(self) -> Tick:
        """Our heartbeat interval elapsed."""
        went_offline = False
        if self.online:
            if self.offline_counter > self.offline_threshold:
                self.online = False
                self.online_counter = 0
                went_offline = True
            else:
                self.offline_counter += 1
        return Tick(self.online, went_offline, self.offline_counter)

    def server_heartbeat(self) -> bool:
        """A valid server heartbeat arrived; True when it brought the server back online."""
        self.offline_counter = 0
        if self.online:
            return False
        self.online_counter += 1
        if self.online_counter > self.online_threshold:
            self.online = True
            return True
        return False
