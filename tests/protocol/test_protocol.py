"""Tests for epws.protocol.connection: the sans-I/O state machine fed raw bytes.

Frames are built here by hand (:func:`raw`), independently of ``encode_frame``, so
that invalid frames (reserved bits, oversized control frames, wrong masking) can be
written and so that the parser is not only checked against its own encoder.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from epws.exceptions import InvalidState, MessageTooBig
from epws.protocol import (
    PONG_BACKLOG,
    Close,
    Event,
    Failure,
    Ping,
    Pong,
    Protocol,
    Side,
    State,
)
from epws.protocol.frames import apply_mask

KEY = bytes.fromhex("5a1b2c3d")


def raw(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = KEY,
    length: int | None = None,
) -> bytes:
    """One frame as bytes; ``key=None`` for an unmasked frame (server to client).

    ``length`` overrides the length field (to announce a payload that is not sent).
    """
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if key is not None else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def srv(max_size: int | None = 1 << 20) -> Protocol:
    return Protocol(Side.SERVER, max_size=max_size)


def cli(max_size: int | None = 1 << 20) -> Protocol:
    return Protocol(Side.CLIENT, max_size=max_size)


def norm(events: list[Event]) -> list[object]:
    """Events as comparable values (the event classes have no __eq__)."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, str | bytes):
            out.append(ev)
        elif isinstance(ev, Ping):
            out.append(("ping", ev.payload))
        elif isinstance(ev, Pong):
            out.append(("pong", ev.payload))
        elif isinstance(ev, Close):
            out.append(("close", ev.code, ev.reason))
        else:
            assert isinstance(ev, Failure)
            out.append(("fail", ev.code))
    return out


def feed_chunks(conn: Protocol, data: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events.extend(conn.receive_data(data[prev:cut]))
        prev = cut
    return events


def failure_code(events: list[Event]) -> int:
    assert events, "expected a Failure event"
    last = events[-1]
    assert isinstance(last, Failure), events
    return last.code


# ---------------------------------------------------------------- all opcodes


def test_all_opcodes_to_server() -> None:
    conn = srv()
    data = (
        raw(1, "héllo".encode())
        + raw(2, b"\x00\xff")
        + raw(9, b"p1")
        + raw(10, b"p2")
        + raw(1, b"Hel", fin=False)
        + raw(0, b"lo", fin=False)
        + raw(0, b"!")
        + raw(8, b"\x03\xe8bye")
    )
    assert norm(conn.receive_data(data)) == [
        "héllo",
        b"\x00\xff",
        ("ping", b"p1"),
        ("pong", b"p2"),
        "Hello!",
        ("close", 1000, "bye"),
    ]
    assert conn.state is State.CLOSING
    assert conn.close_rcvd is not None


def test_all_opcodes_to_client() -> None:
    conn = cli()
    data = raw(1, b"a", key=None) + raw(2, b"b", key=None) + raw(9, b"", key=None)
    data += raw(10, b"", key=None) + raw(8, b"", key=None)
    assert norm(conn.receive_data(data)) == [
        "a",
        b"b",
        ("ping", b""),
        ("pong", b""),
        ("close", 1005, ""),
    ]


def test_empty_messages() -> None:
    conn = srv()
    data = raw(1) + raw(2) + raw(1, fin=False) + raw(0)
    assert norm(conn.receive_data(data)) == ["", b"", ""]


# ---------------------------------------------------------------- splitting

STREAM = (
    raw(1, "ünïcødé ✓ 𝄞".encode() * 3)
    + raw(9, b"ping!")
    + raw(2, bytes(range(256)) * 2)  # 16-bit length
    + raw(1, "€".encode() * 10, fin=False)
    + raw(9, b"in the middle")
    + raw(0, "𝄞".encode() * 5, fin=False)
    + raw(10, b"pong")
    + raw(0, b"end")
    + raw(2, bytes(70000))  # 64-bit length
    + raw(8, b"\x0b\xb8ciao")
)
STREAM_EVENTS = [
    "ünïcødé ✓ 𝄞" * 3,
    ("ping", b"ping!"),
    bytes(range(256)) * 2,
    ("ping", b"in the middle"),
    ("pong", b"pong"),
    "€" * 10 + "𝄞" * 5 + "end",
    bytes(70000),
    ("close", 3000, "ciao"),
]


def test_whole_stream() -> None:
    assert norm(srv().receive_data(STREAM)) == STREAM_EVENTS


def test_one_byte_at_a_time() -> None:
    conn = srv()
    events: list[Event] = []
    for i in range(len(STREAM)):
        events.extend(conn.receive_data(STREAM[i : i + 1]))
    assert norm(events) == STREAM_EVENTS


def test_bytearray_input() -> None:
    assert norm(srv().receive_data(bytearray(STREAM))) == STREAM_EVENTS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_random_splits(cuts: list[int]) -> None:
    assert norm(feed_chunks(srv(), STREAM, cuts)) == STREAM_EVENTS


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([4095, 4096, 4097, 16384, 70001]), min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.integers(min_value=0, max_value=300_000), max_size=8),
    as_bytearray=st.booleans(),
)
def test_large_payloads_unmask_the_same_whole_or_split(
    sizes: list[int], seed: int, cuts: list[int], as_bytearray: bool
) -> None:
    # Large payloads with random content and keys that are not zero (a zero key, or
    # zero payloads, would hide an unmasking offset error), at odd offsets of the
    # input, text too: every byte the same, whole or split anywhere.
    rng = random.Random(seed)
    payloads = [rng.randbytes(n) for n in sizes]
    texts = ["é" * (n // 2) for n in sizes]
    # A short frame in front, so the large ones start at odd offsets of the input.
    stream = raw(2, b"abc", key=b"\x9d\x01\xfe\x42")
    for i, (payload, text) in enumerate(zip(payloads, texts, strict=True)):
        key = bytes(rng.getrandbits(8) | 1 for _ in range(4))
        stream += raw(2, payload, key=key) + raw(1, text.encode(), key=key)
        if i % 2:
            stream += raw(2, payload[:7], key=key)
    expected: list[object] = [b"abc"]
    for i, (payload, text) in enumerate(zip(payloads, texts, strict=True)):
        expected += [payload, text] + ([payload[:7]] if i % 2 else [])
    data = bytearray(stream) if as_bytearray else stream
    assert srv(max_size=None).receive_data(data) == expected
    assert feed_chunks(srv(max_size=None), stream, [c % (len(stream) + 1) for c in cuts]) == (
        expected
    )


BAD_STREAM = raw(1, b"ok") + raw(1, b"abc" + b"\xc3\x28xyz") + raw(1, b"never")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(BAD_STREAM)), max_size=10))
def test_random_splits_with_violation(cuts: list[int]) -> None:
    assert norm(feed_chunks(srv(), BAD_STREAM, cuts)) == ["ok", ("fail", 1007)]


