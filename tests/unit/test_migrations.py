"""Record formats: a log written by an older release loads, migrated, and keeps its files; a
log holding a newer format is refused untouched; every format step ships its migration."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import orjson
import pytest

from appliance.core import migrations
from appliance.core.state import State, apply, to_records
from appliance.server import snapshots
from appliance.server.store import Store
from appliance.store.errors import UnsupportedFormat
from appliance.store.log import EventLog
from tests.unit.test_state import T0, build
from tests.unit.test_state_replay_speed import old_job_restore_records


def _format_1_log(directory: Path, records: list[dict], split: int) -> State:
    """What release 0.1.0 left: format-1 segments (the seq repeated in each payload) and a
    format-1 snapshot holding ``job_restore`` objects; returns the state it stands for."""
    log = EventLog(directory, segment_max_bytes=2**40, format=1)
    _, replay = log.open()
    assert list(replay) == []
    batch = [(seq, orjson.dumps({**r, "seq": seq})) for seq, r in enumerate(records, start=1)]
    log.append(batch[:split])
    before = State()
    for r in orjson.loads(orjson.dumps(records[:split])):
        apply(before, r)
    snapshot = [r for r in to_records(before) if r["type"] != "jobs_restore"]
    snapshot[1:1] = old_job_restore_records(before)
    log.write_snapshot(split, orjson.dumps(snapshot))
    log.append(batch[split:])
    log.close()
    after = State()
    for r in orjson.loads(orjson.dumps(records)):
        apply(after, r)
    return after


def _files(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((directory / "log").iterdir())
        if p.name != "LOCK"
    }


def _header_format(path: Path) -> int:
    return struct.unpack_from("<H", path.read_bytes(), 8)[0]


def test_a_format_1_log_loads_and_new_records_go_to_a_new_segment(tmp_path: Path) -> None:
    _, records = build()
    expected = _format_1_log(tmp_path, records, split=len(records) - 3)
    old_files = _files(tmp_path)

    store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    state = store.load()
    assert state.jobs == expected.jobs and state.node_keys == expected.node_keys
    assert state.identity == expected.identity and state.last_seq == len(records)
    assert store.report is not None and store.report.formats == {1}
    # the old files are untouched; appends go to a new segment in the current format
    now = _files(tmp_path)
    assert {k: now[k] for k in old_files} == old_files
    new = sorted(set(now) - set(old_files))
    assert new == [f"{len(records) + 1:020d}.seg"]
    assert _header_format(tmp_path / "log" / new[0]) == migrations.FORMAT
    store.log.append([(len(records) + 1, orjson.dumps({"type": "counters", "org_event_count": 7}))])
    store.log.close()

    again = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    state = again.load()
    again.log.close()
    assert state.jobs == expected.jobs and state.org_event_count == 7
    assert again.report is not None and again.report.formats == {1, migrations.FORMAT}


def test_a_snapshot_after_the_upgrade_is_in_the_current_format(tmp_path: Path) -> None:
    _, records = build()
    expected = _format_1_log(tmp_path, records, split=len(records) // 2)
    store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    store.load()
    # built as the server's snapshot child builds it: from the files, format 1 ones included
    payload = snapshots.build(tmp_path, store.log.last_seq, now=T0, linger=1e9, retention=0)
    store.log.write_snapshot(store.log.last_seq, payload)
    store.log.close()
    snaps = sorted((tmp_path / "log").glob("*.snap"))
    assert [_header_format(p) for p in snaps] == [1, migrations.FORMAT]
    again = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    state = again.load()
    again.log.close()
    assert state.jobs == expected.jobs
    assert again.report is not None and again.report.formats == {migrations.FORMAT}


def test_a_release_that_reads_only_format_1_refuses_the_upgraded_log_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downgrade: the log as the current release left it, opened by a release whose newest
    format is 1 (release 0.1.0 refuses the same way; the upgrade test runs it for real)."""
    _, records = build()
    _format_1_log(tmp_path, records, split=2)
    store = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
    store.load()
    store.log.close()
    files = _files(tmp_path)

    monkeypatch.setattr(migrations, "FORMAT", 1)
    for recover in (False, True):
        older = Store(tmp_path, segment_max_bytes=2**40, retention_days=0)
        with pytest.raises(UnsupportedFormat) as info:
            older.load(recover=recover)
        assert info.value.found == 2
        message = str(info.value)
        assert "written in format 2, by a newer release" in message
        assert "reads formats 1 to 1" in message and ".seg" in message
    assert _files(tmp_path) == files  # nothing cut, moved or rewritten


def test_every_older_format_has_its_migration() -> None:
    for fmt in range(migrations.OLDEST_FORMAT, migrations.FORMAT):
        assert fmt in migrations._RECORD_STEPS, f"no record migration from format {fmt}"
        assert fmt in migrations._SNAPSHOT_STEPS, f"no snapshot migration from format {fmt}"
    assert not migrations.readable(migrations.OLDEST_FORMAT - 1)
    assert not migrations.readable(migrations.FORMAT + 1)


def test_the_current_format_is_left_alone() -> None:
    record = {"type": "node_up", "org": "o", "node": "n", "incarnation": "i"}
    assert migrations.upgrade_record(dict(record), migrations.FORMAT) == record
    assert migrations.upgrade_snapshot([record], migrations.FORMAT) == [record]


def test_format_1_to_2_drops_the_payload_seq_and_turns_job_objects_into_rows() -> None:
    assert migrations.upgrade_record({"type": "node_down", "seq": 9}, 1) == {"type": "node_down"}
    live, _ = build()
    old = old_job_restore_records(live)
    upgraded = migrations.upgrade_snapshot(orjson.loads(orjson.dumps(old)), 1)
    assert {r["type"] for r in upgraded} == {"jobs_restore"}
    restored = State()
    for r in upgraded:
        apply(restored, r)
    assert restored.jobs == live.jobs


def test_an_unknown_write_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format 99"):
        EventLog(tmp_path, format=99)
