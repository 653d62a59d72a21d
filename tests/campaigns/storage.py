"""Storage faults against the real server process: torn tails, flipped bits, full and
read-only disks.

Each case starts ``python -m appliance server`` on a damaged copy of a state directory that
real REST traffic and a protocol-level node produced, and checks what an operator would:

* torn tail: the log cut at every byte offset of its last record (as if the last write were
  interrupted): the server starts, says it cut a torn tail, and serves exactly the state of the
  log without that record; every job acknowledged before it is there;
* flipped bit in the middle of the log (each field of the segment header and of a record):
  the server refuses to start, naming the file and the offset and pointing at ``--recover``;
  with ``--recover`` it serves exactly the state of the records before the damage and says
  what it cut (a flip in the reserved header bytes harms nothing and must change nothing; one
  in the format version is never "recovered" away);
* flipped bit in the newest snapshot: refused; ``--recover`` falls back to the older snapshot
  and the log after it, losing nothing; a damaged older snapshot is not even read;
* full disk (a small tmpfs): writes get 503 with a JSON error, reads and the node protocol go
  on, the server keeps running, and writes work again once space returns, without a restart;
* read-only state directory: at start a clear error and a non-zero exit; while running (the
  kernel's emergency read-only remount of ext4 after an error, the only way a file system
  goes read-only under an open writer) writes get 503, reads go on, and after fsck and a
  restart everything acknowledged is there.

The mount cases need root (``mount``); they raise ``MountUnavailable`` otherwise.

Run ``python -m tests.campaigns.storage --all-offsets --flips 100 --snapshot-flips 50``;
tests/e2e/test_storage_faults.py is the CI slice.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import zmq

from tests.e2e.helpers import Node, join_node, run_to_success
from tests.support import (
    Chef,
    ClientFleet,
    Server,
    WireNode,
    new_user,
    set_group,
    setup_org,
    wait_for,
)

SETTINGS: dict[str, Any] = {"voting_timeout": 2, "wait_complete_time": 0.5}
ORG = "stor"
SEG_HEADER = 12
REC_HEADER = 16
SNAP_HEADER = 26
TORN = "torn tail"
# every job of the histories has ended; one whose creation was torn must end too ("crashed")
FINAL = ("complete", "quorum_failed", "crashed", "timed_out", "aborted")


# ---- the on-disk format, read independently of appliance/store ---------------------------------


@dataclass(frozen=True)
class Rec:
    """One record of a segment: where it starts and ends in the file, its seq and payload."""

    start: int
    end: int
    seq: int
    payload: bytes

    @property
    def record(self) -> dict[str, Any]:
        return json.loads(self.payload)


def read_records(segment: Path) -> list[Rec]:
    """The valid records of a segment, in order (stops at the first bad one)."""
    data = segment.read_bytes()
    out: list[Rec] = []
    off = SEG_HEADER
    while off + REC_HEADER <= len(data):
        length, crc, seq = struct.unpack_from("<IIQ", data, off)
        end = off + REC_HEADER + length
        if end > len(data) or zlib.crc32(data[off + 8 : end]) != crc:
            break
        out.append(Rec(off, end, seq, data[off + REC_HEADER : end]))
        off = end
    return out


def segments(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "log").glob("*.seg"))


def snapshots(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "log").glob("snapshot-*.snap"))


def flip_bit(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# ---- what the server serves ----------------------------------------------------------------------


def admin_of(server: Server) -> Chef:
    return Chef(server.url, "pivotal", server.pivotal_key.read_bytes())


def get_json(chef: Chef, path: str) -> Any:
    r = chef.get(path)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def view(server: Server) -> dict[str, Any]:
    """What an operator can read back: identity objects, every job in full, the outputs."""
    admin = admin_of(server)
    try:
        orgs = sorted(get_json(admin, "/organizations"))
        out: dict[str, Any] = {"orgs": orgs, "users": sorted(get_json(admin, "/users"))}
        for org in orgs:
            base = f"/organizations/{org}"
            out[org] = {
                "clients": sorted(get_json(admin, f"{base}/clients")),
                "groups": sorted(get_json(admin, f"{base}/groups")),
                "org_users": sorted(
                    u["user"]["username"] for u in get_json(admin, f"{base}/users")
                ),
            }
            jobs = {}
            for summary in get_json(admin, f"{base}/pushy/jobs"):
                job = get_json(admin, f"{base}/pushy/jobs/{summary['id']}?include_file=true")
                job.pop("updated_at", None)
                outputs = {}
                for node in job["nodes"].get("succeeded", []):
                    r = admin.get(
                        f"{base}/pushy/jobs/{job['id']}/output/{node}/stdout",
                        headers={"Accept": "application/octet-stream"},
                    )
                    outputs[node] = (r.status_code, r.text)
                job["outputs"] = outputs
                jobs[job["id"]] = job
            out[org]["jobs"] = jobs
        return out
    finally:
        admin.http.close()


def job_ids(v: dict[str, Any]) -> set[str]:
    return {j for org in v["orgs"] for j in v[org]["jobs"]}


# ---- a state directory with real history -------------------------------------------------------


@dataclass
class History:
    """A stopped server's state directory (never modified: cases work on copies) and what
    its clients were told."""

    state_dir: Path
    settings: dict[str, Any]
    acked_jobs: list[str]
    acked_clients: list[str]
    last: str = "job"  # the last operation: "job" or "identity"
    full: dict[str, Any] = field(default_factory=dict)

    def last_segment(self) -> Path:
        return segments(self.state_dir)[-1]


def build_history(
    workdir: Path, *, last: str = "job", snapshots_every: int | None = None
) -> History:
    """Drive a server through identity changes and jobs (one run by a node, with output), end
    with ``last`` ("job": a job creation, "identity": a client creation) and stop it."""
    settings = dict(SETTINGS)
    if snapshots_every is not None:
        settings["log_segment_max_bytes"] = snapshots_every
    state_dir = workdir / "history" / "state"
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    ctx = zmq.Context()
    server = Server(state_dir, **settings).start()
    acked_jobs: list[str] = []
    admin = None
    try:
        admin, keys = setup_org(server, ORG, ("n1", "n2"))
        alice = new_user(admin, "alice", ORG)
        alice.http.close()
        set_group(admin, ORG, "ops", users=["alice"], clients=["n1"])
        node = Node(server, ORG, "n1", keys["n1"], ctx=ctx)
        node.connect()
        join_node(node)
        rounds = 1 if snapshots_every is None else 6
        for i in range(rounds):
            if i < 2:
                job = _post(admin, ["n1"], {"env": {"ROUND": str(i)}})
                acked_jobs.append(job)
                run_to_success(node, job, stdout=f"round {i} output\n")
                wait_for(lambda j=job: _status(admin, j) == "complete", 15, (node,), what=job)
            # a job on an unavailable node fails at once: a second, different life cycle
            acked_jobs.append(_post(admin, ["n2"]))
            r = admin.post(f"/organizations/{ORG}/clients", {"name": f"c{i}", "create_key": True})
            assert r.status_code == 201, r.text
        node.close()
        # its going down is a record too: let it happen before the last operation
        wait_for(
            lambda: (
                get_json(admin, f"/organizations/{ORG}/pushy/node_states/n1")["status"] == "offline"
            ),
            30,
            what="n1 offline",
        )
        clients = ["n1", "n2", *(f"c{i}" for i in range(rounds))]
        if last == "job":
            acked_jobs.append(_post(admin, ["n2"], {"command": "chef-client", "quorum": 1}))
        elif last == "identity":
            r = admin.post(f"/organizations/{ORG}/clients", {"name": "last", "create_key": True})
            assert r.status_code == 201, r.text
            clients.append("last")
        else:
            raise ValueError(f"unknown last operation {last!r}")
        admin.http.close()
        rc = server.stop()
        assert rc == 0, server.log()
    finally:
        server.kill()
        ctx.destroy(linger=0)
    history = History(state_dir, settings, acked_jobs, clients, last)
    if snapshots_every is None:
        # with small segments the last batch may have filled its segment: sealed, snapshotted,
        # and the newest segment empty (when depends on the committer's timing), so only a
        # history without snapshots is sure to end with the last operation's records
        kinds = {"job": "job_step", "identity": "client_created"}
        last_rec = read_records(history.last_segment())[-1].record
        if not last_rec["type"].startswith(kinds[last].split("_")[0]):
            raise AssertionError(f"the log does not end with the {last} operation: {last_rec}")
    return history


def _post(admin: Chef, nodes: list[str], extra: dict[str, Any] | None = None) -> str:
    body = {"command": "chef-client", "nodes": nodes, **(extra or {})}
    r = admin.post(f"/organizations/{ORG}/pushy/jobs", body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _status(admin: Chef, job_id: str) -> str:
    return get_json(admin, f"/organizations/{ORG}/pushy/jobs/{job_id}")["status"]


# ---- one server start on a damaged copy --------------------------------------------------------


@dataclass
class Outcome:
    started: bool
    returncode: int | None
    log: str
    view: dict[str, Any] | None = None
    state_dir: Path | None = None


def start_copy(
    history: History,
    workdir: Path,
    name: str,
    damage: Callable[[Path], None] = lambda _: None,
    *flags: str,
) -> Outcome:
    """Copy the history's state dir, ``damage`` the copy, start the real server on it; read
    the view if it started, then kill -9 it (the copy is thrown away)."""
    case = workdir / name
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    state = case / "state"
    shutil.copytree(history.state_dir, state)
    damage(state)
    server = Server(state, **history.settings)
    try:
        try:
            server.start(*flags)
        except RuntimeError:
            assert server.proc is not None
            return Outcome(False, server.proc.returncode, server.log(), state_dir=state)
        try:
            served = view(server)
        except (AssertionError, httpx.HTTPError) as exc:  # e.g. nobody can authenticate
            served = {"unreadable": str(exc)[:500]}
        return Outcome(True, None, server.log(), served, state)
    finally:
        server.kill()


@dataclass
class Tally:
    """Counts and failures of a campaign part."""

    name: str
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
            progress(f"FAILURE {self.name}: {what[:2000]}")
        return ok

    def count(self, kind: str) -> None:
        self.cases += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---- torn tails ----------------------------------------------------------------------------------


def torn_tail_offsets(length: int, every: bool) -> list[int]:
    """Cut points inside a record of ``length`` bytes (0: the record is gone whole); all of
    them, or a sample: the whole record, the first byte, around the header's end, the middle
    and the last byte."""
    if every:
        return list(range(length))
    picks = {0, 1, REC_HEADER - 1, REC_HEADER, length // 2, length - 1}
    return sorted(p for p in picks if 0 <= p < length)


def check_torn_tails(history: History, workdir: Path, *, every: bool, tally: Tally) -> None:
    """Cut the log inside its last record at each chosen offset and start the server on it."""
    segment = history.last_segment()
    records = read_records(segment)
    last = records[-1]
    seg_name = segment.name
    length = last.end - last.start
    before = {r.record["job"]["id"] for r in records[:-1] if r.record.get("type") == "job_created"}
    acked_before = [j for j in history.acked_jobs if j in before]
    assert len(acked_before) >= len(history.acked_jobs) - 1, "the history lost a job"
    reference: dict[str, Any] | None = None
    for k in torn_tail_offsets(length, every):
        cut = last.start + k
        out = start_copy(
            history,
            workdir,
            "torn",
            lambda state, cut=cut: truncate(state / "log" / seg_name, cut),
        )
        tally.count("torn-tail")
        what = f"cut at byte {k} of {length} of the last record (file offset {cut})"
        if not tally.check(out.started, f"{what}: the server did not start:\n{out.log[-3000:]}"):
            continue
        assert out.view is not None and out.state_dir is not None
        reported = re.search(
            rf"{TORN} in \S*{re.escape(seg_name)} at offset {last.start}\b", out.log
        )
        if k == 0:
            tally.check(TORN not in out.log, f"{what}: a cut was reported:\n{out.log[-3000:]}")
            reference = out.view
        else:
            tally.check(bool(reported), f"{what}: no torn tail reported:\n{out.log[-3000:]}")
        stuck = [
            j
            for org in out.view["orgs"]
            for j, job in out.view[org]["jobs"].items()
            if job["status"] not in FINAL
        ]
        tally.check(not stuck, f"{what}: jobs left unfinished: {stuck}")
        missing = [j for j in acked_before if j not in job_ids(out.view)]
        tally.check(not missing, f"{what}: acknowledged jobs missing: {missing}")
        clients = out.view.get(ORG, {}).get("clients", [])
        required = (
            history.acked_clients[:-1] if history.last == "identity" else history.acked_clients
        )
        lost = [c for c in required if c not in clients]
        tally.check(not lost, f"{what}: acknowledged clients missing: {lost}")
        if reference is not None:
            tally.check(
                out.view == reference,
                f"{what}: the state differs from the log without its last record:\n"
                f"{_diff(reference, out.view)}",
            )
        size = (out.state_dir / "log" / seg_name).stat().st_size
        tally.check(size >= last.start, f"{what}: the log was cut below the last record ({size})")


def _diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = []
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                lines.append(_diff(a.get(key), b.get(key), f"{path}/{key}"))
        return "\n".join(lines)
    return f"{path}: {json.dumps(a)[:300]} != {json.dumps(b)[:300]}"


# ---- flipped bits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    kind: str  # the field hit, e.g. "record-crc"
    file: str  # the file name in log/
    offset: int  # byte offset in the file
    bit: int
    record: int | None = None  # index of the damaged record (log flips)


SEGMENT_FIELDS = (("segment-magic", 0, 8), ("segment-version", 8, 2), ("segment-reserved", 10, 2))
RECORD_FIELDS = (("record-length", 0, 4), ("record-crc", 4, 4), ("record-seq", 8, 8))
SNAPSHOT_FIELDS = (
    ("snapshot-magic", 0, 8),
    ("snapshot-version", 8, 2),
    ("snapshot-seq", 10, 8),
    ("snapshot-length", 18, 4),
    ("snapshot-crc", 22, 4),
)


LOG_FLIP_KINDS = (
    *(k for k, _, _ in SEGMENT_FIELDS),
    *(k for k, _, _ in RECORD_FIELDS),
    "record-payload",
)
SNAPSHOT_FLIP_KINDS = (*(k for k, _, _ in SNAPSHOT_FIELDS), "snapshot-payload", "older-snapshot")


def log_flip(history: History, rng: random.Random, kind: str) -> Flip:
    """A random flip of field ``kind`` (see LOG_FLIP_KINDS); record flips hit a record in the
    middle, never the last one (damage there cannot be told from a torn write)."""
    segment = history.last_segment()
    records = read_records(segment)
    bit = rng.randrange(8)
    for k, start, size in SEGMENT_FIELDS:
        if k == kind:
            return Flip(kind, segment.name, start + rng.randrange(size), bit)
    i = rng.randrange(1, len(records) - 1)
    r = records[i]
    if kind == "record-payload":
        return Flip(kind, segment.name, rng.randrange(r.start + REC_HEADER, r.end), bit, i)
    start, size = next((s, n) for k, s, n in RECORD_FIELDS if k == kind)
    return Flip(kind, segment.name, r.start + start + rng.randrange(size), bit, i)


def log_flips(history: History, rng: random.Random, count: int) -> list[Flip]:
    """``count`` flips: one of each kind first, then random positions anywhere before the last
    record, classified by the field they hit."""
    segment = history.last_segment()
    records = read_records(segment)
    flips = [log_flip(history, rng, kind) for kind in LOG_FLIP_KINDS[:count]]
    while len(flips) < count:
        offset = rng.randrange(records[-1].start)
        flips.append(_classify_log_flip(segment.name, records, offset, rng.randrange(8)))
    return flips


def _classify_log_flip(name: str, records: list[Rec], offset: int, bit: int) -> Flip:
    if offset < SEG_HEADER:
        kind = next(k for k, s, n in SEGMENT_FIELDS if s <= offset < s + n)
        return Flip(kind, name, offset, bit)
    for i, r in enumerate(records):
        if r.start <= offset < r.end:
            rel = offset - r.start
            kind = next((k for k, s, n in RECORD_FIELDS if s <= rel < s + n), "record-payload")
            return Flip(kind, name, offset, bit, i)
    raise ValueError(f"offset {offset} is in no record")


def check_log_flips(history: History, workdir: Path, flips: list[Flip], tally: Tally) -> None:
    """Each flip: refused without --recover (file, offset, advice named); with --recover the
    server serves exactly the records before the damage and says what it cut."""
    records = read_records(history.last_segment())
    prefixes: dict[int, dict[str, Any]] = {}

    def prefix_view(i: int) -> dict[str, Any]:
        """The state of the log cut cleanly before record ``i`` (a boundary: nothing torn)."""
        if i not in prefixes:
            cut = records[i].start if i < len(records) else records[-1].end
            seg = history.last_segment().name
            out = start_copy(history, workdir, "prefix", lambda s: truncate(s / "log" / seg, cut))
            prefixes[i] = out.view if out.started else {"did not start": out.log[-3000:]}
        return prefixes[i]

    for flip in flips:
        tally.count(flip.kind)
        what = f"{flip.kind} flip: bit {flip.bit} of byte {flip.offset} of {flip.file}"

        def damage(state: Path, flip: Flip = flip) -> None:
            flip_bit(state / "log" / flip.file, flip.offset, flip.bit)

        plain = start_copy(history, workdir, "flip", damage)
        if flip.kind == "segment-reserved":
            # no data lives there: nothing may be lost or refused
            if tally.check(plain.started, f"{what}: refused:\n{plain.log[-3000:]}"):
                tally.check(plain.view == history.full, f"{what}: state changed")
            continue
        if not tally.check(
            not plain.started and plain.returncode not in (None, 0),
            f"{what}: the server started on a corrupt log:\n{plain.log[-3000:]}",
        ):
            continue
        named = flip.file in plain.log
        if flip.kind == "segment-version":
            tally.check(
                named
                and "cannot be read" in plain.log
                and "this release reads formats" in plain.log
                and "--recover" not in plain.log,
                f"{what}: unclear refusal:\n{plain.log[-3000:]}",
            )
            again = start_copy(history, workdir, "flip", damage, "--recover")
            tally.check(
                not again.started and again.returncode not in (None, 0),
                f"{what}: --recover discarded a log of another format:\n{again.log[-3000:]}",
            )
            continue
        where = 0 if flip.record is None else records[flip.record].start
        tally.check(
            named and f"offset {where}" in plain.log and "--recover" in plain.log,
            f"{what}: the refusal does not name file, offset {where} and --recover:\n"
            f"{plain.log[-3000:]}",
        )
        recovered = start_copy(history, workdir, "flip", damage, "--recover")
        if not tally.check(
            recovered.started, f"{what}: --recover did not start:\n{recovered.log[-3000:]}"
        ):
            continue
        if flip.kind == "segment-magic":
            # the records behind the damaged header are intact: nothing is dropped
            tally.check(
                recovered.view == history.full,
                f"{what}: --recover lost data:\n{_diff(history.full, recovered.view)}",
            )
            tally.check(
                "rewriting the header" in recovered.log,
                f"{what}: --recover does not say it repaired the header:\n{recovered.log[-3000:]}",
            )
            continue
        expect = prefix_view(flip.record)
        tally.check(
            recovered.view == expect,
            f"{what}: --recover did not keep exactly the good records:\n"
            f"{_diff(expect, recovered.view)}",
        )
        tally.check(
            "recovering to the last good record" in recovered.log
            and re.search(r"dropped \d+ bytes .* kept in \S+\.corrupt-\d+", recovered.log),
            f"{what}: --recover does not say what it dropped:\n{recovered.log[-3000:]}",
        )


def snapshot_flip(history: History, rng: random.Random, kind: str) -> Flip:
    """A random flip of ``kind`` (see SNAPSHOT_FLIP_KINDS) in the newest snapshot, or anywhere
    in the older one ("older-snapshot")."""
    snaps = snapshots(history.state_dir)
    assert len(snaps) >= 2, f"the history has {len(snaps)} snapshots, not 2"
    newest, older = snaps[-1], snaps[-2]
    bit = rng.randrange(8)
    if kind == "older-snapshot":
        return Flip(kind, older.name, rng.randrange(older.stat().st_size), bit)
    if kind == "snapshot-payload":
        return Flip(kind, newest.name, rng.randrange(SNAP_HEADER, newest.stat().st_size), bit)
    start, size = next((s, n) for k, s, n in SNAPSHOT_FIELDS if k == kind)
    return Flip(kind, newest.name, start + rng.randrange(size), bit)


def snapshot_flips(history: History, rng: random.Random, count: int) -> list[Flip]:
    """``count`` flips: one of each kind first, then random positions in the newest snapshot."""
    flips = [snapshot_flip(history, rng, kind) for kind in SNAPSHOT_FLIP_KINDS[:count]]
    newest = snapshots(history.state_dir)[-1]
    size = newest.stat().st_size
    while len(flips) < count:
        offset = rng.randrange(size)
        kind = next((k for k, s, n in SNAPSHOT_FIELDS if s <= offset < s + n), "snapshot-payload")
        flips.append(Flip(kind, newest.name, offset, rng.randrange(8)))
    return flips


def check_snapshot_flips(history: History, workdir: Path, flips: list[Flip], tally: Tally) -> None:
    """Refused (the file named, --recover advised, except for a version it cannot read); with
    --recover the older snapshot and the log after it give the full state: nothing lost."""
    for flip in flips:
        tally.count(flip.kind)
        what = f"{flip.kind} flip: bit {flip.bit} of byte {flip.offset} of {flip.file}"

        def damage(state: Path, flip: Flip = flip) -> None:
            flip_bit(state / "log" / flip.file, flip.offset, flip.bit)

        plain = start_copy(history, workdir, "snapflip", damage)
        if flip.kind == "older-snapshot":
            if tally.check(plain.started, f"{what}: refused:\n{plain.log[-3000:]}"):
                tally.check(plain.view == history.full, f"{what}: state changed")
            continue
        if not tally.check(
            not plain.started and plain.returncode not in (None, 0),
            f"{what}: the server started on a damaged snapshot:\n{plain.log[-3000:]}",
        ):
            continue
        recovered = start_copy(history, workdir, "snapflip", damage, "--recover")
        if flip.kind == "snapshot-version":
            tally.check(
                flip.file in plain.log and "--recover" not in plain.log,
                f"{what}: unclear refusal:\n{plain.log[-3000:]}",
            )
            tally.check(
                not recovered.started,
                f"{what}: --recover discarded a snapshot of another format:\n{recovered.log[-3000:]}",
            )
            continue
        tally.check(
            flip.file in plain.log and "--recover" in plain.log,
            f"{what}: the refusal does not name the file and --recover:\n{plain.log[-3000:]}",
        )
        if tally.check(
            recovered.started, f"{what}: --recover did not start:\n{recovered.log[-3000:]}"
        ):
            tally.check(
                recovered.view == history.full,
                f"{what}: the fallback lost data:\n{_diff(history.full, recovered.view)}",
            )
            tally.check(
                "falling back" in recovered.log,
                f"{what}: --recover does not say it fell back:\n{recovered.log[-3000:]}",
            )


def full_view(history: History, workdir: Path) -> dict[str, Any]:
    out = start_copy(history, workdir, "full")
    assert out.started and out.view is not None, out.log[-3000:]
    assert "torn tail" not in out.log and "corrupt" not in out.log, out.log[-3000:]
    history.full = out.view
    return out.view


# ---- mounts ----------------------------------------------------------------------------------------


class MountUnavailable(Exception):
    """This process may not mount file systems (not root, or a restricted container)."""


def _run(*command: str) -> None:
    r = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise OSError(f"{' '.join(command)}: exit {r.returncode}: {r.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size_kb`` KiB mounted at ``path`` (unmounted at the end)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k,mode=0700{options}"
    try:
        _run("mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        raise MountUnavailable(f"cannot mount a tmpfs: {exc}") from exc
    try:
        yield path
    finally:
        _unmount(path)


@contextlib.contextmanager
def ext4(image: Path, path: Path, size_mb: int = 8) -> Iterator[str]:
    """An ext4 file system in ``image`` (a loop device) mounted at ``path`` with
    ``errors=remount-ro``; yields its device name as in /sys/fs/ext4."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        with open(image, "wb") as f:
            f.truncate(size_mb << 20)
        _run("mkfs.ext4", "-q", "-F", str(image))
        _mount_ext4(image, path)
    except (OSError, subprocess.SubprocessError) as exc:
        raise MountUnavailable(f"cannot mount an ext4 loop image: {exc}") from exc
    try:
        yield _device_of(path)
    finally:
        _unmount(path)


