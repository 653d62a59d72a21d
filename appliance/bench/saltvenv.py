"""Salt's own virtualenv for ``pushy bench salt``: where it is, whether it runs salt, making it.

Kept apart from the scenario so that salt's Python never meets ours; why salt is pinned is said
in ``peer_salt``'s docstring and docs/benchmarks-salt.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SALT_VERSION = "3008.4"
ENV_SALT_VENV = "PUSHY_SALT_VENV"


def default_salt_venv() -> Path:
    env = os.environ.get(ENV_SALT_VENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / ".venv-salt"


def salt_unavailable_reason(venv: Path) -> str | None:
    """None when ``venv`` runs salt (master, minion, CLI); else why not, in one line."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no salt virtualenv at {venv} (make it with: pushy bench salt --setup)"
    for tool in ("salt", "salt-master", "salt-minion"):
        if not (venv / "bin" / tool).exists():
            return f"{venv}/bin/{tool} is missing (pip install salt=={SALT_VERSION} into {venv})"
    try:
        out = subprocess.run(
            [
                str(python),
                "-c",
                "import salt.client, salt.version; print(salt.version.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python}: {exc}"
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"salt does not import in {venv}: {tail}"
    return None


def setup_salt_venv(venv: Path) -> str | None:
    """Create ``venv`` with salt; None on success, else the error (pip's last lines)."""
    steps = [
        [
            sys.executable if not getattr(sys, "frozen", False) else "python3",
            "-m",
            "venv",
            str(venv),
        ],
        [str(venv / "bin" / "pip"), "install", "-q", f"salt=={SALT_VERSION}"],
    ]
    if (venv / "bin" / "python").exists():
        steps = steps[1:]
    for command in steps:
        print("+ " + " ".join(command), flush=True)
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{command[0]}: {exc}"
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.splitlines() if not ln.startswith("WARNING")]
            return " | ".join(lines[-3:]) or f"exit {out.returncode}"
    return None


def salt_version(venv: Path) -> str | None:
    """The version salt reports in ``venv`` (None when it says nothing)."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import salt.version as v; print(v.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() or None
