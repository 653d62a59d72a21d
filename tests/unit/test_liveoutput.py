"""Sending a job's output while it runs (appliance/client/liveoutput.py), under trio's MockClock.

The fake socket records what is sent as (stream, offset, bytes); the tests play the server by
calling ``LiveOutput.on_ack`` (the server has a stream up to an offset), or let the socket
acknowledge each chunk it takes as soon as the sender yields (``acks=True``).
"""

from __future__ import annotations

import base64
import logging
import random
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from appliance.client import liveoutput
from appliance.client.liveoutput import (
    ACK_PATIENCE,
    GIVE_UP_SECONDS,
    SEND_PATIENCE,
    WINDOW_BYTES,
    LiveOutput,
    chunk_bytes,
)
from appliance.core.output import MAX_CHUNK_BYTES

OVERHEAD = 1024


def body_size_for(chunk: int) -> int:
    """The smallest max_body_size whose chunks are ``chunk`` bytes (a multiple of 3)."""
    return OVERHEAD + chunk * 4 // 3


def encoded(size: int) -> int:
    """The length of ``size`` bytes in base64."""
    return len(base64.b64encode(bytes(size)))


# chunk_bytes --------------------------------------------------------------------------------


def test_the_constants():
    assert WINDOW_BYTES == 16 * 1024
    assert MAX_CHUNK_BYTES == 32 * 1024  # what the server takes: twice what is sent
    assert ACK_PATIENCE == 3.0
    assert SEND_PATIENCE == 30.0  # a node reconnecting after a failover has no socket meanwhile
    assert GIVE_UP_SECONDS == 60.0  # lease_timeout + 5 s, and the node's reconnection
    assert GIVE_UP_SECONDS % ACK_PATIENCE == 0


@pytest.mark.parametrize(
    "max_body_size",
    [
        *range(1028, 1045),
        2048,
        *range(4095, 4100),
        *range(22868, 22876),
        *range(44711, 44717),
        65536,
        10**9,
    ],
)
def test_a_chunk_and_its_message_fit_the_body_size(max_body_size):
    size = chunk_bytes(max_body_size)
    assert 1 <= size <= WINDOW_BYTES
    assert encoded(size) + OVERHEAD <= max_body_size, f"a chunk of {size} bytes"
    if size < WINDOW_BYTES:  # the largest that fits
        assert encoded(size + 1) + OVERHEAD > max_body_size


@pytest.mark.parametrize(
    ("max_body_size", "size"),
    [
        (1028, 3),
        (1030, 3),  # the padding counted: 4 bytes would need 8 characters, 1032 > 1030
        (1031, 3),
        (1032, 6),
        (2048, 768),
        (22871, 16383),
        (22872, WINDOW_BYTES),  # 16386 would fit: a chunk is never more than the window
        (44715, WINDOW_BYTES),
        (44716, WINDOW_BYTES),
        (10**9, WINDOW_BYTES),
    ],
)
def test_chunk_bytes_values(max_body_size, size):
    assert chunk_bytes(max_body_size) == size


@pytest.mark.parametrize("max_body_size", [-5, 0, 1, 1024, 1025, 1026, 1027])
def test_chunk_bytes_is_at_least_one(max_body_size):
    assert chunk_bytes(max_body_size) == 1


# the fake socket ----------------------------------------------------------------------------