def _mount_ext4(image: Path, path: Path) -> None:
    _run("mount", "-o", "loop,errors=remount-ro", str(image), str(path))


def _device_of(path: Path) -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1 and fields[1] == str(path):
            return Path(fields[0]).name
    raise OSError(f"{path} is not mounted")


def _unmount(path: Path) -> None:
    for _ in range(50):
        r = subprocess.run(["umount", str(path)], capture_output=True, timeout=60)
        if r.returncode == 0 or not os.path.ismount(path):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last page; returns the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        for _ in range(1 << 20):  # bounded: 4 GiB
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler
    raise AssertionError(f"{directory} did not fill up")


# ---- the full disk -----------------------------------------------------------------------------


@dataclass
class Writes:
    """The write attempts of a case and what the server answered."""

    admin: Chef
    org: str
    acked_jobs: list[str] = field(default_factory=list)
    acked_clients: list[str] = field(default_factory=list)
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    refused: list[tuple[str, str]] = field(default_factory=list)
    counter: int = 0

    def post_job(self, nodes: list[str], command: str = "chef-client") -> httpx.Response:
        body = {"command": command, "nodes": nodes, "capture_output": True}
        r = self.admin.post(f"/organizations/{self.org}/pushy/jobs", body)
        if r.status_code == 201:
            self.acked_jobs.append(r.json()["id"])
        return r

    def post_client(self) -> httpx.Response:
        self.counter += 1
        name = f"w{self.counter}"
        r = self.admin.post(
            f"/organizations/{self.org}/clients", {"name": name, "create_key": True}
        )
        if r.status_code == 201:
            self.acked_clients.append(name)
        return r


