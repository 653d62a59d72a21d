"""Smoke tests of ``pushy bench salt``: the "not available" path always, the side-by-side run
(2 minions, 1 repeat) only where the salt virtualenv works. No timing is asserted."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pytest

from appliance.bench import peer_salt


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peer_salt.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def _result(folder: Path) -> dict:
    files = sorted(folder.glob("salt-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def _leftovers() -> set[int]:
    """Processes whose command line names one of the scenario's temporary directories."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/pushy-salt-" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def test_missing_venv_reports_not_available(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PUSHY_BENCH_RESULTS", str(tmp_path / "results"))
    missing = tmp_path / "no-such-venv"

    assert peer_salt.run(_args(salt_venv=missing, minions=2, repeat=1)) == 0

    out = capsys.readouterr().out
    assert f"salt: not available: no salt virtualenv at {missing}" in out
    doc = _result(tmp_path / "results")
    assert doc["scenario"] == "salt"
    assert doc["params"]["minions"] == 2
    assert doc["results"]["available"] is False
    assert str(missing) in doc["results"]["reason"]


def test_venv_without_salt_says_why(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # a Python that has no salt
    assert "salt is missing" in (peer_salt.salt_unavailable_reason(venv) or "")
    for tool in ("salt", "salt-master", "salt-minion"):
        (venv / "bin" / tool).write_text("#!/bin/sh\n")
    reason = peer_salt.salt_unavailable_reason(venv)
    assert reason is not None and reason.startswith(f"salt does not import in {venv}")
    assert "salt" in reason.split(":", 1)[1]  # the ImportError's last line


SALT_MISSING = peer_salt.salt_unavailable_reason(peer_salt.default_salt_venv())


@pytest.mark.skipif(
    SALT_MISSING is not None,
    reason=f"salt is not installed in the salt venv: {SALT_MISSING}",
)
def test_side_by_side_smoke(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PUSHY_BENCH_RESULTS", str(tmp_path / "results"))
    before = _leftovers()

    rc = peer_salt.run(_args(minions=2, repeat=1, job_timeout=30.0))

    out = capsys.readouterr().out
    assert rc == 0, out
    assert "salt/pushy" in out and "every node ok in every run" in out
    results = _result(tmp_path / "results")["results"]
    assert results["available"] is True and results["all_ok"] is True
    for side in ("salt", "pushy"):
        for measure in ("cli", "api"):
            runs = results[side][measure]
            assert len(runs) == 1 and runs[0]["ok"] == 2, (side, measure, runs)
        assert results[side]["idle_pss_mib"] > 0
    for measure in ("cli", "api"):
        assert results[f"{measure}_ratio_salt_over_pushy"] > 0
    # every daemon (salt forks its workers) is gone, and the temporary tree with it
    assert _leftovers() - before == set()
    root = re.search(r"\(in (/\S+)\)", out)
    assert root is not None, out
    assert not Path(root.group(1)).exists()