class Socket:
    """The ``send`` callable: records every try; ``refuse`` says whether it takes one now.

    Every try also checks the window: what is in flight (the chunk itself not counted when it
    is a resend) plus the chunk is at most ``out.window``. With ``acks``, each chunk taken is
    acknowledged as the server would, once the sender yields (not from inside ``send``)."""

    def __init__(self, refuse=lambda sent: False, *, acks=False):
        self.refuse = refuse
        self.acks = acks
        self.out: LiveOutput | None = None
        self.tries: list[tuple[float, str, int, bytes]] = []
        self.sent: list[tuple[str, int, bytes]] = []

    def __call__(self, stream: str, offset: int, data: bytes) -> bool:
        self.tries.append((trio.current_time(), stream, offset, data))
        out = self.out
        assert out is not None
        others = sum(len(d) for key, d in out.inflight.items() if key != (stream, offset))
        assert others + len(data) <= out.window, "sent past the window"
        if self.refuse(self):
            return False
        self.sent.append((stream, offset, data))
        if self.acks:
            token = trio.lowlevel.current_trio_token()
            token.run_sync_soon(out.on_ack, stream, offset + len(data))
        return True

    def tries_since(self, start: float) -> list[tuple[float, str, int, bytes]]:
        """The tries, their times counted from ``start`` (rounded: the clock is a float)."""
        return [(round(t - start, 6), *rest) for t, *rest in self.tries]


@pytest.fixture
def trio_time(monkeypatch):
    """SEND_PATIENCE is measured with time.monotonic: make it the (mock) trio clock's."""
    monkeypatch.setattr(liveoutput, "time", SimpleNamespace(monotonic=trio.current_time))


def live(socket, *, limit=1000, chunk=6, window=WINDOW_BYTES):
    out = LiveOutput(socket, limit=limit, max_body_size=body_size_for(chunk), window=window)
    assert out.streams["stdout"].chunk_bytes == chunk
    assert out.streams["stderr"].chunk_bytes == chunk
    socket.out = out
    return out


class Task:
    """A coroutine run in the background; ``done`` once it returned."""

    def __init__(self, nursery, fn, *args):
        self.done = False

        async def run():
            await fn(*args)
            self.done = True

        nursery.start_soon(run)


async def settle():
    """Let every task run until all are blocked (no time passes)."""
    await trio.testing.wait_all_tasks_blocked()


def inflight(out):
    return {key: bytes(data) for key, data in out.inflight.items()}


# sending ------------------------------------------------------------------------------------


async def test_a_full_chunk_goes_out_at_once():
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abc")
    assert socket.sent == []
    await out.on_output("stdout", b"defgh")  # 8 >= 6: all of what is pending goes
    assert socket.sent == [("stdout", 0, b"abcdef"), ("stdout", 6, b"gh")]
    await out.on_output("stderr", b"123456")
    assert socket.sent[2:] == [("stderr", 0, b"123456")]
    assert inflight(out) == {
        ("stdout", 0): b"abcdef",
        ("stdout", 6): b"gh",
        ("stderr", 0): b"123456",
    }
    assert out.lost == 0


async def test_close_sends_the_rest_in_order(mock_clock):
    socket = Socket(acks=True)
    out = live(socket)
    euro = "€".encode()
    await out.on_output("stderr", b"err")
    await out.on_output("stdout", b"out1")
    assert socket.sent == []
    await out.on_output("stdout", euro[:2])  # 6 pending: a flush of both streams
    assert socket.sent == [("stdout", 0, b"out1"), ("stderr", 0, b"err")]
    await out.on_output("stdout", euro[2:] + b"1234")  # the half character went on waiting
    assert socket.sent[2:] == [("stdout", 4, euro + b"123"), ("stdout", 10, b"4")]
    await out.on_output("stdout", b"tail" + "é".encode()[:1])
    await out.on_output("stderr", b"!")
    assert len(socket.sent) == 4
    await out.close()  # everything, a half character too
    assert socket.sent[4:] == [("stdout", 11, b"tail\xc3"), ("stderr", 3, b"!")]
    assert inflight(out) == {}
    assert out.lost == 0
    assert trio.current_time() == 0  # no waiting on a server that acknowledges


