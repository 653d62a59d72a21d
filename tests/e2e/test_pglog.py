"""The event log's PostgreSQL engine against a real PostgreSQL (issue 16, first step): records
and snapshots replay as they were written, a gap is refused, and the lease fences a deposed
writer, including one paused past its lease while its connection stays open."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from appliance.core import migrations
from appliance.core.keys import load_private_pem, private_pem, public_pem
from appliance.core.records import server_key
from appliance.core.replayfold import DeferredFold
from appliance.core.state import State, to_records
from appliance.store.errors import LogCorruption
from appliance.store.log import EventLog
from appliance.store.pglog import Fenced, PgLog
from tests.support import REPO, Server, setup_org

_dbs = iter(range(1, 10_000))


@pytest.fixture
def url(cluster) -> str:
    return cluster.createdb(f"pushy{next(_dbs)}")


def opened(url: str, holder: str = "a", **kw) -> tuple[PgLog, tuple | None, list]:
    log = PgLog(url, holder=holder, **kw)
    snapshot, records = log.open()
    return log, snapshot, list(records)


def active(url: str, holder: str = "a", **kw) -> PgLog:
    log, _, _ = opened(url, holder, **kw)
    assert log.try_acquire() is not None
    return log


def test_records_replay_in_order_after_a_reopen(url):
    log = active(url)
    log.append([(1, b"one"), (2, b"two")])
    log.append([(3, b"three")])
    log.release()
    log.close()
    again, snapshot, records = opened(url)
    assert snapshot is None
    assert records == [
        (n, p, migrations.FORMAT) for n, p in ((1, b"one"), (2, b"two"), (3, b"three"))
    ]
    assert again.last_seq == 3 and again.report.records_replayed == 3
    assert again.try_acquire() is not None  # released at once: no wait for the expiry
    again.append([(4, b"four")])
    with pytest.raises(ValueError, match="expected 5"):
        again.append([(6, b"six")])
    again.close()


def test_a_snapshot_is_the_base_and_older_records_go(url):
    log = active(url)
    log.append([(n, b"r%d" % n) for n in range(1, 6)])
    log.write_snapshot(3, b"state@3")
    log.append([(6, b"r6")])
    log.write_snapshot(6, b"state@6")  # the previous one (3) stays, records <= 3 go
    log.append([(7, b"r7")])
    log.close()
    again, snapshot, records = opened(url)
    assert snapshot == (b"state@6", migrations.FORMAT)
    assert [seq for seq, _, _ in records] == [7]
    with psycopg.connect(url) as conn:
        kept = [r[0] for r in conn.execute("SELECT seq FROM pushy_snapshots ORDER BY seq")]
        first = conn.execute("SELECT min(seq) FROM pushy_log").fetchone()[0]
    assert kept == [3, 6] and first == 4
    again.close()


def test_a_gap_in_the_log_is_refused(url):
    log = active(url)
    log.append([(1, b"a"), (2, b"b"), (3, b"c")])
    log.close()
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM pushy_log WHERE seq = 2")
    again = PgLog(url, holder="a")
    _, records = again.open()
    with pytest.raises(LogCorruption, match="a gap: record 3 after 1"):
        list(records)
    again.close()


def test_only_one_server_holds_the_lease(url):
    a = active(url, "a", lease_seconds=5)
    b, _, _ = opened(url, "b", lease_seconds=5)
    assert b.try_acquire() is None
    lease = b.lease()
    assert lease.holder == "a" and lease.epoch == a.epoch and 0 < lease.seconds_left <= 5
    a.renew()
    with pytest.raises(Fenced):
        b.append([(1, b"x")])  # never held: nothing written
    a.append([(1, b"x")])
    a.close()
    b.close()


def test_a_writer_paused_past_its_lease_is_fenced(url):
    """A stopped process keeps its connection (and would keep an advisory lock): the lease
    expires by the database's clock, a standby takes it, and the old writer's next append is
    refused in the same transaction that would have written it."""
    a = active(url, "a", lease_seconds=1)
    a.append([(1, b"from a")])
    b, _, records = opened(url, "b", lease_seconds=1)
    assert [seq for seq, _, _ in records] == [1]
    assert b.try_acquire() is None
    time.sleep(1.3)  # "a" paused past its lease: it never renewed
    assert b.try_acquire() == a.epoch + 1
    b.append([(2, b"from b")])
    with pytest.raises(Fenced, match="not the active server"):
        a.append([(2, b"late a")])
    with pytest.raises(Fenced):
        a.renew()
    assert a.epoch is None  # it knows it is a standby now
    assert [(s, p) for s, _, p in b.read_after(0)] == [(1, b"from a"), (2, b"from b")]
    a.close()
    b.close()


def test_an_expired_lease_stops_its_own_writes_before_anyone_takes_it(url):
    a = active(url, "a", lease_seconds=0.5)
    time.sleep(0.8)
    with pytest.raises(Fenced, match="expired"):
        a.append([(1, b"too late")])
    a.close()


def test_a_takeover_waits_for_an_append_in_flight(url):
    """The append holds the lease row (FOR SHARE) until it commits; the takeover's UPDATE of
    that row waits for it, so the old epoch's record lands before the new epoch starts."""
    a = active(url, "a", lease_seconds=0.5)
    with psycopg.connect(url) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("SELECT 1 FROM pushy_lease WHERE id = 1 FOR SHARE")  # as an append does
        time.sleep(0.7)  # expired meanwhile
        b, _, _ = opened(url, "b", lease_seconds=5)
        got: list = []
        taker = threading.Thread(target=lambda: got.append(b.try_acquire()))
        taker.start()
        taker.join(0.5)
        assert taker.is_alive(), "the takeover must wait for the row held by the append"
        blocker.execute("COMMIT")
        taker.join(10)
    assert got == [a.epoch + 1]
    a.close()
    b.close()


