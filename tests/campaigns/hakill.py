"""Failover campaign: ``kill -9`` the active of a PostgreSQL-backed pair, N times in a row.

The kill campaign's workload, driver and checker (tests/campaigns/kill.py), pointed at an
active/standby pair (tests/hacluster.py): two servers on 127.0.0.2 / 127.0.0.3 sharing a real
PostgreSQL, HAProxy in front, and real ``pushy client`` processes that reach the service only
through HAProxy. The driver talks to the active itself (so a kill cuts its requests as a dead
server would); after each kill the standby must take over within ``lease_timeout`` + 5 s, the
killed server comes back as the new standby, and the checker compares the new active with
everything clients were told: every acknowledged job, identity change and output is there,
no status goes backwards, no SSE id names another event. When the killing stops every job
must finish and the fleet must run a new job on every node.

Run ``python -m tests.campaigns.hakill --kills 20 --seed 1``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.bench.pgcluster import PgCluster
from tests.campaigns.kill import ORG, Campaign, Summary
from tests.hacluster import HaSet
from tests.support import Chef, ClientFleet


class Front:
    """What nodes and the CLI know of the service: HAProxy's URL and the superuser's key (what
    `tests.support.setup_org` and `ClientFleet` take of a server)."""

    def __init__(self, url: str, pivotal_key: Path) -> None:
        self.url = url
        self.pivotal_key = pivotal_key
        self.verify = True  # plain HTTP: the tests' own requests verify nothing


class HaCampaign(Campaign):
    def __init__(
        self,
        *,
        lease_timeout: float = 3.0,
        cluster: PgCluster | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.lease_timeout = lease_timeout
        self.ha = HaSet(
            self.workdir / "ha",
            count=2,
            cluster=cluster,
            lease_timeout=lease_timeout,
            **{k: v for k, v in self.server.settings.items() if k in _CARRIED},
        )
        self.server = self.ha.servers[0]
        self.failovers: list[float] = []
        self.offsets: dict[str, int] = {}

    def api(self) -> Chef:
        return Chef(self.server.url, "pivotal", self.server.pivotal_key.read_bytes())

    def setup(self) -> None:
        self.ha.start()
        self.server = self.ha.active()
        front = Front(self.ha.proxy.url, self.server.pivotal_key)
        # the nodes reach the service through HAProxy only
        self.populate(ClientFleet(front, ORG, self.workdir / "clients"))  # type: ignore[arg-type]

    def restart(self) -> float:
        """The failover: the standby takes over (timed from the kill's end), the killed server
        returns as the new standby, and HAProxy sends requests to the new active only."""
        killed = self.server
        started = time.monotonic()
        bound = self.lease_timeout + 5
        new = self.ha.active(seconds=bound + 30)
        took = time.monotonic() - started
        if new is killed:
            raise RuntimeError("the killed server is still active")
        if took > bound:
            self.record([f"failover took {took:.1f} s, more than lease_timeout + 5 s"])
        self.failovers.append(took)
        killed.start(role="standby")
        self.server = new
        self.ha.proxy.wait_backend()
        return took

    def new_log(self) -> str:
        text = []
        for server in self.ha.servers:
            key = server.host
            with open(server.log_path, "rb") as f:
                f.seek(self.offsets.get(key, 0))
                data = f.read()
            self.offsets[key] = self.offsets.get(key, 0) + len(data)
            text.append(data.decode(errors="replace"))
        return "".join(text)

    def drain(self, seconds: float) -> list[str]:
        self.ha.proxy.wait_backend()
        return super().drain(seconds)

    def run(self) -> Summary:
        try:
            summary = super().run()
        finally:
            self.ha.close()
        if self.failovers:
            times = sorted(self.failovers)
            self.progress(
                f"failover (kill to new active): min {times[0]:.2f} s, median "
                f"{times[len(times) // 2]:.2f} s, max {times[-1]:.2f} s over {len(times)} kills"
            )
        return summary


_CARRIED = (
    "heartbeat_interval",
    "voting_timeout",
    "wait_complete_time",
    "keep_alive_time",
    "log_segment_max_bytes",
)


def run_campaign(
    *, kills: int, seed: int, workdir: Path | None = None, keep: bool = False, **options: Any
) -> tuple[Summary, list[float]]:
    """Run it; returns the summary and the failover times. The work directory is removed
    afterwards unless ``keep`` or a violation."""
    own = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="ha-campaign-")) if own else workdir
    campaign = HaCampaign(kills=kills, seed=seed, workdir=directory, **options)
    summary = campaign.run()
    if own and not keep and not summary.violations:
        shutil.rmtree(directory, ignore_errors=True)
    return summary, campaign.failovers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.hakill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--kills", type=int, default=20, help="kills of the active (default 20)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--nodes", type=int, default=3, help="client processes (default 3)")
    parser.add_argument("--max-ops", type=int, default=8, help="operations between kills")
    parser.add_argument("--lease-timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--max-seconds", type=float, default=3600, help="time bound")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    summary, failovers = run_campaign(
        kills=args.kills,
        seed=seed,
        nodes=args.nodes,
        workdir=args.workdir,
        keep=args.keep,
        max_ops=args.max_ops,
        lease_timeout=args.lease_timeout,
        max_seconds=args.max_seconds,
        segment_max_bytes=16 * 1024,  # snapshots in the database now and then
    )
    if args.json:
        print(json.dumps({**summary.__dict__, "failovers": failovers}, indent=2))
    else:
        print(summary.line())
        for v in summary.violations:
            print(f"  {v}")
    return 0 if not summary.violations else 1


if __name__ == "__main__":
    sys.exit(main())