async def test_flush_every_sends_what_is_pending(autojump_clock):
    socket = Socket(acks=True)
    out = live(socket)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.flush_every)
        await out.on_output("stdout", b"hi")
        await trio.sleep(liveoutput.FLUSH_SECONDS - 0.01)
        assert socket.sent == []
        await trio.sleep(0.02)
        assert socket.sent == [("stdout", 0, b"hi")]
        await out.on_output("stderr", b"e")
        await out.on_output("stdout", "é".encode()[:1])  # half a character waits
        await trio.sleep(liveoutput.FLUSH_SECONDS)
        assert socket.sent[1:] == [("stderr", 0, b"e")]
        nursery.cancel_scope.cancel()
    await out.close()
    assert socket.sent[2:] == [("stdout", 2, b"\xc3")]
    assert out.lost == 0


async def test_chunks_keep_their_order_and_offsets_contiguous(mock_clock):
    socket = Socket(acks=True)
    out = live(socket, chunk=6, window=12)
    writes = [b"a", b"bcdefghij", b"", b"k" * 13, b"lm", b"n" * 6, b"opq"]
    for data in writes:
        await out.on_output("stdout", data)
        await out.on_output("stderr", data.upper())
    await out.close()
    for stream, case in (("stdout", bytes), ("stderr", bytes.upper)):
        chunks = [(o, d) for s, o, d in socket.sent if s == stream]
        expected = case(b"".join(writes))
        assert b"".join(d for _, d in chunks) == expected
        assert [o for o, _ in chunks] == [
            sum(len(d) for _, d in chunks[:i]) for i in range(len(chunks))
        ]
        assert all(1 <= len(d) <= 6 for _, d in chunks)
    # a flush sends what every stream has pending, stdout first
    assert socket.sent == [
        ("stdout", 0, b"abcdef"),
        ("stdout", 6, b"ghij"),
        ("stderr", 0, b"A"),
        ("stderr", 1, b"BCDEFG"),
        ("stderr", 7, b"HIJ"),
        ("stdout", 10, b"kkkkkk"),
        ("stdout", 16, b"kkkkkk"),
        ("stdout", 22, b"k"),
        ("stderr", 10, b"KKKKKK"),
        ("stderr", 16, b"KKKKKK"),
        ("stderr", 22, b"K"),
        ("stdout", 23, b"lmnnnn"),
        ("stdout", 29, b"nn"),
        ("stderr", 23, b"LM"),
        ("stderr", 25, b"NNNNNN"),
        ("stdout", 31, b"opq"),
        ("stderr", 31, b"OPQ"),
    ]
    assert out.lost == 0


async def test_utf8_is_never_split_between_chunks(mock_clock):
    text = "aé€𝄞" * 20 + "€"  # 1-, 2-, 3- and 4-byte characters
    data = text.encode()
    socket = Socket(acks=True)
    out = live(socket, chunk=6, window=12)
    for i in range(0, len(data), 5):  # the reads cut characters anywhere
        await out.on_output("stdout", data[i : i + 5])
    await out.close()
    chunks = [d for _, _, d in socket.sent]
    assert b"".join(chunks) == data
    assert "".join(c.decode() for c in chunks) == text  # each chunk decodes on its own
    assert max(map(len, chunks)) == 6
    assert out.lost == 0


async def test_past_the_limit_only_one_byte_more_is_sent(mock_clock, caplog):
    socket = Socket(acks=True)
    out = live(socket, limit=5)
    await out.on_output("stdout", b"0123456789")
    await out.on_output("stdout", b"more")
    with caplog.at_level(logging.INFO, logger="pushy.client"):
        await out.close()
    assert socket.sent == [("stdout", 0, b"012345")]
    assert out.streams["stdout"].dropped == 8
    assert out.streams["stderr"].dropped == 0
    assert "output past max_output_bytes not sent (bytes): {'stdout': 8}" in caplog.text


