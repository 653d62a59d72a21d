"""Live output rules (appliance/core/output.py): what of a chunk is kept, and how one is cut."""

from __future__ import annotations

import base64
import random

import pytest

from appliance.core.output import (
    MAX_CHUNK_BYTES,
    Chunk,
    ChunkError,
    Kept,
    Outgoing,
    StreamState,
    accept,
    chunk_fields,
    complete_prefix,
    parse_chunk,
    truncation_marker,
)

J = "0123456789abcdef0123456789abcdef"


def marker(limit: int) -> bytes:
    return f"\n[pushy: output truncated at {limit} bytes; the rest was not kept]\n".encode()


def test_truncation_marker_text():
    assert (
        truncation_marker(8) == b"\n[pushy: output truncated at 8 bytes; the rest was not kept]\n"
    )
    assert truncation_marker(0) == marker(0)


# accept -------------------------------------------------------------------------------------


def test_in_order_chunks_are_kept_whole():
    state = StreamState()
    assert accept(state, 0, b"hello", 100) == Kept(0, b"hello")
    assert accept(state, 5, b" world", 100) == Kept(5, b" world")
    assert state == StreamState(11, truncated=False)


@pytest.mark.parametrize(("offset", "data"), [(0, b"hello"), (2, b"llo"), (0, b"he"), (5, b"")])
def test_a_chunk_already_kept_is_not_kept_again(offset, data):
    state = StreamState(5)
    assert accept(state, offset, data, 100) is None
    assert state == StreamState(5)


def test_an_overlapping_chunk_keeps_only_the_new_tail():
    state = StreamState(5)
    assert accept(state, 3, b"lo wor", 100) == Kept(5, b" wor")
    assert state.length == 9
    assert accept(state, 0, b"hello world", 100) == Kept(9, b"ld")
    assert state.length == 11


def test_a_chunk_ahead_of_what_is_kept_is_taken_at_its_offset():
    state = StreamState(5)
    assert accept(state, 10, b"abc", 100) == Kept(10, b"abc")
    assert state == StreamState(13)
    # the gap is not filled later: the stream moved past it
    assert accept(state, 5, b"12345", 100) is None


def test_crossing_the_limit_cuts_there_and_marks_once():
    state = StreamState(5)
    assert accept(state, 5, b"abcdef", 8) == Kept(5, b"abc", marker(8))
    assert state == StreamState(8, truncated=True)
    # nothing after: neither more, nor a resend, nor a chunk further ahead
    assert accept(state, 11, b"more", 8) is None
    assert accept(state, 5, b"abcdef", 8) is None
    assert accept(state, 100, b"x", 8) is None
    assert state == StreamState(8, truncated=True)


def test_ending_exactly_at_the_limit_is_not_truncation():
    state = StreamState()
    assert accept(state, 0, b"12345678", 8) == Kept(0, b"12345678")
    assert state == StreamState(8, truncated=False)
    assert accept(state, 8, b"9", 8) == Kept(8, b"", marker(8))
    assert state == StreamState(8, truncated=True)


def test_an_overlapping_chunk_crossing_the_limit():
    state = StreamState(5)
    assert accept(state, 2, b"cdefghij", 8) == Kept(5, b"fgh", marker(8))
    assert state == StreamState(8, truncated=True)


def test_a_chunk_beyond_the_limit_after_a_gap_keeps_only_the_marker():
    state = StreamState()
    assert accept(state, 100, b"0123456789", 50) == Kept(100, b"", marker(50))
    assert state == StreamState(50, truncated=True)


def test_limit_zero_keeps_only_the_marker():
    state = StreamState()
    assert accept(state, 0, b"", 0) is None
    assert state == StreamState(0, truncated=False)
    assert accept(state, 0, b"x", 0) == Kept(0, b"", marker(0))
    assert state == StreamState(0, truncated=True)
    assert accept(state, 1, b"y", 0) is None


def test_kept_text_replaces_invalid_utf8():
    assert Kept(0, "café €".encode()).text() == "café €"
    assert Kept(0, b"ab\xffcd").text() == "ab\ufffdcd"
    assert Kept(0, b"x\xe2\x82").text() == "x\ufffd"
    assert Kept(3, b"ok", marker(4)).text() == "ok" + marker(4).decode()


# parse_chunk --------------------------------------------------------------------------------


def body(**fields):
    base = {"type": "output", "job_id": J, "stream": "stdout", "offset": 0, "base64": "aGk="}
    return {k: v for k, v in (base | fields).items() if v is not ...}


def test_parse_chunk_round_trips_chunk_fields():
    data = bytes(range(256)) + "é€𝄞".encode()
    msg = {"type": "output", "job_id": J} | chunk_fields("stderr", 12345, data)
    assert chunk_fields("stderr", 12345, data) == {
        "stream": "stderr",
        "offset": 12345,
        "base64": base64.b64encode(data).decode("ascii"),
    }
    assert parse_chunk(msg) == Chunk(J, "stderr", 12345, data)
    assert parse_chunk(body()) == Chunk(J, "stdout", 0, b"hi")
    assert parse_chunk(body(base64="")) == Chunk(J, "stdout", 0, b"")


