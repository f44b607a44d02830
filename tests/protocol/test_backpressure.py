"""Connection.receive_data(max_messages=...): the parser stops where the caller's queue is full.

The invariant: however the input is split and whatever bounds the caller passes, the
events over all calls are those of one unbounded call on the whole input, no call
returns more data messages than allowed, and what stays behind is wire bytes only
(a compressed message is not inflated before there is room for it).
"""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from epws.protocol import Close, Event, Ping, Pong, Protocol, Side
from epws.protocol.deflate import DeflateCodec

from .test_protocol import STREAM, STREAM_EVENTS, norm, raw


def is_data(ev: Event) -> bool:
    return isinstance(ev, str | bytes)


def drain(conn: Protocol, n: int) -> list[Event]:
    """Resume with room for ``n`` until a call makes no progress."""
    out: list[Event] = []
    while True:
        before = conn.input_buffered
        events = conn.receive_data(b"", max_messages=n)
        assert sum(map(is_data, events)) <= n
        out += events
        if not events and conn.input_buffered == before:
            return out


def deflated(payload: bytes) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def test_max_messages_counts_only_data_messages() -> None:
    conn = Protocol(Side.SERVER)
    events = conn.receive_data(STREAM, max_messages=1)
    # The first message, then the ping behind it; the binary message waits.
    assert norm(events) == [STREAM_EVENTS[0], STREAM_EVENTS[1]]
    assert conn.data_to_send() == b"\x8a\x05ping!"
    held = conn.input_buffered
    assert held == len(STREAM) - len(raw(1, "ünïcødé ✓ 𝄞".encode() * 3)) - len(raw(9, b"ping!"))
    assert norm(conn.receive_data(b"", max_messages=2)) == STREAM_EVENTS[2:6]
    assert norm(conn.receive_data(b"", max_messages=2)) == STREAM_EVENTS[6:]
    assert conn.input_buffered == 0
    assert conn.close_rcvd is not None


def test_max_messages_zero_handles_control_frames_up_to_the_next_data_frame() -> None:
    conn = Protocol(Side.SERVER)
    data = raw(9, b"a") + raw(10, b"b") + raw(2, b"data") + raw(9, b"c")
    assert norm(conn.receive_data(data, max_messages=0)) == [("ping", b"a"), ("pong", b"b")]
    assert conn.input_buffered == len(raw(2, b"data") + raw(9, b"c"))
    # Still nothing with no room, even with more input behind.
    assert conn.receive_data(raw(1, b"more"), max_messages=0) == []
    assert norm(conn.receive_data(b"", max_messages=1)) == [b"data", ("ping", b"c")]
    assert norm(conn.receive_data(b"")) == ["more"]
    assert conn.input_buffered == 0


def test_max_messages_zero_stops_inside_a_fragmented_message() -> None:
    conn = Protocol(Side.SERVER)
    first = raw(1, b"ab", fin=False)
    data = first + raw(9, b"p") + raw(0, b"cd", fin=False)
    assert norm(conn.receive_data(data, max_messages=1)) == [("ping", b"p")]
    assert conn.input_buffered == 0
    assert norm(conn.receive_data(raw(9, b"q") + raw(0, b"ef"), max_messages=0)) == [("ping", b"q")]
    assert conn.input_buffered == len(raw(0, b"ef"))
    assert norm(conn.receive_data(b"", max_messages=5)) == ["abcdef"]


def test_max_messages_zero_stops_inside_a_frame_payload() -> None:
    conn = Protocol(Side.SERVER)
    frame = raw(2, bytes(1000))
    assert conn.receive_data(frame[:100], max_messages=1) == []
    assert conn.receive_data(frame[100:], max_messages=0) == []
    assert conn.input_buffered == len(frame) - 100
    assert conn.receive_data(b"", max_messages=1) == [bytes(1000)]


def test_negative_max_messages_is_refused() -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Protocol(Side.SERVER).receive_data(b"", max_messages=-1)


def test_input_buffered_counts_an_incomplete_frame() -> None:
    conn = Protocol(Side.SERVER)
    frame = raw(2, b"x" * 10)
    assert conn.receive_data(frame[:3]) == []
    assert conn.input_buffered == 3
    assert conn.receive_data(frame[3:]) == [b"x" * 10]
    assert conn.input_buffered == 0