async def test_a_flood_sends_limit_plus_one_bytes_then_only_counts(mock_clock):
    socket = Socket(acks=True)
    out = live(socket, limit=20, chunk=6, window=12)
    flood = bytes(range(256)) * 4
    for i in range(0, len(flood), 7):
        await out.on_output("stdout", flood[i : i + 7])
    await out.close()
    # each read of 7 fills a chunk: all that is pending goes, the seventh byte alone
    assert socket.sent == [
        ("stdout", 0, flood[0:6]),
        ("stdout", 6, flood[6:7]),
        ("stdout", 7, flood[7:13]),
        ("stdout", 13, flood[13:14]),
        ("stdout", 14, flood[14:20]),
        ("stdout", 20, flood[20:21]),
    ]
    assert out.streams["stdout"].dropped == len(flood) - 21
    assert out.lost == 0


# flow control -------------------------------------------------------------------------------


def test_the_window_is_at_least_a_chunk():
    assert LiveOutput(Socket(), limit=10, max_body_size=body_size_for(6), window=1).window == 6
    assert LiveOutput(Socket(), limit=10, max_body_size=body_size_for(6), window=7).window == 7
    assert LiveOutput(Socket(), limit=10, max_body_size=10**6).window == WINDOW_BYTES


async def test_a_window_goes_out_without_acks_then_the_next_chunk_waits(mock_clock, nursery):
    socket = Socket()
    out = live(socket, chunk=6, window=12)
    writing = Task(nursery, out.on_output, "stdout", b"abcdefghijklmnopqr")
    await settle()
    assert socket.sent == [("stdout", 0, b"abcdef"), ("stdout", 6, b"ghijkl")]
    assert not writing.done  # the command's read waits: its pipe fills
    out.on_ack("stdout", 5)  # not all of the first chunk: frees nothing
    await settle()
    assert len(socket.sent) == 2 and not writing.done
    out.on_ack("stdout", 6)
    await settle()
    assert socket.sent[2:] == [("stdout", 12, b"mnopqr")]
    assert writing.done
    assert inflight(out) == {("stdout", 6): b"ghijkl", ("stdout", 12): b"mnopqr"}
    assert out.lost == 0
    assert trio.current_time() == 0


async def test_the_default_window_is_one_chunk_in_flight(mock_clock, nursery):
    socket = Socket()
    out = LiveOutput(socket, limit=10**6, max_body_size=10**6)
    socket.out = out
    data = bytes(range(256)) * 192  # 3 windows
    writing = Task(nursery, out.on_output, "stdout", data)
    await settle()
    assert socket.sent == [("stdout", 0, data[:WINDOW_BYTES])]
    out.on_ack("stdout", WINDOW_BYTES)
    await settle()
    assert socket.sent[1:] == [("stdout", WINDOW_BYTES, data[WINDOW_BYTES : 2 * WINDOW_BYTES])]
    assert not writing.done
    out.on_ack("stdout", 2 * WINDOW_BYTES)
    await settle()
    assert socket.sent[2:] == [("stdout", 2 * WINDOW_BYTES, data[2 * WINDOW_BYTES :])]
    assert writing.done


async def test_the_window_holds_both_streams(mock_clock, nursery):
    socket = Socket()
    out = live(socket, chunk=6, window=12)
    await out.on_output("stdout", b"abcdef")
    await out.on_output("stderr", b"ABCDEF")
    writing = Task(nursery, out.on_output, "stdout", b"ghijkl")
    await settle()
    assert socket.sent == [("stdout", 0, b"abcdef"), ("stderr", 0, b"ABCDEF")]
    assert not writing.done
    out.on_ack("stderr", 6)  # room is room, whichever stream made it
    await settle()
    assert socket.sent[2:] == [("stdout", 6, b"ghijkl")]
    assert writing.done


async def test_an_ack_for_another_stream_frees_nothing(mock_clock, nursery):
    socket = Socket()
    out = live(socket, chunk=6, window=12)
    writing = Task(nursery, out.on_output, "stdout", b"abcdefghijklmnopqr")
    await settle()
    before = inflight(out)
    assert before == {("stdout", 0): b"abcdef", ("stdout", 6): b"ghijkl"}
    out.on_ack("stderr", 10**6)
    await settle()
    assert inflight(out) == before
    assert len(socket.sent) == 2 and not writing.done
    out.on_ack("stdout", 12)
    await settle()
    assert socket.sent[2:] == [("stdout", 12, b"mnopqr")]
    assert inflight(out) == {("stdout", 12): b"mnopqr"}
    assert writing.done


