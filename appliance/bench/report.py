"""What every scenario prints and keeps: an aligned text table and a JSON file with the machine.

Shared by all scenarios (``replay`` too): ``table(rows)`` for stdout, ``write(scenario, params,
results)`` for ``bench/results/SCENARIO-YYYYmmdd-HHMMSS.json``.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

RESULTS_DIR = Path("bench") / "results"
ENV_RESULTS_DIR = "PUSHY_BENCH_RESULTS"

__all__ = ["RESULTS_DIR", "machine", "percentile", "results_dir", "table", "write"]


def results_dir() -> Path:
    """``$PUSHY_BENCH_RESULTS`` or ``bench/results`` under the current directory."""
    return Path(os.environ.get(ENV_RESULTS_DIR) or RESULTS_DIR)


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare two runs: cores, memory, Python, commit, load."""
    facts: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "commit": _commit(),
    }
    try:
        facts["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_mib"] = int(line.split()[1]) // 1024
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts


def _commit() -> str | None:
    root = Path(__file__).resolve().parent.parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write(
    scenario: str,
    params: dict[str, Any],
    results: dict[str, Any],
    *,
    directory: Path | None = None,
) -> Path:
    """Write ``{"scenario", "date", "machine", "params", "results"}``; returns the path."""
    folder = directory if directory is not None else results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{scenario}-{stamp}.json"
    n = 1
    while path.exists() and n < 1000:  # two runs in the same second
        n += 1
        path = folder / f"{scenario}-{stamp}-{n}.json"
    document = {
        "scenario": scenario,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "params": params,
        "results": results,
    }
    path.write_bytes(
        orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    return path


def table(rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text: the first row is the header, numbers are right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    if not cells:
        return ""
    width = max(len(r) for r in cells)
    cells = [r + [""] * (width - len(r)) for r in cells]
    sizes = [max(len(r[i]) for r in cells) for i in range(width)]
    numeric = [
        all(_is_number(row[i]) for row in rows[1:] if i < len(row) and row[i] is not None)
        for i in range(width)
    ]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            c.rjust(sizes[i]) if numeric[i] and index > 0 else c.ljust(sizes[i])
            for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * s for s in sizes))
    return "\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0 or abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.3f}"
        return f"{value:.2g}"
    return str(value)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank); None for no values."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[min(rank, len(data)) - 1]