def test_buffered_input_is_parsed_after_eof() -> None:
    conn = Protocol(Side.SERVER)
    conn.receive_data(raw(1, b"a") + raw(1, b"b") + raw(8, b"\x03\xe8"), max_messages=1)
    conn.receive_eof()
    assert conn.failed  # as far as is known yet: no close frame seen
    events = conn.receive_data(raw(1, b"ignored after eof"), max_messages=1)
    assert norm(events) == ["b", ("close", 1000, "")]
    assert not conn.failed
    other = Protocol(Side.SERVER)
    other.receive_data(raw(1, b"a") + raw(1, b"b"), max_messages=1)
    other.receive_eof()
    assert other.failed
    assert other.receive_data(b"") == ["b"]
    assert other.failed


def test_compressed_messages_are_not_inflated_before_there_is_room() -> None:
    """Issue 9 item 12: many small frames that each inflate to nearly the read limit."""
    size = 256 * 1024
    payload = b"z" * (size - 1)
    frame = raw(2, deflated(payload), rsv=4)
    count = 40
    wire = frame * count
    assert len(wire) < size  # 40 messages of 256 KiB each in a few KiB
    conn = Protocol(Side.SERVER, max_size=size, codec=DeflateCodec())
    tracemalloc.start()
    try:
        events = conn.receive_data(wire, max_messages=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [payload]
    del events
    # One message inflated (and the inflater), not forty: measured ~0.6 MiB.
    assert peak < 3 * size, peak
    assert conn.input_buffered == len(frame) * (count - 1)
    for _ in range(count - 1):
        assert conn.receive_data(b"", max_messages=1) == [payload]
    assert conn.input_buffered == 0


# ---------------------------------------------------------------- any split, any bounds


def feed(conn: Protocol, data: bytes, cuts: list[int], bounds: list[int | None]) -> list[Event]:
    out: list[Event] = []
    prev = 0
    for i, cut in enumerate([*sorted(set(cuts)), len(data)]):
        n = bounds[i % len(bounds)]
        events = conn.receive_data(data[prev:cut], max_messages=n)
        if n is not None:
            assert sum(map(is_data, events)) <= n
        out += events
        prev = cut
    return out + drain(conn, 1)


def control_kinds(events: list[Event]) -> list[type]:
    return [type(ev) for ev in events if isinstance(ev, Ping | Pong | Close)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30),
    st.lists(st.none() | st.integers(min_value=0, max_value=3), min_size=1, max_size=8),
)
def test_any_split_any_bounds_same_events(cuts: list[int], bounds: list[int | None]) -> None:
    assert norm(feed(Protocol(Side.SERVER), STREAM, cuts, bounds)) == STREAM_EVENTS


COMPRESSED_STREAM = (
    raw(1, deflated("é".encode() * 300), rsv=4)
    + raw(9, b"p")
    + raw(2, deflated(bytes(5000))[:7], rsv=4, fin=False)
    + raw(0, deflated(bytes(5000))[7:])
    + raw(1, b"plain")
    + raw(2, deflated(b"x" * 100000), rsv=4)
    + raw(8, b"\x03\xe8")
)
COMPRESSED_EVENTS = [
    "é" * 300,
    ("ping", b"p"),
    bytes(5000),
    "plain",
    b"x" * 100000,
    ("close", 1000, ""),
]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=len(COMPRESSED_STREAM)), max_size=20),
    st.lists(st.none() | st.integers(min_value=0, max_value=2), min_size=1, max_size=8),
)
def test_any_split_any_bounds_compressed(cuts: list[int], bounds: list[int | None]) -> None:
    conn = Protocol(Side.SERVER, codec=DeflateCodec())
    assert norm(feed(conn, COMPRESSED_STREAM, cuts, bounds)) == COMPRESSED_EVENTS


def test_input_after_a_close_found_in_held_back_input_is_ignored() -> None:
    """Found by fuzz/fuzz_frames.py: resuming on held-back input that ended with a
    close frame forgot that the close was seen, so later input was parsed (1002)."""
    conn = Protocol(Side.SERVER)
    assert conn.receive_data(raw(1, b"a") + raw(8, b""), max_messages=0) == []
    assert norm(conn.receive_data(b"", max_messages=1)) == ["a", ("close", 1005, "")]
    assert conn.receive_data(raw(0, b"no message to continue")) == []
    assert conn.input_buffered == 0
    assert not conn.failed