async def test_an_ack_frees_only_the_chunks_it_covers(mock_clock, nursery):
    socket = Socket()
    out = live(socket, chunk=6, window=18)
    await out.on_output("stderr", b"ERR")  # pending, not sent
    writing = Task(nursery, out.on_output, "stdout", b"abcdefghijklmnopqrstuvwx")
    await settle()
    assert [o for _, o, _ in socket.sent] == [0, 6, 12]
    assert not writing.done
    out.on_ack("stdout", 15)  # within the third chunk: the first two are freed
    assert inflight(out) == {("stdout", 12): b"mnopqr"}
    await settle()
    assert socket.sent[3:] == [("stdout", 18, b"stuvwx"), ("stderr", 0, b"ERR")]
    assert writing.done
    assert inflight(out) == {
        ("stdout", 12): b"mnopqr",
        ("stdout", 18): b"stuvwx",
        ("stderr", 0): b"ERR",
    }
    out.on_ack("stdout", 18)  # exactly the end of the third
    assert inflight(out) == {("stdout", 18): b"stuvwx", ("stderr", 0): b"ERR"}
    out.on_ack("stdout", 12)  # behind what was acknowledged already: nothing
    out.on_ack("stderr", 2)
    assert inflight(out) == {("stdout", 18): b"stuvwx", ("stderr", 0): b"ERR"}


async def test_close_waits_for_the_final_ack(mock_clock, nursery):
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abcdefgh")
    await out.on_output("stderr", b"xy")
    closing = Task(nursery, out.close)
    await settle()
    assert socket.sent == [("stdout", 0, b"abcdef"), ("stdout", 6, b"gh"), ("stderr", 0, b"xy")]
    assert not closing.done
    out.on_ack("stdout", 8)
    await settle()
    assert not closing.done
    out.on_ack("stderr", 1)
    await settle()
    assert not closing.done
    out.on_ack("stderr", 2)
    await settle()
    assert closing.done
    assert inflight(out) == {}
    assert out.lost == 0
    assert trio.current_time() == 0


async def test_close_with_nothing_in_flight_returns_at_once(mock_clock):
    socket = Socket()
    out = live(socket)
    await out.close()
    assert socket.tries == []
    assert trio.current_time() == 0


RESENDS = int(GIVE_UP_SECONDS / ACK_PATIENCE) - 1  # a resend every patience, then given up


async def test_no_ack_resends_every_patience_then_gives_up(mock_clock, nursery, caplog):
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abcdefgh")
    first = [("stdout", 0, b"abcdef"), ("stdout", 6, b"gh")]
    with caplog.at_level(logging.WARNING, logger="pushy.client"):
        closing = Task(nursery, out.close)
        await settle()
        assert socket.sent == first
        mock_clock.jump(ACK_PATIENCE - 1)
        await settle()
        assert socket.sent == first  # not resent before ACK_PATIENCE
        mock_clock.jump(1)
        await settle()
        assert socket.sent == first + first  # the same offsets and bytes, in order
        assert socket.tries_since(0)[2:] == [(ACK_PATIENCE, *chunk) for chunk in first]
        for n in range(2, RESENDS + 1):
            assert not closing.done and out.lost == 0
            mock_clock.jump(ACK_PATIENCE)
            await settle()
            assert socket.sent == first * (n + 1), n
        assert trio.current_time() == GIVE_UP_SECONDS - ACK_PATIENCE
        mock_clock.jump(ACK_PATIENCE - 1)
        await settle()
        assert not closing.done and out.lost == 0
        mock_clock.jump(1)
        await settle()
    assert closing.done  # the job is never stuck for longer
    assert trio.current_time() == GIVE_UP_SECONDS
    assert socket.sent == first * (RESENDS + 1)
    assert out.lost == 8
    assert inflight(out) == {}
    assert "8 bytes of output not acknowledged by the server: given up" in caplog.text