def test_parse_chunk_takes_the_largest_chunk():
    data = b"\xab" * MAX_CHUNK_BYTES
    got = parse_chunk({"job_id": J} | chunk_fields("stdout", 7, data))
    assert got == Chunk(J, "stdout", 7, data)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"job_id": ...}, "no job_id"),
        ({"job_id": ""}, "no job_id"),
        ({"job_id": None}, "no job_id"),
        ({"job_id": 42}, "no job_id"),
        ({"stream": ...}, "stream must be stdout or stderr, not None"),
        ({"stream": "stdin"}, "stream must be stdout or stderr, not 'stdin'"),
        ({"stream": "STDOUT"}, "stream must be stdout or stderr"),
        ({"stream": ["stdout"]}, "stream must be stdout or stderr"),
        ({"offset": ...}, "offset must be an integer >= 0, not None"),
        ({"offset": True}, "offset must be an integer >= 0, not True"),
        ({"offset": False}, "offset must be an integer >= 0, not False"),
        ({"offset": -1}, "offset must be an integer >= 0, not -1"),
        ({"offset": "3"}, "offset must be an integer >= 0, not '3'"),
        ({"offset": 1.0}, "offset must be an integer >= 0, not 1.0"),
        ({"base64": ...}, "base64 must be a string of at most 32768 bytes"),
        ({"base64": b"aGk="}, "base64 must be a string of at most 32768 bytes"),
        ({"base64": 7}, "base64 must be a string of at most 32768 bytes"),
        ({"base64": "A" * 43696}, "base64 must be a string of at most 32768 bytes"),
        ({"base64": "aGk"}, "base64 does not decode"),
        ({"base64": "aG k="}, "base64 does not decode"),
        ({"base64": "aGk=\n"}, "base64 does not decode"),
        ({"base64": "a$k="}, "base64 does not decode"),
        ({"base64": "aGké"}, "base64 does not decode"),
    ],
)
def test_parse_chunk_errors(fields, message):
    with pytest.raises(ChunkError) as err:
        parse_chunk(body(**fields))
    assert str(err.value).startswith(message)
    assert isinstance(err.value, ValueError)


def test_parse_chunk_refuses_one_byte_more_than_the_largest_chunk():
    # (MAX_CHUNK_BYTES + 2) // 3 * 4 = 43692 characters pass the length check, and 43692
    # characters of unpadded base64 decode to MAX_CHUNK_BYTES + 1 bytes: the decoded length
    # is checked too
    fields = chunk_fields("stdout", 0, b"x" * (MAX_CHUNK_BYTES + 1))
    assert len(fields["base64"]) == 43692
    with pytest.raises(ChunkError) as err:
        parse_chunk({"job_id": J} | fields)
    assert str(err.value) == "a chunk holds at most 32768 bytes, not 32769"
    # the same length with padding decodes to one byte less: taken
    fields = chunk_fields("stdout", 0, b"x" * (MAX_CHUNK_BYTES - 1))
    assert len(fields["base64"]) == 43692
    assert parse_chunk({"job_id": J} | fields).data == b"x" * (MAX_CHUNK_BYTES - 1)


# Outgoing -----------------------------------------------------------------------------------


def test_outgoing_cuts_pending_bytes_into_chunks():
    out = Outgoing(100, chunk_bytes=4)
    out.add(b"abc")
    assert not out.full()
    out.add(b"defghij")
    assert out.full()
    assert out.take() == [(0, b"abcd"), (4, b"efgh"), (8, b"ij")]
    assert not out.full()
    assert out.take() == []
    out.add(b"kl")
    assert out.take(final=True) == [(10, b"kl")]
    assert (out.sent, out.dropped, bytes(out.pending)) == (12, 0, b"")


def test_outgoing_chunk_bytes_is_at_least_one():
    out = Outgoing(10, chunk_bytes=0)
    out.add(b"abc")
    assert out.full()
    assert out.take() == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_an_unfinished_character_waits_unless_final():
    euro = "€".encode()  # e2 82 ac
    out = Outgoing(100, chunk_bytes=8)
    out.add(b"a" + euro[:2])
    assert out.take() == [(0, b"a")]
    assert bytes(out.pending) == euro[:2]
    out.add(euro[2:] + b"b" + euro[:1])
    assert out.take() == [(1, euro + b"b")]
    assert out.take(final=True) == [(5, euro[:1])]
    assert out.take(final=True) == []


def test_outgoing_sends_at_most_limit_plus_one_and_counts_the_rest():
    out = Outgoing(5, chunk_bytes=4)
    out.add(b"012")
    assert out.take() == [(0, b"012")]
    out.add(b"3456789")
    assert out.dropped == 4
    out.add(b"xy")
    assert out.dropped == 6
    assert out.take(final=True) == [(3, b"345")]
    out.add(b"z")
    assert out.take(final=True) == []
    assert (out.sent, out.dropped) == (6, 7)


def test_outgoing_limit_zero_sends_one_byte():
    out = Outgoing(0)
    out.add(b"hello")
    assert out.take(final=True) == [(0, b"h")]
    assert out.dropped == 4


