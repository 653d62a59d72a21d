"""Files the CLI writes for an operator: keys, configs, certificates, never half-written and
never readable by others when they hold a secret."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.knife.session import CliError

__all__ = ["check_target", "write_private"]


def check_target(path: Path, force: bool) -> None:
    """Refuse early (before any server change) a file that must not or cannot be written."""
    if path.is_dir():
        raise CliError(f"{path} is a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise CliError(f"{path} already exists; not overwriting it (use --force)")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path}: {parent} is not a directory")


def write_private(path: Path, text: str, *, force: bool = False, mode: int = 0o600) -> None:
    """Write ``text`` to a new file that has ``mode`` from its creation; with ``force`` an
    existing file is replaced atomically (a new file renamed over it), never rewritten."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    replace = force and (path.exists() or path.is_symlink())
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if replace else path
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise CliError(f"{path} already exists; not overwriting it (use --force)") from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(target, path)
    except OSError as exc:
        if replace:
            target.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