async def test_an_ack_after_the_resend_is_in_time(mock_clock, nursery):
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abcdef")
    closing = Task(nursery, out.close)
    await settle()
    mock_clock.jump(ACK_PATIENCE)
    await settle()
    assert socket.sent == [("stdout", 0, b"abcdef")] * 2
    mock_clock.jump(ACK_PATIENCE - 1)
    out.on_ack("stdout", 6)
    await settle()
    assert closing.done
    assert out.lost == 0
    assert len(socket.tries) == 2


async def test_a_partial_ack_resends_only_what_is_left_and_waits_anew(autojump_clock, nursery):
    socket = Socket()
    out = live(socket, chunk=6, window=12)
    await out.on_output("stdout", b"abcdefghijkl")
    start = trio.current_time()
    closing = Task(nursery, out.close)
    await trio.sleep(ACK_PATIENCE - 1)
    out.on_ack("stdout", 6)  # patience starts again from here, for what is left
    await trio.sleep(ACK_PATIENCE - 0.5)
    assert socket.tries_since(start) == [
        (0, "stdout", 0, b"abcdef"),
        (0, "stdout", 6, b"ghijkl"),
    ]
    await trio.sleep(1)
    assert socket.tries_since(start)[2:] == [(2 * ACK_PATIENCE - 1, "stdout", 6, b"ghijkl")]
    assert not closing.done
    acked = ACK_PATIENCE - 1
    await trio.sleep(start + acked + GIVE_UP_SECONDS - 0.5 - trio.current_time())
    assert not closing.done  # given up a whole GIVE_UP_SECONDS after the last ack
    await trio.sleep(1)
    assert closing.done
    assert out.lost == 6
    assert len(socket.tries) == 2 + RESENDS


async def test_a_full_window_with_no_ack_never_holds_the_command(autojump_clock):
    """The writer waits for room: a resend every ACK_PATIENCE, then, GIVE_UP_SECONDS without
    an ack, the window is given up and the next chunks go; close waits the same for those."""
    socket = Socket()
    out = live(socket, chunk=6, window=12)
    start = trio.current_time()
    await out.on_output("stdout", b"abcdefghijklmnopqrstuvwx")
    assert trio.current_time() - start == GIVE_UP_SECONDS
    assert out.lost == 12
    await out.close()
    assert trio.current_time() - start == 2 * GIVE_UP_SECONDS
    assert out.lost == 24
    a, b, c, d = (
        ("stdout", 0, b"abcdef"),
        ("stdout", 6, b"ghijkl"),
        ("stdout", 12, b"mnopqr"),
        ("stdout", 18, b"stuvwx"),
    )
    tries = [(0, *a), (0, *b)]
    tries += [(n * ACK_PATIENCE, *x) for n in range(1, RESENDS + 1) for x in (a, b)]
    tries += [(GIVE_UP_SECONDS, *c), (GIVE_UP_SECONDS, *d)]
    tries += [
        (GIVE_UP_SECONDS + n * ACK_PATIENCE, *x) for n in range(1, RESENDS + 1) for x in (c, d)
    ]
    assert socket.tries_since(start) == tries
    assert inflight(out) == {}