TEXT = "é€𝄞" * 3 + "a"  # 2-, 3- and 4-byte characters


def contiguous(chunks: list[tuple[int, bytes]]) -> bool:
    """Each chunk's offset is the bytes of the chunks before it, the first's 0."""
    return [o for o, _ in chunks] == [
        sum(len(c) for _, c in chunks[:i]) for i in range(len(chunks))
    ]


def char_starts(text: str) -> set[int]:
    starts, n = set(), 0
    for ch in text:
        starts.add(n)
        n += len(ch.encode())
    return starts | {n}


@pytest.mark.parametrize("size", range(1, 9))
def test_chunks_never_split_a_character_that_fits(size):
    data = TEXT.encode()
    out = Outgoing(1000, chunk_bytes=size)
    out.add(data)
    chunks = out.take()
    assert b"".join(c for _, c in chunks) == data
    offsets = [o for o, _ in chunks]
    assert contiguous(chunks)
    assert all(1 <= len(c) <= size for _, c in chunks)
    starts = char_starts(TEXT)
    for offset in offsets:
        if offset not in starts:  # only inside a character longer than a chunk
            char_at = next(s for s in sorted(starts, reverse=True) if s < offset)
            char_len = min(s for s in starts if s > char_at) - char_at
            assert char_len > size
    if size >= 4:
        assert [o for o, _ in chunks] == [o for o in offsets if o in starts]
        assert "".join(c.decode() for _, c in chunks) == TEXT


@pytest.mark.parametrize("size", range(1, 9))
def test_added_byte_by_byte_with_takes_in_between(size):
    data = TEXT.encode()
    out = Outgoing(1000, chunk_bytes=size)
    chunks = []
    for i in range(len(data)):
        out.add(data[i : i + 1])
        chunks += out.take()
    chunks += out.take(final=True)
    assert b"".join(c for _, c in chunks) == data
    assert contiguous(chunks)
    assert all(1 <= len(c) <= size for _, c in chunks)
    # each take held back a half character: a chunk never holds parts of two characters, and
    # a character is cut in pieces only when it is longer than a chunk
    rest = [c for _, c in chunks]
    for ch in TEXT:
        enc, pieces = ch.encode(), []
        while sum(map(len, pieces)) < len(enc):
            pieces.append(rest.pop(0))
        assert b"".join(pieces) == enc
        if len(enc) <= size:
            assert pieces == [enc]
    assert rest == []
    if size >= 4:
        assert [c.decode() for _, c in chunks] == list(TEXT)


@pytest.mark.parametrize(
    ("data", "length"),
    [
        (b"", 0),
        (b"abc", 3),
        ("é".encode(), 2),
        ("é".encode()[:1], 0),
        (b"a" + "€".encode()[:1], 1),
        (b"a" + "€".encode()[:2], 1),
        (b"a" + "€".encode(), 4),
        (b"a" + "𝄞".encode()[:3], 1),
        (b"a" + "𝄞".encode(), 5),
        (b"ab\xff", 3),
        (b"a\x80", 2),
        (b"\x80\x80\x80\x80", 4),
        (b"a\x80\x80\x80\x80", 5),
        (bytearray(b"x\xc3"), 1),
    ],
)
def test_complete_prefix(data, length):
    assert complete_prefix(data) == length


# Outgoing then accept: the whole path of a stream -------------------------------------------

PIECES = ["a", "b", "\n", "é", "€", "𝄞", "xyz"]


def random_input(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
    return "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 40))).encode()


@pytest.mark.parametrize("seed", range(6))
def test_outgoing_then_accept_keeps_the_first_limit_bytes(seed):
    rng = random.Random(seed)
    for _ in range(100):
        data = random_input(rng)
        limit = rng.randrange(0, 70)
        size = rng.randrange(1, 12)
        out = Outgoing(limit, chunk_bytes=size)
        chunks: list[tuple[int, bytes]] = []
        start = 0
        while start < len(data):
            end = min(len(data), start + rng.randrange(0, 15))
            out.add(data[start:end])
            start = end
            if rng.random() < 0.4:
                chunks += out.take()
        chunks += out.take(final=True)
        sent = b"".join(c for _, c in chunks)
        assert sent == data[: limit + 1]
        assert out.dropped == max(0, len(data) - (limit + 1))
        assert contiguous(chunks)
        assert all(1 <= len(c) <= size for _, c in chunks)
        if size >= 4:
            try:
                data.decode()
            except UnicodeDecodeError:
                pass
            else:  # valid text: every chunk but the last (a cap may cut a character) decodes
                for _, c in chunks[:-1]:
                    c.decode()

        state, stored = StreamState(), b""
        for offset, chunk in chunks:
            kept = accept(state, offset, chunk, limit)
            if kept is not None:
                stored += kept.data + kept.marker
        if len(data) > limit:
            assert stored == data[:limit] + marker(limit)
            assert state == StreamState(limit, truncated=True)
        else:
            assert stored == data
            assert state == StreamState(len(data), truncated=False)
