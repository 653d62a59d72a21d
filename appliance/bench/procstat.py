"""CPU and memory of a process from /proc (the server we started, or the fleet's workers)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (its threads included), or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in KiB; empty when the process is gone."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of ``pid``."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return None
    return None


def raise_open_files(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE (inherited by children) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = hard
    target = min(wanted, ceiling)
    if target > hard:
        try:  # root (CAP_SYS_RESOURCE) may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            return target
        except (ValueError, OSError):
            target = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


@dataclass
class CpuMeter:
    """CPU % of a process between ``mark()`` and ``read()`` (100 % = one core busy)."""

    pid: int
    cpu0: float = 0.0
    t0: float = 0.0

    def mark(self) -> None:
        self.cpu0 = cpu_seconds(self.pid) or 0.0
        self.t0 = time.monotonic()

    def read(self) -> float | None:
        cpu = cpu_seconds(self.pid)
        wall = time.monotonic() - self.t0
        if cpu is None or wall <= 0:
            return None
        return 100.0 * (cpu - self.cpu0) / wall


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and
    iowait), to tell whether the machine itself was saturated during a phase."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def group_pss_mib(pgids: set[int]) -> float:
    """Summed PSS of every process in these process groups, from /proc (RSS where the kernel
    has no smaps_rollup): forked workers share pages, which RSS would count once per process."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) in pgids:  # pgrp
                total_kib += pss_kib(entry)
        except (OSError, ValueError, IndexError):
            continue
    return total_kib / 1024


def pss_kib(proc_dir: Path) -> int:
    """PSS of the process at ``/proc/PID`` in KiB (RSS where there is no smaps_rollup)."""
    try:
        for line in (proc_dir / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int((proc_dir / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