def test_every_ping_is_answered_in_order_however_split() -> None:
    """Pings since the last data_to_send() each get their pong, in order, whatever the
    split (Autobahn|Testsuite 2.10/2.11 send ten pings in a row and expect ten pongs)."""
    conn = srv()
    for i in range(len(STREAM)):
        conn.receive_data(STREAM[i : i + 1])
    pings = [ev.payload for ev in srv().receive_data(STREAM) if isinstance(ev, Ping)]
    assert len(pings) >= 2
    expected = b"".join(b"\x8a" + bytes([len(p)]) + p for p in pings)
    assert conn.data_to_send() == expected
    assert conn.data_to_send() == b""
    whole = srv()
    whole.receive_data(STREAM)
    assert whole.data_to_send() == expected


def test_ten_pings_in_one_read_get_ten_pongs() -> None:
    conn = srv()
    conn.receive_data(b"".join(raw(9, b"ping-%d" % i) for i in range(10)))
    out = conn.data_to_send()
    assert out == b"".join(b"\x8a\x06ping-%d" % i for i in range(10))


def test_ping_flood_queues_at_most_the_backlog_of_latest_pongs() -> None:
    conn = srv()
    flood = b"".join(raw(9, b"%d" % i) for i in range(10000))
    events = conn.receive_data(flood)
    assert len(events) == 10000 and all(isinstance(ev, Ping) for ev in events)
    latest = range(10000 - PONG_BACKLOG, 10000)
    assert conn.data_to_send() == b"".join(b"\x8a\x04%d" % i for i in latest)
    assert conn.data_to_send() == b""
    conn.receive_data(raw(9, b"a"))
    conn.receive_data(raw(9, b"b"))  # not read in between: both answered, in order
    assert conn.data_to_send() == b"\x8a\x01a\x8a\x01b"


# ---------------------------------------------------------------- UTF-8, fail fast