def error_body(r: httpx.Response) -> str:
    """The JSON error of a 503 (AssertionError if it is not one)."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body.get("error"), body
    return str(body["error"])


def check_refused_writes(server: Server, writes: Writes, node_key: str) -> dict[str, str]:
    """Every kind of write ends in a 503 with a JSON error; returns the errors by kind.

    A full file system still takes a small record in the unused end of the log's last page,
    so each kind is tried until refused (a bounded number of times); what was accepted is
    acknowledged and remembered in ``writes``, what was refused must never appear."""
    admin, org = writes.admin, writes.org
    errors = {}

    def until_refused(kind: str, attempt: Callable[[int], tuple[str, httpx.Response]]) -> None:
        for i in range(50):
            name, r = attempt(i)
            if r.status_code not in (200, 201):
                errors[kind] = error_body(r)
                writes.refused.append((kind, name))
                return
            writes.accepted.append((kind, name))
        raise AssertionError(f"{kind}: 50 writes accepted on a full file system")

    def job(i: int) -> tuple[str, httpx.Response]:
        r = writes.post_job(["n1"])
        return (r.json()["id"] if r.status_code == 201 else ""), r

    def client(i: int) -> tuple[str, httpx.Response]:
        r = writes.post_client()
        return f"w{writes.counter}", r

    until_refused("job", job)
    until_refused("client", client)
    until_refused(
        "user",
        lambda i: (
            f"nobody{i}",
            admin.post("/users", {"username": f"nobody{i}", "create_key": True}),
        ),
    )
    until_refused(
        "group",
        lambda i: (
            f"nogroup{i}",
            admin.post(f"/organizations/{org}/groups", {"groupname": f"nogroup{i}"}),
        ),
    )
    until_refused(
        "org",
        lambda i: (
            f"noorg{i}",
            admin.post("/organizations", {"name": f"noorg{i}", "full_name": "x"}),
        ),
    )
    # a node's config fetch makes a new session key (n2 has no client running)
    fetch = WireNode(server, org, "n2", node_key)
    until_refused("config", lambda i: ("n2", fetch.fetch_config()))
    fetch.chef.http.close()
    return errors


def check_none_refused(writes: Writes, v: dict[str, Any]) -> None:
    """Nothing a 503 answered exists."""
    for kind, name in writes.refused:
        present = {
            "job": False,
            "client": name in v.get(writes.org, {}).get("clients", []),
            "user": name in v["users"],
            "group": name in v.get(writes.org, {}).get("groups", []),
            "org": name in v["orgs"],
            "config": False,
        }[kind]
        assert not present, f"refused {kind} {name} exists"


def check_reads(server: Server, fleet: ClientFleet, writes: Writes) -> None:
    """Reads go on, and so does the node protocol (n1 stays available), the server runs."""
    admin, org = writes.admin, writes.org
    base = f"/organizations/{org}/pushy"
    listed = {j["id"] for j in get_json(admin, f"{base}/jobs")}
    assert set(writes.acked_jobs) <= listed, (writes.acked_jobs, listed)
    for job in writes.acked_jobs:
        get_json(admin, f"{base}/jobs/{job}")
    fleet.wait_available("n1")
    get_json(admin, f"/organizations/{org}/clients")
    r = httpx.get(f"{server.url}/pushy/_status", timeout=10)
    assert r.status_code == 200, r.text
    assert server.proc is not None and server.proc.poll() is None, server.log()


WHITELIST = '{"chef-client"=>"echo done", "slow"=>"sleep 2", "hold"=>"sleep 60"}'


def _fleet(server: Server, directory: Path, *more: str) -> tuple[ClientFleet, str]:
    """Node n1 (and ``more``) with a real ``pushy client``; n2 registered without one.
    Returns n2's key."""
    fleet = ClientFleet(server, ORG, directory)
    for name in ("n1", *more):
        fleet.add(name, whitelist=WHITELIST)
    n2 = fleet.add("n2", start=False)
    fleet.wait_available("n1", *more)
    return fleet, n2.key_path.read_text()


