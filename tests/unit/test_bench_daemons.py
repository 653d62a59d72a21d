"""The process-group daemons of ``pushy bench salt`` (``bench.daemons``) and their PSS
(``bench.procstat``): a group ends whole, waits are bounded, memory is counted."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from appliance.bench.daemons import Group, free_port, stop_groups, timed, wait_until
from appliance.bench.procstat import group_pss_mib, pss_kib

# a leader that forks a child and then waits: the group, not the leader, must end
FORKING = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"


def _members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                found.append(int(entry))
    return found


def test_a_group_is_stopped_whole_and_counted(tmp_path):
    group = Group("forker", [sys.executable, "-c", FORKING], tmp_path / "forker.log")
    try:
        assert group.pgid == group.proc.pid and group.alive()
        wait_until(lambda: len(_members(group.pgid)) >= 2, 10, "the child forked", step=0.05)
        assert group_pss_mib({group.pgid}) > 0
    finally:
        stop_groups([group], seconds=5)
    assert not group.alive() and _members(group.pgid) == []
    assert group.proc.returncode is not None


def test_pss_of_this_process():
    assert pss_kib(Path(f"/proc/{os.getpid()}")) > 0


def test_wait_until_returns_the_value_or_says_what_timed_out():
    assert wait_until(lambda: 42, 1, "never") == 42
    with pytest.raises(RuntimeError, match="the thing: not within 0 s"):
        wait_until(lambda: None, 0.05, "the thing", step=0.01)


def test_timed_and_free_port():
    seconds, out = timed([sys.executable, "-c", "print('hi')"], 30)
    assert seconds > 0 and out.returncode == 0 and out.stdout == "hi\n"
    assert 0 < free_port() < 65536