def test_utf8_fail_fast_inside_one_frame_split() -> None:
    conn = srv()
    frame = raw(1, b"abc\xff" + b"z" * 100)
    # Header + mask + the first 4 payload bytes: the \xff is already impossible.
    assert failure_code(conn.receive_data(frame[:10])) == 1007
    assert conn.failed


def test_utf8_valid_prefix_split_waits() -> None:
    conn = srv()
    frame = raw(1, "é".encode() * 3)  # c3 a9 c3 a9 c3 a9
    assert conn.receive_data(frame[:7]) == []  # ends in the middle of "é"
    assert conn.receive_data(frame[7:]) == ["ééé"]


def test_utf8_fail_fast_across_fragments() -> None:
    conn = srv()
    assert conn.receive_data(raw(1, b"hello", fin=False)) == []
    assert conn.receive_data(raw(0, b"\xce\xba", fin=False)) == []
    # A lone continuation byte: the fragment is not final, the message not over.
    assert failure_code(conn.receive_data(raw(0, b"\x80", fin=False))) == 1007


def test_utf8_fail_fast_sequence_cut_between_fragments() -> None:
    conn = srv()
    assert conn.receive_data(raw(1, b"a\xe2\x82", fin=False)) == []  # valid so far
    assert failure_code(conn.receive_data(raw(0, b"A", fin=False))) == 1007


@pytest.mark.parametrize(
    "prefix",
    [
        b"\xed\xa0",  # UTF-16 high surrogate start (U+D800)
        b"\xed\xbf",  # U+DFC0.. low surrogate range
        b"\xf4\x90",  # above U+10FFFF
        b"\xf5",  # never a lead byte
        b"\xc0",  # overlong lead
        b"\xe0\x80",  # overlong 3-byte
        b"\xf0\x80",  # overlong 4-byte
    ],
)
def test_utf8_impossible_prefix_fails_at_once(prefix: bytes) -> None:
    # Fragmented: the message is not final, so only fail-fast can catch it now.
    conn = srv()
    assert failure_code(conn.receive_data(raw(1, b"ok" + prefix, fin=False))) == 1007
    # One frame split across chunks: the payload has arrived up to the prefix only.
    conn = srv()
    frame = raw(1, b"ok" + prefix + b"\x80\x80rest")
    assert failure_code(conn.receive_data(frame[: 6 + 2 + len(prefix)])) == 1007


def test_utf8_ed_below_a0_is_fine() -> None:
    conn = srv()
    assert conn.receive_data(raw(1, b"\xed\x9f", fin=False)) == []
    assert conn.receive_data(raw(0, b"\xbf")) == ["\ud7ff"]


def test_utf8_incomplete_at_message_end() -> None:
    assert failure_code(srv().receive_data(raw(1, b"ab\xe2\x82"))) == 1007
    conn = srv()
    conn.receive_data(raw(1, b"ab\xe2", fin=False))
    assert failure_code(conn.receive_data(raw(0, b"\x82"))) == 1007


def test_binary_is_not_validated() -> None:
    assert srv().receive_data(raw(2, b"\xff\xfe\xed\xa0\x80")) == [b"\xff\xfe\xed\xa0\x80"]


# ---------------------------------------------------------------- 1002 paths


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("rsv1 on text without extension", raw(1, b"x", rsv=4)),
        ("rsv2 on binary", raw(2, b"x", rsv=2)),
        ("rsv3 on text", raw(1, b"x", rsv=1)),
        ("rsv on ping", raw(9, b"", rsv=4)),
        ("rsv on continuation", raw(1, b"a", fin=False) + raw(0, b"b", rsv=2)),
        ("reserved data opcode 3", raw(3, b"")),
        ("reserved data opcode 7", raw(7, b"")),
        ("reserved control opcode 0xB", raw(0xB, b"")),
        ("reserved control opcode 0xF", raw(0xF, b"")),
        ("unmasked client frame", raw(1, b"x", key=None)),
        ("unmasked client ping", raw(9, b"", key=None)),
        ("fragmented ping", raw(9, b"a", fin=False)),
        ("fragmented close", raw(8, b"\x03\xe8", fin=False)),
        ("ping of 126 bytes", raw(9, bytes(126))),
        ("pong of 126 bytes", raw(10, bytes(126))),
        ("close of 126 bytes", raw(8, b"\x03\xe8" + bytes(124))),
        ("continuation without start", raw(0, b"x")),
        ("non-final continuation without start", raw(0, b"x", fin=False)),
        ("text during fragmented message", raw(1, b"a", fin=False) + raw(1, b"b")),
        ("binary during fragmented message", raw(2, b"a", fin=False) + raw(2, b"b")),
        ("close code 999", raw(8, b"\x03\xe7")),
        ("close code 1004", raw(8, b"\x03\xec")),
        ("close code 1005", raw(8, b"\x03\xed")),
        ("close code 1006", raw(8, b"\x03\xee")),
        ("close code 1015", raw(8, b"\x03\xf7")),
        ("close code 2999", raw(8, b"\x0b\xb7")),
        ("close code 5000", raw(8, b"\x13\x88")),
        ("close code 0", raw(8, b"\x00\x00")),
        ("1-byte close payload", raw(8, b"\x03")),
    ],
)
def test_protocol_errors_1002_server(name: str, data: bytes) -> None:
    conn = srv()
    assert failure_code(conn.receive_data(data)) == 1002
    assert conn.failed
    assert conn.state is State.CLOSING


