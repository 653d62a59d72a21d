"""Live output on disk: one append-only file per node and stream of a job.

Output is kept beside the event log, not in it: a flood of 1,000 nodes printing a MiB each
must not pass through the reducer, the snapshots or the server's memory. What is kept of a
stream (``core.output`` decides) is appended to ``STATE_DIR/output/JOB_ID/NODE.stdout|stderr``
as it arrives; the server holds only each stream's length while its job is live. A killed
server loses nothing the kernel took (the files are written, not buffered here). Durable before
visible, as for the event log: a chunk is acknowledged to its node, shown in the feed and
readable over REST only once an fsync pass has covered it (group commit: one pass for all that
arrived meanwhile). After a restart a stream's length is the file's.

Writes happen on the trio thread: appending a 32 KiB chunk to the page cache costs about as
much as decoding the message that carried it. A write that fails (a full disk) loses that
chunk, is logged, and never takes the server down.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from urllib.parse import quote

import trio

from appliance.core import output as coreoutput
from appliance.core.output import Kept, StreamState

log = logging.getLogger("pushy.output")

_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class Outputs:
    def __init__(self, root: str, limit: int) -> None:
        self.root = root
        self.limit = limit
        self._streams: dict[tuple[str, str, str], StreamState] = {}
        self._dirty: set[str] = set()
        self._new_dirs: set[str] = set()
        self.write_errors = 0
        # durable before visible: a chunk's ack and event wait for its fsync (`when_synced`),
        # and a read shows only what is synced (`_visible`: file bytes per live stream)
        self._file_bytes: dict[tuple[str, str, str], int] = {}
        self._visible: dict[tuple[str, str, str], int] = {}
        self._due: list[Callable[[], None]] = []
        self._wake = trio.Event()

    def path(self, job_id: str, node: str, stream: str) -> str:
        # job ids are hex; a node name is quoted so that no name can leave the job's folder
        return os.path.join(self.root, job_id, f"{quote(node, safe='')}.{stream}")

    def take(self, job_id: str, node: str, stream: str, offset: int, data: bytes) -> Kept | None:
        """Keep what of a chunk is new (appended to its file); None when nothing was."""
        key = (job_id, node, stream)
        state = self._streams.get(key)
        path = self.path(job_id, node, stream)
        try:
            if state is None:
                state = self._streams[key] = self._state_on_disk(path)
                self._file_bytes[key] = self._visible[key] = _size(path)
            kept = coreoutput.accept(state, offset, data, self.limit)
            if kept is None:
                return None
            self._append(path, kept.data + kept.marker)
            self._file_bytes[key] += len(kept.data) + len(kept.marker)
        except OSError as exc:
            self.write_errors += 1
            log.error("output of %s for job %s (%s) not kept: %s", node, job_id, stream, exc)
            return None
        return kept

    def when_synced(self, then: Callable[[], None]) -> None:
        """Run ``then`` (a chunk's ack and event) once what was appended so far is on disk.
        Batched: one fsync pass for all that came meanwhile."""
        self._due.append(then)
        self._wake.set()

    def _append(self, path: str, data: bytes) -> None:
        try:
            fd = os.open(path, _APPEND, 0o600)
        except FileNotFoundError:  # the job's first output (and maybe the server's)
            folder = os.path.dirname(path)
            for each in (self.root, folder):  # private, as everything in the state directory
                try:
                    os.mkdir(each, 0o700)
                except FileExistsError:
                    pass
            self._new_dirs.add(folder)
            fd = os.open(path, _APPEND, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        self._dirty.add(path)

    def _state_on_disk(self, path: str) -> StreamState:
        """A stream seen first since the start: what the file holds (a restart resumes it)."""
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return StreamState()
        marker = coreoutput.truncation_marker(self.limit)
        if size >= len(marker):
            with open(path, "rb") as f:
                f.seek(size - len(marker))
                if f.read() == marker:
                    return StreamState(size - len(marker), truncated=True)
        return StreamState(size)

    async def read(self, job_id: str, node: str, stream: str) -> bytes | None:
        """A stream's kept bytes (marker included), or None when the node sent none."""
        path = self.path(job_id, node, stream)

        visible = self._visible.get((job_id, node, stream))  # None: not live (all on disk)

        def read_file() -> bytes | None:
            try:
                with open(path, "rb") as f:
                    return f.read() if visible is None else f.read(visible)
            except FileNotFoundError:
                return None

        return await trio.to_thread.run_sync(read_file)

    async def streamed(self, job_id: str, node: str) -> bool:
        """Whether the node sent live output (on either stream) for the job."""
        return any(os.path.exists(self.path(job_id, node, s)) for s in coreoutput.STREAMS)

    def forget(self, job_ids: Iterable[str]) -> None:
        """The jobs retired: their streams' lengths leave memory (the files stay)."""
        gone = set(job_ids)
        for key in [k for k in self._streams if k[0] in gone]:
            del self._streams[key]
            self._file_bytes.pop(key, None)
            self._visible.pop(key, None)

    async def remove(self, job_ids: Iterable[str]) -> None:
        """The jobs left the state (retention): their output goes too."""
        ids = list(job_ids)
        folders = [os.path.join(self.root, job_id) for job_id in ids]
        self.forget(ids)
        for folder in folders:
            await trio.to_thread.run_sync(shutil.rmtree, folder, True)

    async def sync_forever(self) -> None:
        """Group commit: fsync what was appended as soon as there is any (what arrives
        meanwhile waits for the next pass), then make it visible and run what waited."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.sync()

    async def sync(self) -> bool:
        """fsync what was appended; True (and what waited for it runs) unless that failed:
        then nothing is shown or acknowledged (the node sends it again)."""
        files, self._dirty = self._dirty, set()
        folders, self._new_dirs = self._new_dirs, set()
        due, self._due = self._due, []
        sizes = dict(self._file_bytes)  # what this pass makes durable, hence readable
        ok = True
        if files or folders:
            ok = await trio.to_thread.run_sync(_fsync_all, [*files, *folders, self.root])
        if not ok:  # tried again with the next pass (the node resends what was not acked)
            self._dirty |= files
            self._new_dirs |= folders
            return False
        for key, size in sizes.items():
            if key in self._visible:
                self._visible[key] = max(self._visible[key], size)
        for done in due:
            try:
                done()
            except Exception:
                log.exception("after an output fsync")
        return True


def _fsync_all(paths: list[str]) -> bool:
    ok = True
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("fsync of %s failed: %s", path, exc)
            ok = False
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            log.error("fsync of %s failed: %s", path, exc)
            ok = False
        finally:
            os.close(fd)
    return ok


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