def test_a_database_restart_is_an_error_then_appends_go_on(cluster, url):
    log = active(url, lease_seconds=30)
    log.append([(1, b"before")])
    cluster.stop("immediate")
    cluster.start()
    with pytest.raises(OSError):
        log.append([(2, b"during")])  # the old connection is gone: reported, nothing written
    log.append([(2, b"after")])  # a new connection, the same lease
    assert [(s, p) for s, _, p in log.read_after(0)] == [(1, b"before"), (2, b"after")]
    log.close()


# ---------------------------------------------------------------------------------------------
# pushy admin migrate-store --from file --to URL


def replayed(snapshot, records) -> list:
    """The state a log replays to, as the records a snapshot of it would hold."""
    state = State()
    fold = DeferredFold(state)
    fold.replay(snapshot, records, None)
    fold.settle(lambda _job: True)
    return to_records(state)


def migrate(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "appliance", "admin", "migrate-store", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_migrate_store_copies_a_servers_log_and_refuses_what_it_must(cluster, tmp_path):
    state_dir = tmp_path / "state"
    # small segments: the server writes snapshots, so the copy starts from one
    server = Server(state_dir, log_segment_max_bytes=4096).start()
    try:
        admin, _ = setup_org(server, "mig", ("n1", "n2"))
        for i in range(6):  # jobs on nodes that never connect: each fails its quorum
            r = admin.post("/organizations/mig/pushy/jobs", {"command": f"c{i}", "nodes": ["n1"]})
            assert r.status_code == 201, r.text
        url = cluster.createdb("migrated")
        r = migrate("--to", url, "--state-dir", str(state_dir))
        assert r.returncode == 100 and "in use: stop the server first" in r.stderr, r.stderr
    finally:
        server.stop()
    assert list((state_dir / "log").glob("snapshot-*.snap")), "no snapshot was written"
    r = migrate("--to", url, "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^Copied the snapshot at seq \d+ and \d+ records", r.stdout), r.stdout
    source = EventLog(state_dir)
    snapshot, records = source.open()
    expected = replayed(snapshot, records)
    source.close()
    target = PgLog(url, holder="check")
    snapshot, records = target.open()
    copied = replayed(snapshot, records)
    # the server's RSA key went in too, so that every server sharing the database signs alike
    key = load_private_pem((state_dir / "server.pem").read_bytes())
    assert copied == expected[:1] + [server_key(private_pem(key), public_pem(key))] + expected[1:]
    assert target.last_seq == source.last_seq + 1
    target.close()
    again = migrate("--to", url, "--state-dir", str(state_dir))
    assert again.returncode == 100 and "already holds an event log" in again.stderr, again.stderr
    bad = migrate("--to", "mysql://x/y", "--state-dir", str(state_dir))
    assert bad.returncode == 100 and "--to takes a PostgreSQL URL" in bad.stderr


def test_a_standby_follows_the_active_as_it_writes(url):
    a = active(url, "a")
    a.append([(1, b"one")])
    standby, _, records = opened(url, "b")
    seen = [seq for seq, _, _ in records]
    assert seen == [1]

    def write_later() -> None:
        time.sleep(0.3)
        a.append([(2, b"two"), (3, b"three")])

    writer = threading.Thread(target=write_later)
    writer.start()
    started = time.monotonic()
    got = standby.wait_after(1, timeout=20)
    waited = time.monotonic() - started
    writer.join()
    assert [(s, p) for s, _, p in got] == [(2, b"two"), (3, b"three")]
    assert waited < 10, "woken by the notification, not by the timeout"
    assert standby.wait_after(3, timeout=0.2) == []  # nothing new: back after the timeout
    a.close()
    standby.close()


def test_a_standby_far_behind_reads_the_log_in_bounded_steps(url):
    a = active(url, "a")
    a.append([(seq, b"r%d" % seq) for seq in range(1, 13)])
    standby, _, records = opened(url, "b")
    assert [seq for seq, _, _ in records] == list(range(1, 13))
    a.append([(seq, b"r%d" % seq) for seq in range(13, 31)])
    steps, last = [], 12
    for _ in range(10):  # bounded: 18 new records in steps of at most 5
        got = standby.wait_after(last, timeout=0.2, limit=5)
        if not got:
            break
        steps.append(len(got))
        assert [s for s, _, _ in got] == list(range(last + 1, last + 1 + len(got)))
        last = got[-1][0]
    assert steps == [5, 5, 5, 3]
    assert last == 30
    a.close()
    standby.close()