def test_masked_frame_to_client_is_1002() -> None:
    conn = cli()
    assert failure_code(conn.receive_data(raw(1, b"x", key=KEY))) == 1002
    conn = cli()
    assert failure_code(conn.receive_data(raw(9, b"", key=KEY))) == 1002


def test_64bit_length_with_msb_is_1002() -> None:
    data = bytes((0x82, 0xFF)) + b"\x80" + bytes(7) + KEY
    assert failure_code(srv(max_size=None).receive_data(data)) == 1002


def test_control_frame_too_big_refused_at_header() -> None:
    # Only the header of a 200-byte ping arrives: it is refused without waiting.
    conn = srv()
    assert failure_code(conn.receive_data(raw(9, bytes(200))[:8])) == 1002


def test_failure_error_is_a_protocol_error_with_message() -> None:
    (ev,) = srv().receive_data(raw(0, b"x"))
    assert isinstance(ev, Failure)
    assert ev.error.code == 1002
    assert "continuation" in str(ev.error)


# ---------------------------------------------------------------- 1007 paths


def test_bad_utf8_text_is_1007() -> None:
    assert failure_code(srv().receive_data(raw(1, b"\xff"))) == 1007


def test_bad_utf8_close_reason_is_1007() -> None:
    assert failure_code(srv().receive_data(raw(8, b"\x03\xe8\xff"))) == 1007
    assert failure_code(srv().receive_data(raw(8, b"\x03\xe8\xed\xa0\x80"))) == 1007


# ---------------------------------------------------------------- 1009


def test_over_max_size_refused_at_the_header() -> None:
    conn = srv(max_size=1000)
    frame = raw(2, bytes(1001))
    header = frame[:8]  # 2 + 2-byte length + 4-byte key, no payload at all
    ev = conn.receive_data(header)
    assert failure_code(ev) == 1009
    assert isinstance(ev[-1], Failure)
    assert isinstance(ev[-1].error, MessageTooBig)


def test_huge_64bit_length_refused_at_the_header() -> None:
    conn = srv(max_size=1 << 20)
    header = bytes((0x82, 0xFF)) + struct.pack("!Q", 1 << 40) + KEY
    assert failure_code(conn.receive_data(header)) == 1009


def test_max_size_counts_all_fragments() -> None:
    conn = srv(max_size=10)
    assert conn.receive_data(raw(2, bytes(6), fin=False)) == []
    # The second fragment's header alone pushes the message over 10 bytes.
    assert failure_code(conn.receive_data(raw(0, bytes(5))[:6])) == 1009


def test_exactly_max_size_is_accepted() -> None:
    conn = srv(max_size=10)
    assert conn.receive_data(raw(1, b"a" * 10)) == ["a" * 10]
    assert conn.receive_data(raw(2, bytes(4), fin=False) + raw(0, bytes(6))) == [bytes(10)]


def test_max_size_none_is_unlimited() -> None:
    assert srv(max_size=None).receive_data(raw(2, bytes(2 << 20))) == [bytes(2 << 20)]


def test_max_size_can_be_changed() -> None:
    conn = srv(max_size=10)
    conn.max_size = 100
    assert conn.receive_data(raw(2, bytes(50))) == [bytes(50)]


# ---------------------------------------------------------------- ordering


def test_events_before_violation_come_first() -> None:
    data = raw(1, b"first") + raw(9, b"p") + raw(2, b"second") + raw(5, b"") + raw(1, b"after")
    conn = srv()
    assert norm(conn.receive_data(data)) == ["first", ("ping", b"p"), b"second", ("fail", 1002)]