def _restart_log(server: Server, since: int) -> str:
    with open(server.log_path, errors="replace") as f:
        f.seek(since)
        return f.read()


def run_full_disk(workdir: Path, size_kb: int = 1024, *, abort: bool = True) -> dict[str, Any]:
    """The full-disk case on a tmpfs; returns facts for the report. AssertionError on failure.

    With ``abort``, a job running on n3 is also aborted while the disk is full: the abort
    takes effect at once and the server answers after at most its bound (5 s) without the
    record on disk; the record must reach the disk once space returns."""
    # the state dir is the mount point: the server's own log and ready file stay outside
    state = workdir / "fulldisk" / "state"
    facts: dict[str, Any] = {}
    with tmpfs(state, size_kb):
        server = Server(state, **SETTINGS).start()
        fleet = None
        try:
            more = ("n3",) if abort else ()
            fleet, n2_key = _fleet(server, workdir / "fulldisk" / "clients", *more)
            writes = Writes(fleet.admin, ORG)
            assert writes.post_job(["n1"]).status_code == 201
            assert fleet.wait_job(writes.acked_jobs[-1])["status"] == "complete"
            # acknowledged before the disk fills, finished while it is full: its steps wait
            # in the committer's queue until space returns
            assert writes.post_job(["n1"], "slow").status_code == 201
            slow = writes.acked_jobs[-1]
            hold = None
            if abort:
                assert writes.post_job(["n3"], "hold").status_code == 201
                hold = writes.acked_jobs[-1]
                wait_for(lambda: fleet.job(hold)["status"] == "running", 20, what="hold runs")
            filler = fill(state)
            # the segment's last page may still take a few records: write until refused
            for _ in range(200):
                r = writes.post_job(["n2"])
                if r.status_code != 201:
                    break
            facts["jobs_acked_on_the_last_page"] = len(writes.acked_jobs) - 2
            facts["first_refusal"] = error_body(r)
            facts["errors"] = check_refused_writes(server, writes, n2_key)
            check_reads(server, fleet, writes)
            assert fleet.wait_job(slow)["status"] == "complete"
            if hold is not None:
                r = fleet.admin.post(f"/organizations/{ORG}/pushy/jobs/{hold}/abort")
                facts["abort_on_a_full_disk"] = r.status_code
                assert r.status_code in (200, 503), r.text
                if r.status_code == 503:
                    error_body(r)
                assert fleet.wait_job(hold)["status"] == "aborted"
                fleet.wait_available("n3")
            full = view(server)
            filler.unlink()
            # space is back: the same writes work, without a restart
            r = wait_for(
                lambda: (x := writes.post_job(["n1"])).status_code == 201 and x,
                20,
                what="a job accepted once space returned",
            )
            assert fleet.wait_job(writes.acked_jobs[-1])["status"] == "complete"
            assert writes.post_client().status_code == 201
            fetch = WireNode(server, ORG, "n2", n2_key)
            assert fetch.fetch_config().status_code == 200
            fetch.chef.http.close()
            before = view(server)
            assert {k: v for k, v in full[ORG]["jobs"].items()} == {
                k: v for k, v in before[ORG]["jobs"].items() if k in full[ORG]["jobs"]
            }
            fleet.admin.http.close()
            assert server.stop() == 0, server.log()
            since = server.log_path.stat().st_size
            server.start()
            log = _restart_log(server, since)
            assert TORN not in log and "corrupt" not in log, log
            after = view(server)
            assert after == before, _diff(before, after)
            assert set(writes.acked_jobs) <= job_ids(after)
            assert set(writes.acked_clients) <= set(after[ORG]["clients"])
            check_none_refused(writes, after)
            facts["accepted_on_a_full_disk"] = writes.accepted
            assert after[ORG]["jobs"][slow]["status"] == "complete"
            assert after[ORG]["jobs"][slow]["outputs"]["n1"][0] == 200
            if hold is not None:
                assert after[ORG]["jobs"][hold]["status"] == "aborted"
            facts["acked_jobs"] = len(writes.acked_jobs)
        finally:
            if fleet is not None:
                fleet.close()
            server.kill()
    return facts


