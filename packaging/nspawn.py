"""A Debian 12 machine with a live systemd, for testing the packages as an operator meets them.

Shared by ``packaging/test-systemd`` and ``packaging/test-upgrade`` (standard library only: it
runs with the host's ``python3``, before or without the project's venv). The root file system
is debootstrap's minbase plus systemd, dbus and procps, built once and cached as a tarball;
each test unpacks a fresh copy under /var/tmp and boots it with ``systemd-nspawn --boot`` in a
private network namespace (loopback only: the packages' default ports and listen addresses
are used as they are, and nothing is reachable from outside). Commands run inside through
``nsenter`` on the container's init, so ``systemctl`` and ``journalctl`` talk to its systemd.

Needs root, ``systemd-nspawn`` (Debian's systemd-container) and ``debootstrap``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PACKAGES = "systemd,systemd-sysv,dbus,procps"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Failed(Exception):
    """A check of a test did not hold; the message says what was seen."""


def mirror() -> str:
    """$MIRROR, else the Debian mirror apt uses on this host, else deb.debian.org."""
    if os.environ.get("MIRROR"):
        return os.environ["MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if "security" in line or len(words) < 2:
                continue
            if words[0] == "URIs:":
                return words[1]
            if words[0] == "deb":
                rest = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
                if rest:
                    return rest[0]
    return "http://deb.debian.org/debian"


def ensure_rootfs(cache_dir: Path) -> Path:
    """The cached root file system tarball, built with debootstrap when missing (~40 s)."""
    tarball = cache_dir / "bookworm-systemd.tar"
    if tarball.is_file() and tarball.stat().st_size > 0:
        return tarball
    if shutil.which("debootstrap") is None:
        raise Failed("debootstrap is not installed (apt-get install debootstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="fresh.", dir=cache_dir))
    log = cache_dir / "debootstrap.log"
    started = time.monotonic()
    try:
        os.chmod(fresh, 0o755)
        with open(log, "wb") as out:
            done = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                 str(fresh), mirror()],
                stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise Failed(f"debootstrap failed (exit {done.returncode}); see {log}")
        subprocess.run(["tar", "-C", str(fresh), "-cf", f"{tarball}.tmp", "."], check=True)
        os.replace(f"{tarball}.tmp", tarball)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(fresh)], check=False)
    print(f"rootfs: debootstrap took {time.monotonic() - started:.0f} s; cached as {tarball}")
    return tarball


class Container:
    """One booted container; a context manager that powers it off and deletes it."""

    def __init__(self, tarball: Path, name: str) -> None:
        self.tarball = tarball
        self.name = name
        self.root = Path()
        self.nspawn: subprocess.Popen | None = None
        self.init_pid = 0
        self.console = Path()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Container:
        if shutil.which("systemd-nspawn") is None:
            raise Failed("systemd-nspawn is not installed (apt-get install systemd-container)")
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir="/var/tmp"))
        try:
            subprocess.run(["tar", "-C", str(self.root), "-xf", str(self.tarball)], check=True)
            os.chmod(self.root, 0o755)
            (self.root / "etc/hostname").write_text(f"{self.name}\n")
            self.boot()
        except BaseException:
            self.__exit__()
            raise
        return self

    def boot(self, timeout: float = 90) -> None:
        self.console = self.root.with_name(self.root.name + ".console")
        with open(self.console, "wb") as out:
            self.nspawn = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no",
                 "--keep-unit", "--console=passive", "--private-network",
                 f"--machine={self.name}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.init_pid:
            if self.nspawn.poll() is not None:
                raise Failed(
                    f"systemd-nspawn exited ({self.nspawn.returncode}):\n{self._console()}"
                )
            if time.monotonic() > deadline:
                raise Failed(f"no container init after {timeout} s:\n{self._console()}")
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.init_pid = int(children.read_text().split()[0])
            time.sleep(0.1)
        state = self.wait(
            "the container's systemd to finish booting",
            lambda: self._booted(),
            max(1.0, deadline - time.monotonic()),
        )
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            print(f"container: systemd says '{state}'; failed units:\n{failed}")

    def _booted(self) -> str | None:
        out = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
        return out if out in ("running", "degraded") else None

    def _console(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def __exit__(self, *exc: object) -> None:
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                if self.init_pid:
                    with contextlib.suppress(Failed):
                        self.run("systemctl", "poweroff", check=False, timeout=20)
                try:
                    self.nspawn.wait(30)
                except subprocess.TimeoutExpired:
                    self.nspawn.send_signal(signal.SIGTERM)  # nspawn: orderly shutdown
                    try:
                        self.nspawn.wait(15)
                    except subprocess.TimeoutExpired:
                        self.nspawn.kill()
                        self.nspawn.wait(10)
        finally:
            self._remove()

    def _remove(self) -> None:
        if self.root != Path() and self.root.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)
        if self.console != Path():
            self.console.unlink(missing_ok=True)

    # -- inside ----------------------------------------------------------------------------
    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (all namespaces of the container's init, a clean environment)."""
        command = ["nsenter", "-t", str(self.init_pid), "-a", "env", "-i", f"PATH={PATH}",
                   "LANG=C.UTF-8", "HOME=/root", "TERM=dumb", *argv]  # fmt: skip
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, input=input,
                check=False, errors="replace",
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise Failed(f"{' '.join(argv)}: no end after {timeout} s") from exc
        if check and done.returncode != 0:
            raise Failed(
                f"{' '.join(argv)}: exit status {done.returncode}\n"
                f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}"
            )
        return done

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **kw)

    def put(self, source: Path, dest: str, mode: int = 0o644) -> str:
        """Copy a host file to ``dest`` inside (not under /tmp: the container mounts a tmpfs)."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        os.chmod(target, mode)
        return dest

    def write(self, dest: str, text: str, mode: int = 0o644) -> None:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        os.chmod(target, mode)

    def read(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()

    def exists(self, path: str) -> bool:
        return (self.root / path.lstrip("/")).exists()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p ...`` as a dict."""
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, *, lines: int = 0, cursor: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "-u", unit]
        if lines:
            argv += ["-n", str(lines)]
        if cursor:
            argv += ["--after-cursor", cursor]
        return self.run(*argv, check=False).stdout

    def cursor(self) -> str:
        """The journal's current end: pass it to ``journal(cursor=...)`` to read what follows."""
        out = self.run("journalctl", "--no-pager", "-n", "0", "--show-cursor", check=False).stdout
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        return ""

    def wait(
        self, what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5
    ) -> T:
        """Poll ``probe`` until it returns something other than None/False, at most ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if got is not None and got is not False:
                return got
            if time.monotonic() > deadline:
                raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)


class Steps:
    """Numbered, timed steps; the first failure prints what was seen, the journal, and exits 1."""

    def __init__(self, title: str, on_failure: Callable[[], str] | None = None) -> None:
        self.title = title
        self.on_failure = on_failure
        self.count = 0
        self.started = time.monotonic()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.count += 1
        t0 = time.monotonic()
        print(f"-- {self.count}. {what}", flush=True)
        try:
            yield
        except Exception as exc:
            print(f"{self.title}: FAILED at step {self.count} ({what}): {exc}", file=sys.stderr)
            if self.on_failure is not None:
                with contextlib.suppress(Exception):
                    print(self.on_failure(), file=sys.stderr)
            raise SystemExit(1) from exc
        print(f"   ok in {time.monotonic() - t0:.1f} s", flush=True)

    def done(self, summary: str) -> None:
        took = time.monotonic() - self.started
        print(f"{self.title}: OK, {self.count} steps in {took:.0f} s: {summary}")


def check(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)