def test_input_after_failure_ignored() -> None:
    conn = srv()
    conn.receive_data(raw(0, b""))
    assert conn.receive_data(raw(1, b"late")) == []
    assert conn.data_to_send() == b""


def test_input_after_close_ignored() -> None:
    conn = srv()
    events = conn.receive_data(raw(8, b"\x03\xe8") + raw(1, b"in the same packet"))
    assert norm(events) == [("close", 1000, "")]
    assert conn.receive_data(raw(1, b"later") + raw(9, b"x")) == []
    assert conn.data_to_send() == b""  # no pong for a ping after the close


def test_close_in_the_middle_of_a_fragmented_message_is_normal() -> None:
    conn = srv()
    data = raw(1, b"part", fin=False) + raw(8, b"\x03\xe9gone")
    assert norm(conn.receive_data(data)) == [("close", 1001, "gone")]
    assert not conn.failed


def test_close_in_the_middle_of_a_frame_payload_split() -> None:
    # A close after a fragment whose payload came in pieces.
    conn = srv()
    frag = raw(2, bytes(300), fin=False)
    assert conn.receive_data(frag[:100]) == []
    # The message is abandoned for the close frame, which is a clean 1005.
    assert norm(conn.receive_data(frag[100:] + raw(8, b""))) == [("close", 1005, "")]
    assert not conn.failed


def test_eof_without_close_marks_failure() -> None:
    conn = srv()
    conn.receive_eof()
    assert conn.failed
    conn = srv()
    conn.receive_data(raw(8, b""))
    conn.receive_eof()
    assert not conn.failed


# ---------------------------------------------------------------- pongs and close replies


def test_auto_pong_carries_ping_payload_server() -> None:
    conn = srv()
    conn.receive_data(raw(9, b"abc"))
    assert conn.data_to_send() == b"\x8a\x03abc"


def test_auto_pong_from_client_is_masked() -> None:
    conn = cli()
    conn.receive_data(raw(9, b"abc", key=None))
    out = conn.data_to_send()
    assert out[0] == 0x8A and out[1] == 0x83
    assert apply_mask(out[6:], out[2:6]) == b"abc"


def test_auto_pong_max_payload() -> None:
    conn = srv()
    conn.receive_data(raw(9, bytes(range(125))))
    assert conn.data_to_send() == b"\x8a\x7d" + bytes(range(125))


def test_no_auto_pong_after_close_sent() -> None:
    conn = srv()
    conn.send_close(1000)
    assert norm(conn.receive_data(raw(9, b"x"))) == [("ping", b"x")]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    ("payload", "reply"),
    [(b"\x03\xe8", b"\x88\x02\x03\xe8"), (b"\x0f\xa0why", b"\x88\x02\x0f\xa0"), (b"", b"\x88\x00")],
)
def test_close_reply_echoes_code(payload: bytes, reply: bytes) -> None:
    conn = srv()
    conn.receive_data(raw(8, payload))
    assert conn.close_reply() == reply
    assert conn.state is State.CLOSED
    assert conn.close_reply() == b""


def test_close_reply_before_close_is_empty() -> None:
    assert srv().close_reply() == b""


def test_send_close_then_receive_close() -> None:
    conn = srv()
    assert conn.send_close(1001, "bye") == b"\x88\x05\x03\xe9bye"
    assert conn.state is State.CLOSING
    assert conn.send_close(1000) == b""  # only once
    conn.receive_data(raw(8, b"\x03\xe9"))
    state: State = conn.state  # a fresh read of the property
    assert state is State.CLOSED
    assert conn.close_sent == (1001, "bye")


def test_fail_sends_close_with_code() -> None:
    conn = srv()
    (ev,) = conn.receive_data(raw(1, b"\xff"))
    assert isinstance(ev, Failure)
    frame = conn.fail(ev.code, str(ev.error))
    assert frame[:4] == b"\x88" + bytes((len(frame) - 2,)) + b"\x03\xef"
    assert conn.fail(1002) == b""  # a close frame goes out once


def test_fail_truncates_long_reason() -> None:
    frame = srv().fail(1002, "é" * 100)
    assert len(frame) <= 2 + 125
    frame[4:].decode()  # still valid UTF-8


# ---------------------------------------------------------------- sending


def test_send_text_and_binary_server() -> None:
    conn = srv()
    assert conn.send_text("hé") == b"\x81\x03h\xc3\xa9"
    assert conn.send_binary(b"\x00") == b"\x82\x01\x00"