# ---- the read-only state directory -----------------------------------------------------------------


def run_read_only_at_start(workdir: Path) -> dict[str, str]:
    """A state dir on a file system mounted read-only: a clear error and exit status 1, both
    for an existing state and for a first start. Returns the error lines."""
    state = workdir / "rostart" / "state"
    empty = workdir / "rostart" / "empty"
    found = {}
    with tmpfs(state, 4096), tmpfs(empty, 64, ",ro"):
        server = Server(state, **SETTINGS).start()
        assert server.stop() == 0, server.log()
        _run("mount", "-o", "remount,ro", str(state))
        for name, state_dir in (("existing", state), ("first start", empty)):
            srv = Server(state_dir, **SETTINGS)
            try:
                srv.start()
            except RuntimeError:
                pass
            else:
                srv.kill()
                raise AssertionError(f"{name}: the server started on a read-only state dir")
            assert srv.proc is not None and srv.proc.returncode == 1, srv.log()
            line = next(
                (ln for ln in srv.log().splitlines() if "cannot start" in ln), srv.log()[-2000:]
            )
            assert "Read-only file system" in line and str(state_dir) in line, srv.log()
            assert "Traceback" not in srv.log(), srv.log()
            found[name] = line
    return found


def run_read_only_while_running(workdir: Path) -> dict[str, Any]:
    """ext4 goes read-only under the running server (the kernel's answer to an error):
    writes 503, reads go on; stop, fsck, mount, restart: everything acknowledged is there."""
    state = workdir / "rorun" / "state"
    image = workdir / "rorun" / "ext4.img"
    facts: dict[str, Any] = {}
    with ext4(image, state) as device:
        trigger = Path(f"/sys/fs/ext4/{device}/trigger_fs_error")
        if not trigger.exists():
            raise MountUnavailable(f"{trigger} is missing: cannot make ext4 fail")
        server = Server(state, **SETTINGS).start()
        fleet = None
        try:
            fleet, n2_key = _fleet(server, workdir / "rorun" / "clients")
            writes = Writes(fleet.admin, ORG)
            assert writes.post_job(["n1"]).status_code == 201
            assert fleet.wait_job(writes.acked_jobs[-1])["status"] == "complete"
            assert writes.post_client().status_code == 201
            before = view(server)
            trigger.write_text("pushy storage campaign\n")
            try:  # the kernel now refuses every write there (/proc/mounts may say emergency_ro)
                (state / "probe").write_bytes(b"x")
            except OSError as exc:
                assert exc.errno == errno.EROFS, exc
            else:
                raise AssertionError(f"{state} is still writable: {_mount_options(state)}")
            facts["errors"] = check_refused_writes(server, writes, n2_key)
            check_reads(server, fleet, writes)
            assert view(server) == before
            assert not writes.accepted, writes.accepted  # read-only: not even a small write
            fleet.close()
            fleet.admin.http.close()
            facts["stop_status"] = server.stop()
        finally:
            if fleet is not None:
                fleet.close()
            server.kill()
        _unmount(state)
        r = subprocess.run(
            ["e2fsck", "-fy", str(image)], capture_output=True, text=True, timeout=120
        )
        facts["fsck_status"] = r.returncode
        assert r.returncode in (0, 1), r.stdout + r.stderr
        _mount_ext4(image, state)
        since = server.log_path.stat().st_size
        try:
            server.start()
            log = _restart_log(server, since)
            assert "corrupt" not in log, log
            facts["torn_tail_at_restart"] = TORN in log
            after = view(server)
            assert after == before, _diff(before, after)
            admin = admin_of(server)
            r = admin.post(
                f"/organizations/{ORG}/pushy/jobs", {"command": "chef-client", "nodes": ["n2"]}
            )
            assert r.status_code == 201, r.text
            admin.http.close()
        finally:
            server.kill()
    return facts


