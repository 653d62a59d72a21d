"""What a job gets besides its command line: its environment and its file (client-knife.md §A.4).

Decided against the original (which wrote ``{file_dir}/pushy_file{date}-{pid}-{rand}`` owned
by the daemon, mode per umask, never deleted, in a directory it did not check):

* ``file_dir`` is created if missing (0755) and refused when it is not a real directory owned
  by us or is writable by group/others: a job file (and its path, which the job trusts) must
  not be swappable by another local user, e.g. in a pre-created ``/tmp/chef-push``;
* each job gets ``{file_dir}/pushy-{job_id}-{random}/`` (0700) holding ``pushy_file`` (0600),
  both owned by the job's user, and both are removed when the job ends;
* ``CHEF_PUSH_JOB_FILE``, ``CHEF_PUSH_NODE_NAME`` and ``CHEF_PUSH_JOB_ID`` always come from
  the client: a value in the daemon's or the job's environment never reaches the job (when no
  file was sent, ``CHEF_PUSH_JOB_FILE`` is removed rather than passed through).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping, Sequence

__all__ = [
    "JOB_FILE_NAME",
    "JobFileError",
    "build_env",
    "dir_exists",
    "ids_of",
    "remove_job_file",
    "user_exists",
    "write_job_file",
]

log = logging.getLogger(__name__)

JOB_FILE_NAME = "pushy_file"
_JOB_DIR_PREFIX = "pushy-"
_ENV_PREFIX = "CHEF_PUSH_ENV_"
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# systemd's handshake with the client daemon itself: a job given these could speak to the
# service manager as the client (readiness, watchdog) or claim its sockets
_SERVICE_MANAGER_VARS = frozenset(
    ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
)


class JobFileError(OSError):
    """The job file cannot be written safely (the job then ends ``failed``)."""


def build_env(
    base: Mapping[str, str],
    job_env: Mapping[str, str] | None,
    *,
    allowed_overwritable: Sequence[str] | None,
    node_name: str,
    job_id: str,
    job_file: str | None,
) -> dict[str, str]:
    """The job's environment: the daemon's ``base``, then the job's ``env`` (each key not in
    ``allowed_overwritable`` renamed ``CHEF_PUSH_ENV_<key>`` when that list is set, even to
    ``[]``; passed as is when it is None), then the client's own ``CHEF_PUSH_*`` values."""
    env = {k: v for k, v in base.items() if k not in _SERVICE_MANAGER_VARS}
    allowed = None if allowed_overwritable is None else frozenset(allowed_overwritable)
    for key, value in (job_env or {}).items():
        if allowed is not None and key not in allowed:
            key = _ENV_PREFIX + key
        env[key] = value
    env.pop("CHEF_PUSH_JOB_FILE", None)
    if job_file is not None:
        env["CHEF_PUSH_JOB_FILE"] = job_file
    env["CHEF_PUSH_NODE_NAME"] = node_name
    env["CHEF_PUSH_JOB_ID"] = job_id
    return env


def user_exists(name: str) -> bool:
    """Commit check for ``user``: ``getpwnam`` succeeds."""
    try:
        pwd.getpwnam(name)
    except (KeyError, ValueError, TypeError):
        return False
    return True


def dir_exists(path: str) -> bool:
    """Commit check for ``dir``: it is a directory (following symlinks, as chdir does)."""
    try:
        return os.path.isdir(path)
    except (TypeError, ValueError):
        return False


def ids_of(user: str | None) -> tuple[int | None, int | None]:
    """``(uid, gid)`` of ``user``, ``(None, None)`` for the daemon's own. KeyError if unknown."""
    if user is None:
        return None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _safe_file_dir(file_dir: str) -> None:
    """Create ``file_dir`` if missing, then refuse it unless it is a real directory owned by
    us and writable by nobody else."""
    try:
        os.mkdir(file_dir, 0o755)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(file_dir, 0o755, exist_ok=True)
    info = os.lstat(file_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise JobFileError(f"file_dir {file_dir!r} is not a directory (a symlink?); refusing it")
    if info.st_uid != os.geteuid():
        raise JobFileError(
            f"file_dir {file_dir!r} is owned by uid {info.st_uid}, not by the client "
            f"(uid {os.geteuid()}); refusing it"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise JobFileError(
            f"file_dir {file_dir!r} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); refusing it"
        )


def write_job_file(
    file_dir: str, job_id: str, content: bytes, *, uid: int | None, gid: int | None
) -> str:
    """Write ``content`` to ``{file_dir}/pushy-{job_id}-{random}/pushy_file`` and return the
    path. The directory (0700) and the file (0600) belong to ``uid``/``gid`` when given."""
    _safe_file_dir(file_dir)
    safe_id = _UNSAFE_ID_CHARS.sub("_", job_id)[:64]
    job_dir = tempfile.mkdtemp(prefix=f"{_JOB_DIR_PREFIX}{safe_id}-", dir=file_dir)
    path = os.path.join(job_dir, JOB_FILE_NAME)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            view = memoryview(content)
            for _ in range(len(content) + 1):  # each write moves at least one byte
                if not view:
                    break
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o600)
            if uid is not None or gid is not None:
                os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        finally:
            os.close(fd)
        if uid is not None or gid is not None:
            os.chown(job_dir, -1 if uid is None else uid, -1 if gid is None else gid)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return path


def remove_job_file(path: str) -> None:
    """Remove a path made by ``write_job_file``, with its directory and whatever the job left
    in it. Anything else is left alone (logged). Never raises."""
    job_dir = os.path.dirname(path)
    if os.path.basename(path) != JOB_FILE_NAME or not os.path.basename(job_dir).startswith(
        _JOB_DIR_PREFIX
    ):
        log.warning("Not removing %r: it is not a job file path", path)
        return
    # rmtree does not follow symlinks the job may have left in its directory.
    shutil.rmtree(job_dir, onerror=_log_rmtree_error)


def _log_rmtree_error(function: object, path: str, exc_info: tuple) -> None:
    log.warning("Could not remove %r after the job: %s", path, exc_info[1])
