"""Live output on disk (appliance/server/outputs.py), in a temporary folder."""

from __future__ import annotations

import os
import shutil

import pytest

from appliance.core.output import Kept, truncation_marker
from appliance.server.outputs import Outputs

J = "0123456789abcdef0123456789abcdef"
K = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "output")


def content(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_take_appends_what_is_new(root):
    out = Outputs(root, 100)
    assert out.take(J, "node1", "stdout", 0, b"hello") == Kept(0, b"hello")
    assert out.take(J, "node1", "stdout", 5, b" world") == Kept(5, b" world")
    assert out.take(J, "node1", "stdout", 3, b"lo world") is None
    assert out.take(J, "node1", "stdout", 9, b"ld!") == Kept(11, b"!")
    assert out.take(J, "node1", "stderr", 0, b"oops") == Kept(0, b"oops")
    assert out.path(J, "node1", "stdout") == os.path.join(root, J, "node1.stdout")
    assert content(os.path.join(root, J, "node1.stdout")) == b"hello world!"
    assert content(os.path.join(root, J, "node1.stderr")) == b"oops"
    assert sorted(os.listdir(root)) == [J]
    assert sorted(os.listdir(os.path.join(root, J))) == ["node1.stderr", "node1.stdout"]
    assert out.write_errors == 0


def test_the_limit_cuts_and_marks_the_file(root):
    out = Outputs(root, 8)
    assert out.take(J, "n", "stdout", 0, b"12345") == Kept(0, b"12345")
    assert out.take(J, "n", "stdout", 5, b"6789") == Kept(5, b"678", truncation_marker(8))
    assert out.take(J, "n", "stdout", 9, b"more") is None
    assert content(out.path(J, "n", "stdout")) == b"12345678" + truncation_marker(8)


def test_a_restart_resumes_from_the_file(root):
    Outputs(root, 100).take(J, "n", "stdout", 0, b"hello")
    again = Outputs(root, 100)
    assert again.take(J, "n", "stdout", 0, b"hello") is None  # resent: not kept twice
    assert again.take(J, "n", "stdout", 3, b"lo!") == Kept(5, b"!")
    assert content(again.path(J, "n", "stdout")) == b"hello!"


def test_a_restart_sees_a_truncated_stream(root):
    first = Outputs(root, 4)
    assert first.take(J, "n", "stdout", 0, b"abcdefg") == Kept(0, b"abcd", truncation_marker(4))
    again = Outputs(root, 4)
    assert again.take(J, "n", "stdout", 7, b"xyz") is None
    assert again.take(J, "n", "stdout", 0, b"abcdefg") is None
    assert content(again.path(J, "n", "stdout")) == b"abcd" + truncation_marker(4)


def test_a_restart_with_a_file_shorter_than_the_marker(root):
    Outputs(root, 1000).take(J, "n", "stdout", 0, b"ab")
    again = Outputs(root, 1000)
    assert again.take(J, "n", "stdout", 0, b"abc") == Kept(2, b"c")


def test_a_file_not_ending_with_the_marker_is_not_truncated(root):
    Outputs(root, 10).take(J, "n", "stdout", 0, truncation_marker(10)[:10])
    path = Outputs(root, 10).path(J, "n", "stdout")
    with open(path, "ab") as f:  # as long as a marker, but not one
        f.write(b"x" * len(truncation_marker(10)))
    again = Outputs(root, 10)
    size = os.path.getsize(path)
    assert again.take(J, "n", "stdout", size, b"y") == Kept(size, b"", truncation_marker(10))


@pytest.mark.parametrize(
    "node",
    ["a/b", "../escape", "..", ".", "", "../../" + J, "a%2Fb", "/abs", "x\\y", "é node", "\x00"],
)
def test_a_node_name_stays_inside_the_job_folder(root, node):
    out = Outputs(root, 100)
    assert out.take(J, node, "stdout", 0, b"data") == Kept(0, b"data")
    folder = os.path.join(root, J)
    path = out.path(J, node, "stdout")
    assert os.path.dirname(path) == folder
    assert os.path.realpath(path) == os.path.join(os.path.realpath(folder), os.path.basename(path))
    assert os.listdir(root) == [J]
    assert os.listdir(folder) == [os.path.basename(path)]
    assert content(path) == b"data"


def test_different_node_names_have_different_files(root):
    out = Outputs(root, 100)
    names = ["a/b", "a%2Fb", "a%252Fb", "..", ".", "", "a b", "a+b"]
    assert len({out.path(J, n, "stdout") for n in names}) == len(names)
    for i, name in enumerate(names):
        assert out.take(J, name, "stdout", 0, bytes([65 + i])) == Kept(0, bytes([65 + i]))
    assert len(os.listdir(os.path.join(root, J))) == len(names)


async def test_read(root):
    out = Outputs(root, 4)
    assert await out.read(J, "n", "stdout") is None
    out.take(J, "n", "stdout", 0, b"ab")
    assert await out.read(J, "n", "stdout") == b""  # durable before visible
    assert await out.sync()
    assert await out.read(J, "n", "stdout") == b"ab"
    assert await out.read(J, "n", "stderr") is None
    assert await out.read(K, "n", "stdout") is None
    out.take(J, "n", "stdout", 2, b"cdef")
    assert await out.sync()
    assert await out.read(J, "n", "stdout") == b"abcd" + truncation_marker(4)


async def test_streamed(root):
    out = Outputs(root, 100)
    assert not await out.streamed(J, "n")
    out.take(J, "n", "stderr", 0, b"e")
    assert await out.streamed(J, "n")
    assert not await out.streamed(J, "m")
    assert not await out.streamed(K, "n")
    assert out.take(J, "m", "stdout", 0, b"") is None  # nothing kept: no file either
    assert not await out.streamed(J, "m")


def test_forget_drops_the_lengths_of_those_jobs_only(root):
    out = Outputs(root, 100)
    out.take(J, "n", "stdout", 0, b"abc")
    out.take(K, "n", "stdout", 0, b"abc")
    out.forget([J])
    assert os.path.exists(out.path(J, "n", "stdout"))  # the files stay
    # the lengths are read from the files again: remove them to tell
    os.unlink(out.path(J, "n", "stdout"))
    os.unlink(out.path(K, "n", "stdout"))
    assert out.take(J, "n", "stdout", 0, b"abc") == Kept(0, b"abc")
    assert out.take(K, "n", "stdout", 0, b"abc") is None  # K's length still held


async def test_remove_deletes_the_job_folder(root):
    out = Outputs(root, 100)
    out.take(J, "n", "stdout", 0, b"abc")
    out.take(J, "m", "stderr", 0, b"err")
    out.take(K, "n", "stdout", 0, b"kept")
    await out.remove([J, "feedfeedfeedfeedfeedfeedfeedfeed"])  # a job without output too
    assert os.listdir(root) == [K]
    assert await out.read(J, "n", "stdout") is None
    assert not await out.streamed(J, "n")
    assert out.take(J, "n", "stdout", 0, b"new") == Kept(0, b"new")  # starts again at 0
    assert content(out.path(J, "n", "stdout")) == b"new"
    assert await out.sync()
    assert await out.read(K, "n", "stdout") == b"kept"


async def test_remove_with_a_generator_forgets_too(root):
    """remove() reads its iterable once (the annotation is Iterable[str]): a generator's jobs
    leave both the disk and memory."""
    out = Outputs(root, 100)
    out.take(J, "n", "stdout", 0, b"abc")
    out.take(K, "n", "stdout", 0, b"abc")
    await out.remove(j for j in [J])
    assert os.listdir(root) == [K]
    # J's length was forgotten: its next output starts a new file at 0, not past 3
    assert out.take(J, "n", "stdout", 0, b"xyz") == Kept(0, b"xyz")
    assert content(out.path(J, "n", "stdout")) == b"xyz"
    assert out.take(K, "n", "stdout", 0, b"abc") is None  # K's is still held


def make_a_file_of_the_job_folder(root: str, job_id: str) -> None:
    folder = os.path.join(root, job_id)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(root, exist_ok=True)
    with open(folder, "wb") as f:
        f.write(b"not a folder")


def test_a_failed_write_is_counted_not_raised(root, caplog):
    out = Outputs(root, 100)
    assert out.take(J, "n", "stdout", 0, b"abc") == Kept(0, b"abc")
    make_a_file_of_the_job_folder(root, J)
    assert out.take(J, "n", "stdout", 3, b"def") is None
    assert out.write_errors == 1
    assert "output of n for job " + J + " (stdout) not kept" in caplog.text
    assert out.take(J, "n", "stdout", 6, b"ghi") is None
    assert out.write_errors == 2
    # the folder back: what comes next is kept; the lost chunks are not asked for again
    os.unlink(os.path.join(root, J))
    assert out.take(J, "n", "stdout", 3, b"def") is None
    assert out.take(J, "n", "stdout", 9, b"jkl") == Kept(9, b"jkl")
    assert content(out.path(J, "n", "stdout")) == b"jkl"
    assert out.write_errors == 2


async def test_a_failed_first_write_is_counted_not_raised(root):
    out = Outputs(root, 100)
    node = "n" * 250  # with ".stdout": longer than a file name may be
    assert out.take(J, node, "stdout", 0, b"abc") is None
    assert out.write_errors == 1
    assert os.listdir(os.path.join(root, J)) == []  # the folder was made, the file could not be
    assert not await out.streamed(J, "n")


def long_name_after_another_node(root: str) -> str:
    Outputs(root, 100).take(J, "other", "stdout", 0, b"x")  # the job's folder exists
    return "n" * 250  # with ".stdout": longer than a file name may be


def folder_where_the_file_goes(root: str) -> str:
    os.makedirs(os.path.join(root, J, "n.stdout"))
    return "n"


def root_a_file(root: str) -> str:
    os.makedirs(os.path.dirname(root), exist_ok=True)
    with open(root, "wb") as f:
        f.write(b"not a folder")
    return "n"


def file_where_the_job_folder_goes(root: str) -> str:
    make_a_file_of_the_job_folder(root, J)
    return "n"


@pytest.mark.parametrize(
    "setup",
    [
        file_where_the_job_folder_goes,
        root_a_file,
        folder_where_the_file_goes,
        long_name_after_another_node,
    ],
)
def test_a_stream_first_seen_on_a_broken_disk_is_a_failed_write(root, setup, caplog):
    """The first look at a stream's file (its length after a restart) failing with any
    OSError is a failed write: counted and logged, never raised into the message loop."""
    node = setup(root)
    out = Outputs(root, 100)
    assert out.take(J, node, "stdout", 0, b"abc") is None
    assert out.write_errors == 1
    assert f"output of {node} for job {J} (stdout) not kept" in caplog.text
    # no length was made up for the stream: the next chunk looks again, and fails again
    assert out.take(J, node, "stdout", 3, b"def") is None
    assert out.write_errors == 2


async def test_sync(root):
    out = Outputs(root, 100)
    await out.sync()  # nothing written: nothing to do, even without a root
    out.take(J, "n", "stdout", 0, b"abc")
    out.take(K, "n", "stdout", 0, b"abc")
    shutil.rmtree(os.path.join(root, K))  # gone meanwhile: skipped
    await out.sync()
    assert (out._dirty, out._new_dirs) == (set(), set())
    assert content(out.path(J, "n", "stdout")) == b"abc"


async def test_a_failed_fsync_shows_and_acknowledges_nothing_and_is_tried_again(root, monkeypatch):
    from appliance.server import outputs as outputs_module

    out = Outputs(root, 100)
    out.take(J, "n", "stdout", 0, b"abc")
    acked: list[str] = []
    out.when_synced(lambda: acked.append("first"))
    real = outputs_module._fsync_all
    monkeypatch.setattr(outputs_module, "_fsync_all", lambda paths: False)
    assert await out.sync() is False
    assert acked == [] and await out.read(J, "n", "stdout") == b""
    synced: list[str] = []
    monkeypatch.setattr(
        outputs_module, "_fsync_all", lambda paths: synced.extend(paths) or real(paths)
    )
    out.when_synced(lambda: acked.append("resent"))  # the node's resend
    assert await out.sync() is True
    assert out.path(J, "n", "stdout") in synced  # the file whose fsync failed, again
    assert acked == ["resent"] and await out.read(J, "n", "stdout") == b"abc"