def _mount_options(path: Path) -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == str(path):
            return fields[3] + ","
    return ""


# ---- the campaign ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.campaigns.storage",
        description="Storage faults against the real server: torn tails, bit flips in the log "
        "and in snapshots, a full disk, a read-only state dir.",
    )
    parser.add_argument(
        "--all-offsets", action="store_true", help="cut at every byte of the last record"
    )
    parser.add_argument("--flips", type=int, default=100, help="bit flips in the log")
    parser.add_argument("--snapshot-flips", type=int, default=50, help="bit flips in snapshots")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-mounts", action="store_true", help="skip the full/read-only disks")
    parser.add_argument("--max-seconds", type=float, default=4 * 3600)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--no-job-torn-tail",
        action="store_true",
        help="skip the torn tails of the job history (its flips still run)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    progress(f"storage campaign: seed {seed}")
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + args.max_seconds
    tallies: list[Tally] = []
    with tempfile.TemporaryDirectory(prefix="pushy-storage-") as tmp:
        workdir = args.workdir or Path(tmp)
        for last in ("job", "identity"):
            if time.monotonic() > deadline:
                break
            history = build_history(workdir / f"h-{last}", last=last)
            full_view(history, workdir / f"h-{last}")
            if not (last == "job" and args.no_job_torn_tail):
                tally = Tally(f"torn tail ({last})")
                tallies.append(tally)
                check_torn_tails(
                    history, workdir / f"h-{last}", every=args.all_offsets, tally=tally
                )
                progress(f"{tally.name}: {tally.cases} offsets, {len(tally.failures)} failures")
            if last == "job":
                tally = Tally("log bit flips")
                tallies.append(tally)
                flips = log_flips(history, rng, args.flips)
                for i in range(0, len(flips), 10):
                    if time.monotonic() > deadline:
                        break
                    check_log_flips(history, workdir / "h-job", flips[i : i + 10], tally)
                    progress(f"{tally.name}: {tally.cases} flips, {len(tally.failures)} failures")
        if time.monotonic() < deadline and args.snapshot_flips:
            history = build_history(workdir / "h-snap", snapshots_every=4096)
            full_view(history, workdir / "h-snap")
            tally = Tally("snapshot bit flips")
            tallies.append(tally)
            flips = snapshot_flips(history, rng, args.snapshot_flips)
            for i in range(0, len(flips), 10):
                if time.monotonic() > deadline:
                    break
                check_snapshot_flips(history, workdir / "h-snap", flips[i : i + 10], tally)
                progress(f"{tally.name}: {tally.cases} flips, {len(tally.failures)} failures")
        if not args.no_mounts:
            for name, case in (
                ("full disk", run_full_disk),
                ("read-only at start", run_read_only_at_start),
                ("read-only while running", run_read_only_while_running),
            ):
                tally = Tally(name)
                tallies.append(tally)
                tally.count(name)
                try:
                    facts = case(workdir)
                    progress(f"{name}: ok {json.dumps(facts, default=str)[:1500]}")
                except MountUnavailable as exc:
                    progress(f"{name}: skipped: {exc}")
                except AssertionError as exc:
                    tally.check(False, f"{name}: {exc}")
    elapsed = time.monotonic() - started
    total = sum(t.cases for t in tallies)
    failures = sum(len(t.failures) for t in tallies)
    print(f"storage campaign, seed {seed}, {elapsed:.0f} s")
    for t in tallies:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(t.kinds.items()))
        print(f"  {t.name}: {t.cases} cases ({kinds}), {len(t.failures)} failures")
    print(f"  total: {total} cases, {failures} failures")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