@pytest.mark.parametrize("seed", range(8))
async def test_a_random_run_against_a_slow_server(autojump_clock, seed):
    """Random writes to both streams, a server acknowledging each chunk in order some time
    after it came: every byte goes once, in order, and the window is never exceeded (the
    socket checks it on every try)."""
    rng = random.Random(seed)
    socket = Socket()
    limit = rng.randrange(30, 300)
    out = live(socket, limit=limit, chunk=rng.choice([3, 6, 9]), window=rng.randrange(1, 40))
    written = {"stdout": b"", "stderr": b""}

    async def server():
        acked = 0
        while True:  # within the ack patience: nothing is ever resent
            await trio.sleep(rng.uniform(0, 1))
            upto = len(socket.sent)
            for stream, offset, data in socket.sent[acked:upto]:
                out.on_ack(stream, offset + len(data))
            acked = upto

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(out.flush_every)
        for _ in range(rng.randrange(20, 60)):
            stream = rng.choice(["stdout", "stderr"])
            data = "".join(rng.choice(["a", "é", "€", "𝄞", "\n"]) for _ in range(5)).encode()
            data = data[: rng.randrange(len(data) + 1)]
            written[stream] += data
            await out.on_output(stream, data)
            await trio.sleep(rng.uniform(0, 0.5))
        await out.close()
        nursery.cancel_scope.cancel()
    assert out.lost == 0
    assert inflight(out) == {}
    assert len(socket.tries) == len(socket.sent)  # none resent: the server answered in time
    for stream, data in written.items():
        chunks = [(o, d) for s, o, d in socket.sent if s == stream]
        assert b"".join(d for _, d in chunks) == data[: limit + 1]
        assert [o for o, _ in chunks] == [
            sum(len(d) for _, d in chunks[:i]) for i in range(len(chunks))
        ]
        assert out.streams[stream].dropped == max(0, len(data) - limit - 1)


# send patience ------------------------------------------------------------------------------


async def test_a_refused_chunk_is_tried_again(autojump_clock, trio_time):
    socket = Socket(refuse=lambda s: len(s.tries) <= 3)
    out = live(socket)
    start = trio.current_time()
    await out.on_output("stdout", b"abcdef")
    assert socket.tries_since(start) == [
        (round(i * liveoutput._RETRY_SECONDS, 6), "stdout", 0, b"abcdef") for i in range(4)
    ]
    assert socket.sent == [("stdout", 0, b"abcdef")]
    assert inflight(out) == {("stdout", 0): b"abcdef"}
    assert out.lost == 0


async def test_a_chunk_never_taken_is_given_up(autojump_clock, trio_time, caplog):
    socket = Socket(refuse=lambda s: True)
    out = live(socket)
    await out.on_output("stdout", b"abc")
    start = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="pushy.client"):
        await out.close()  # returns: the job is not stuck
    waited = trio.current_time() - start
    assert SEND_PATIENCE <= waited <= SEND_PATIENCE + 0.05
    assert out.lost == 3
    assert socket.sent == []
    assert inflight(out) == {}  # never taken: nothing to wait an ack for
    assert {(s, o, d) for _, s, o, d in socket.tries} == {("stdout", 0, b"abc")}
    assert len(socket.tries) > 100
    assert "the server is not taking messages: output is being lost" in caplog.text


async def test_after_a_lost_chunk_the_next_one_keeps_its_offset(autojump_clock, trio_time):
    down = True
    socket = Socket(refuse=lambda s: down, acks=True)
    out = live(socket)
    await out.on_output("stdout", b"123456")
    assert out.lost == 6
    down = False
    await out.on_output("stdout", b"789")
    await out.close()
    assert socket.sent == [("stdout", 6, b"789")]  # the server sees the gap
    assert out.lost == 6


async def test_a_dead_socket_does_not_hold_the_job_for_every_chunk(autojump_clock, trio_time):
    socket = Socket(refuse=lambda s: True)
    out = live(socket)
    out.streams["stdout"].add(b"x" * 30)  # 5 chunks pending
    start = trio.current_time()
    await out.close()
    assert out.lost == 30
    waited = trio.current_time() - start
    assert SEND_PATIENCE <= waited <= SEND_PATIENCE + 0.05  # once, not once per chunk
    offsets = [o for _, _, o, _ in socket.tries]
    assert offsets.count(0) > 100
    assert offsets[offsets.count(0) :] == [6, 12, 18, 24]  # one try each
    assert inflight(out) == {}


