"""The real server and the event log's format: state written by a newer release is refused
(exit 3, a message that says what to do, not one byte changed), and serves again as soon as
the release that reads it runs. The upgrade from a real earlier release is tested on its
packages under systemd (packaging/test-upgrade)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from appliance.core.migrations import FORMAT
from tests.support import Chef, Server, setup_org


def _files(state: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((state / "log").iterdir())
        if p.name != "LOCK"
    }


def _set_format(path: Path, fmt: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, fmt)
    path.write_bytes(bytes(data))


def test_state_of_a_newer_format_is_refused_with_exit_3_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Server(state) as srv:
        setup_org(srv, "acme", ())
        assert srv.stop() == 0
    segment = sorted((state / "log").glob("*.seg"))[-1]
    _set_format(segment, FORMAT + 1)  # as a later release would have written it
    before = _files(state)

    newer = Server(state)
    with pytest.raises(RuntimeError) as info:
        newer.start()
    assert newer.proc is not None and newer.proc.returncode == 3, info.value
    log = newer.log()
    assert f"written in format {FORMAT + 1}, by a newer release of pushy" in log
    assert segment.name in log and "downgrades are not supported" in log
    assert "install the release that wrote it" in log and "--recover" not in log
    assert _files(state) == before  # refused before anything was written

    refused = Server(state)
    with pytest.raises(RuntimeError):
        refused.start("--recover")  # --recover never "repairs" a newer format away
    assert refused.proc is not None and refused.proc.returncode == 3
    assert _files(state) == before

    _set_format(segment, FORMAT)  # the release that reads it is back
    with Server(state) as again:
        admin = Chef(again.url, "pivotal", again.pivotal_key.read_bytes())
        assert admin.get("/organizations/acme").status_code == 200