def test_send_from_client_is_masked_and_parses() -> None:
    client = cli()
    server = srv()
    wire = client.send_text("hello") + client.send_binary(bytes(300)) + client.send_ping(b"x")
    assert norm(server.receive_data(wire)) == ["hello", bytes(300), ("ping", b"x")]


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_send_close_refuses_bad_codes(code: int) -> None:
    conn = srv()
    with pytest.raises(ValueError):
        conn.send_close(code)
    assert conn.close_sent is None


def test_send_close_reason_length() -> None:
    with pytest.raises(ValueError):
        srv().send_close(1000, "x" * 124)
    assert len(srv().send_close(1000, "x" * 123)) == 127


def test_send_close_none_is_empty() -> None:
    assert srv().send_close(None) == b"\x88\x00"


def test_ping_pong_size_limits() -> None:
    conn = srv()
    assert conn.send_ping(bytes(125))[:2] == b"\x89\x7d"
    with pytest.raises(ValueError):
        conn.send_ping(bytes(126))
    with pytest.raises(ValueError):
        conn.send_pong(bytes(126))
    assert conn.send_pong(b"") == b"\x8a\x00"


def test_no_sending_after_close() -> None:
    conn = srv()
    conn.send_close()
    calls: list[Callable[[], object]] = [
        lambda: conn.send_text("x"),
        lambda: conn.send_binary(b"x"),
        lambda: conn.send_ping(),
        lambda: conn.send_pong(),
        lambda: conn.send_fragment(1, b"x", fin=False),
    ]
    for call in calls:
        with pytest.raises(InvalidState):
            call()


def test_fragmented_sending() -> None:
    conn = srv()
    assert conn.send_fragment(1, b"Hel", fin=False) == bytes.fromhex("010348656c")
    # Control frames may go between fragments.
    assert conn.send_ping(b"") == b"\x89\x00"
    assert conn.send_fragment(0, b"lo", fin=True) == bytes.fromhex("80026c6f")
    # The message is over: a whole message may be sent again.
    assert conn.send_text("x") == b"\x81\x01x"


def test_fragmented_sending_state_errors() -> None:
    conn = srv()
    with pytest.raises(InvalidState):
        conn.send_fragment(0, b"x", fin=False)  # continuation without start
    with pytest.raises(InvalidState):
        conn.send_fragment(9, b"x", fin=False)  # control opcode
    conn.send_fragment(2, b"a", fin=False)
    with pytest.raises(InvalidState):
        conn.send_fragment(1, b"b", fin=False)  # second start
    with pytest.raises(InvalidState):
        conn.send_binary(b"whole")  # whole message during a fragmented one
    with pytest.raises(InvalidState):
        conn.send_text("whole")
    conn.send_fragment(0, b"c", fin=True)
    with pytest.raises(InvalidState):
        conn.send_fragment(0, b"d", fin=True)  # nothing open any more


def test_fragmented_roundtrip_client_to_server() -> None:
    client = cli()
    server = srv()
    wire = client.send_fragment(1, b"ab", fin=False)
    wire += client.send_fragment(0, "ç".encode(), fin=False)
    wire += client.send_fragment(0, b"", fin=True)
    assert server.receive_data(wire) == ["abç"]


# ---------------------------------------------------------------- many fragments


def test_ten_thousand_one_byte_fragments_text() -> None:
    conn = srv()
    parts = [raw(1, b"a", fin=False)]
    parts += [raw(0, b"b", fin=False) for _ in range(9998)]
    parts.append(raw(0, b"c"))
    data = b"".join(parts)
    assert conn.receive_data(data) == ["a" + "b" * 9998 + "c"]


def test_ten_thousand_one_byte_fragments_binary_in_pieces() -> None:
    conn = srv()
    parts = [raw(2, b"\x01", fin=False)]
    parts += [raw(0, b"\x02", fin=False) for _ in range(9998)]
    parts.append(raw(0, b"\x03"))
    data = b"".join(parts)
    events: list[Event] = []
    for i in range(0, len(data), 997):
        events.extend(conn.receive_data(data[i : i + 997]))
    assert events == [b"\x01" + b"\x02" * 9998 + b"\x03"]


def test_many_fragments_still_bound_by_max_size() -> None:
    conn = srv(max_size=5000)
    data = raw(2, b"x", fin=False) + b"".join(raw(0, b"x", fin=False) for _ in range(6000))
    assert failure_code(conn.receive_data(data)) == 1009