async def test_a_socket_taking_again_gets_full_patience_again(autojump_clock, trio_time):
    up = False
    socket = Socket(refuse=lambda s: not up, acks=True)
    out = live(socket)
    await out.on_output("stdout", b"aaaaaa")  # SEND_PATIENCE, then given up
    start = trio.current_time()
    await out.on_output("stdout", b"bbbbbb")  # one try
    assert trio.current_time() == start
    assert out.lost == 12
    up = True
    await out.on_output("stdout", b"cccccc")  # taken: the socket is not stuck any more
    up = False
    await out.on_output("stdout", b"dddddd")
    assert SEND_PATIENCE <= trio.current_time() - start <= SEND_PATIENCE + 0.05
    assert socket.sent == [("stdout", 12, b"cccccc")]
    assert out.lost == 18


async def test_a_refused_resend_is_lost_once(autojump_clock, trio_time):
    up = True
    socket = Socket(refuse=lambda s: not up)
    out = live(socket)
    await out.on_output("stdout", b"abcdef")  # taken, never acknowledged
    up = False
    start = trio.current_time()
    await out.close()
    # ACK_PATIENCE, then the resend refused for SEND_PATIENCE: lost, nothing left to wait for
    assert trio.current_time() - start == pytest.approx(ACK_PATIENCE + SEND_PATIENCE, abs=0.05)
    assert inflight(out) == {}
    assert out.lost == 6


async def test_senders_take_turns(autojump_clock, trio_time):
    """A chunk being retried holds the others back: a stream's chunks go out in order."""
    socket = Socket(refuse=lambda s: len(s.tries) <= 2, acks=True)
    out = live(socket)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.on_output, "stdout", b"first!")
        await trio.sleep(0.001)
        nursery.start_soon(out.on_output, "stdout", b"second")
    await out.close()
    assert socket.sent == [("stdout", 0, b"first!"), ("stdout", 6, b"second")]
    assert out.lost == 0


async def test_a_restarted_server_gets_what_was_in_flight_at_once(autojump_clock):
    """Its acks died with it: the window is sent again when the restart is seen, not after
    ACK_PATIENCE, and then waits for the new server's acks with full patience."""
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abcdef")  # sent, never acknowledged
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.close)  # waits for the ack
        await trio.sleep(1.0)
        out.server_restarted()
        await trio.sleep(0.01)
        assert socket.sent == [("stdout", 0, b"abcdef"), ("stdout", 0, b"abcdef")]
        out.on_ack("stdout", 6)
    assert trio.current_time() - start < 1.1
    assert out.lost == 0 and inflight(out) == {}


async def test_an_aborted_jobs_close_waits_for_no_ack(autojump_clock):
    socket = Socket()
    out = live(socket)
    await out.on_output("stdout", b"abcdef")  # never acknowledged
    await out.on_output("stdout", b"gh")
    start = trio.current_time()
    await out.close(wait_for_acks=False)
    assert trio.current_time() == start
    assert socket.sent == [("stdout", 0, b"abcdef"), ("stdout", 6, b"gh")]


async def test_a_write_cancelled_while_waiting_loses_nothing(autojump_clock):
    """The runner cancels its readers a moment after the command exits, maybe in the middle
    of a wait for room: what they had read stays pending and goes with the last flush."""
    socket = Socket()
    out = live(socket, chunk=6, window=6)
    await out.on_output("stdout", b"abcdef")  # never acknowledged
    with trio.move_on_after(1):
        await out.on_output("stdout", b"ghijklmn")  # waits for room, then cancelled
    assert socket.sent == [("stdout", 0, b"abcdef")]

    async def server() -> None:
        while True:
            for stream, offset, data in socket.sent:
                out.on_ack(stream, offset + len(data))
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        await out.close()
        nursery.cancel_scope.cancel()
    assert b"".join(d for _, _, d in socket.sent) == b"abcdefghijklmn"
    assert out.lost == 0
