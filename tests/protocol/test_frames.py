"""Tests for epws.protocol.frames: the stateless wire vocabulary of RFC 6455 §5.

Frames are checked byte for byte in both directions: encoded by :func:`encode_frame`
and decoded by the parser (which lives in :class:`Connection`, next to its state).
"""

from __future__ import annotations

import os
import random
import struct
import types
from collections.abc import Callable
from typing import TypeVar

import pytest

from epws.protocol import Close, Event, Ping, Pong, Protocol, Side, frames
from epws.protocol.frames import (
    CloseCode,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    is_valid_close_code,
    parse_close_payload,
)

RFC_MASK = bytes.fromhex("37fa213d")


@pytest.fixture
def fixed_mask(monkeypatch: pytest.MonkeyPatch):
    """Make encode_frame use known masking keys, in order, instead of os.urandom.

    Only the frames module's view of ``os`` is replaced, so nothing else in the
    process gets predictable randomness.
    """
    keys: list[bytes] = []

    def urandom(n: int) -> bytes:
        assert n == 4
        return keys.pop(0)

    fake_os = types.SimpleNamespace(urandom=urandom, environ=os.environ)
    monkeypatch.setattr(frames, "os", fake_os)
    return keys


def parse(data: bytes, side: Side) -> list[Event]:
    conn = Protocol(side, max_size=None)
    return conn.receive_data(data)


def ref_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# ---------------------------------------------------------------- RFC 6455 §5.7


RFC_VECTORS_UNMASKED = [
    ("single-frame unmasked text", Opcode.TEXT, b"Hello", "810548656c6c6f"),
    ("unmasked ping", Opcode.PING, b"Hello", "890548656c6c6f"),
]
RFC_VECTORS_MASKED = [
    ("single-frame masked text", Opcode.TEXT, b"Hello", "818537fa213d7f9f4d5158"),
    ("masked pong", Opcode.PONG, b"Hello", "8a8537fa213d7f9f4d5158"),
]


@pytest.mark.parametrize(("name", "opcode", "payload", "wire"), RFC_VECTORS_UNMASKED)
def test_rfc_unmasked_encode(name: str, opcode: Opcode, payload: bytes, wire: str) -> None:
    assert encode_frame(opcode, payload) == bytes.fromhex(wire)


@pytest.mark.parametrize(("name", "opcode", "payload", "wire"), RFC_VECTORS_MASKED)
def test_rfc_masked_encode(
    fixed_mask: list[bytes], name: str, opcode: Opcode, payload: bytes, wire: str
) -> None:
    fixed_mask.append(RFC_MASK)
    assert encode_frame(opcode, payload, mask=True) == bytes.fromhex(wire)


def test_rfc_decode_unmasked_text() -> None:
    assert parse(bytes.fromhex("810548656c6c6f"), Side.CLIENT) == ["Hello"]


def test_rfc_decode_masked_text() -> None:
    assert parse(bytes.fromhex("818537fa213d7f9f4d5158"), Side.SERVER) == ["Hello"]


def test_rfc_decode_unmasked_ping() -> None:
    conn = Protocol(Side.CLIENT)
    (event,) = conn.receive_data(bytes.fromhex("890548656c6c6f"))
    assert isinstance(event, Ping)
    assert event.payload == b"Hello"


def test_rfc_decode_masked_pong() -> None:
    (event,) = parse(bytes.fromhex("8a8537fa213d7f9f4d5158"), Side.SERVER)
    assert isinstance(event, Pong)
    assert event.payload == b"Hello"


def test_rfc_fragmented_unmasked_text(fixed_mask: list[bytes]) -> None:
    first = bytes.fromhex("010348656c")
    second = bytes.fromhex("80026c6f")
    assert encode_frame(Opcode.TEXT, b"Hel", fin=False) == first
    assert encode_frame(Opcode.CONT, b"lo") == second
    conn = Protocol(Side.CLIENT)
    assert conn.receive_data(first) == []
    assert conn.receive_data(second) == ["Hello"]


@pytest.mark.parametrize(
    ("size", "header"),
    [(256, "827e0100"), (65536, "827f0000000000010000")],
)
def test_rfc_binary_length_headers(size: int, header: str) -> None:
    payload = bytes(range(256)) * (size // 256)
    wire = encode_frame(Opcode.BINARY, payload)
    assert wire == bytes.fromhex(header) + payload
    assert parse(wire, Side.CLIENT) == [payload]


# ---------------------------------------------------------------- our own vectors


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "8200"),
        (1, "8201"),
        (125, "827d"),
        (126, "827e007e"),
        (127, "827e007f"),
        (65535, "827effff"),
        (65536, "827f0000000000010000"),
        (65537, "827f0000000000010001"),
    ],
)
def test_length_boundaries_unmasked(size: int, header: str) -> None:
    payload = bytes(i & 0xFF for i in range(size))
    wire = encode_frame(Opcode.BINARY, payload)
    assert wire[: len(header) // 2] == bytes.fromhex(header)
    assert wire[len(header) // 2 :] == payload
    assert parse(wire, Side.CLIENT) == [payload]


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, "8280"),
        (125, "82fd"),
        (126, "82fe007e"),
        (65535, "82feffff"),
        (65536, "82ff0000000000010000"),
    ],
)
def test_length_boundaries_masked(fixed_mask: list[bytes], size: int, header: str) -> None:
    key = bytes.fromhex("a1b2c3d4")
    fixed_mask.append(key)
    payload = bytes((i * 7) & 0xFF for i in range(size))
    wire = encode_frame(Opcode.BINARY, payload, mask=True)
    hlen = len(header) // 2
    assert wire[:hlen] == bytes.fromhex(header)
    assert wire[hlen : hlen + 4] == key
    assert wire[hlen + 4 :] == ref_mask(payload, key)
    assert parse(wire, Side.SERVER) == [payload]


def test_masked_known_keys_vectors(fixed_mask: list[bytes]) -> None:
    # Hand-computed: "abc" XOR 01 02 03 -> 60 60 60; all-zero key leaves data alone.
    fixed_mask.extend([bytes.fromhex("01020304"), b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"])
    assert encode_frame(Opcode.TEXT, b"abc", mask=True) == bytes.fromhex("818301020304606060")
    assert encode_frame(Opcode.BINARY, b"\x10\x20", mask=True) == bytes.fromhex(
        "82820000000010 20".replace(" ", "")
    )
    assert encode_frame(Opcode.BINARY, b"\x0f\xf0", mask=True) == bytes.fromhex("8282fffffffff00f")
    assert fixed_mask == []


def test_fin_rsv1_and_opcode_bits() -> None:
    assert encode_frame(Opcode.CONT, b"", fin=False) == b"\x00\x00"
    assert encode_frame(Opcode.TEXT, b"", fin=False) == b"\x01\x00"
    assert encode_frame(Opcode.BINARY, b"", rsv1=True) == b"\xc2\x00"
    assert encode_frame(Opcode.CLOSE, b"") == b"\x88\x00"
    assert encode_frame(Opcode.PONG, b"") == b"\x8a\x00"


def test_encode_accepts_bytearray_and_memoryview() -> None:
    expected = encode_frame(Opcode.BINARY, b"xyz")
    assert encode_frame(Opcode.BINARY, bytearray(b"xyz")) == expected
    assert encode_frame(Opcode.BINARY, memoryview(b"xyz")) == expected


def test_client_masks_are_fresh() -> None:
    keys = {encode_frame(Opcode.TEXT, b"x", mask=True)[2:6] for _ in range(32)}
    assert len(keys) > 16  # 32 random 4-byte keys: collisions are vanishingly rare


def test_opcode_and_close_code_values() -> None:
    assert [int(o) for o in Opcode] == [0, 1, 2, 8, 9, 10]
    assert int(CloseCode.NORMAL_CLOSURE) == 1000
    assert int(CloseCode.MESSAGE_TOO_BIG) == 1009
    assert int(CloseCode.NO_STATUS_RCVD) == 1005


# ---------------------------------------------------------------- masking


MaskFn = Callable[[bytes | bytearray | memoryview, bytes], bytes]
_F = TypeVar("_F")


def _with_twin(used: _F, twin: _F) -> list[_F]:
    """The function in use and, when the C accelerator replaced it, its Python twin."""
    return [used] if used is twin else [used, twin]


def _impl_id(f: object) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__name__', '?')}"


@pytest.mark.parametrize("impl", _with_twin(apply_mask, frames._apply_mask_py), ids=_impl_id)
def test_apply_mask_matches_reference(impl: MaskFn) -> None:
    rng = random.Random(6455)
    base_key = bytes(rng.randrange(256) for _ in range(4))
    data = bytes(rng.randrange(256) for _ in range(1024 + 3))
    for rotation in range(4):
        key = base_key[rotation:] + base_key[:rotation]
        for size in range(1025):
            chunk = data[rotation : rotation + size]
            expected = ref_mask(chunk, key)
            assert impl(chunk, key) == expected, (size, rotation)
    # bytearray and memoryview inputs give the same bytes.
    assert impl(bytearray(data[:77]), base_key) == ref_mask(data[:77], base_key)
    assert impl(memoryview(data)[5:90], base_key) == ref_mask(data[5:90], base_key)


UnmaskFn = Callable[[bytes | bytearray, int, int], bytes]


_UNMASKERS: list[UnmaskFn] = _with_twin(frames.unmask_at, frames._unmask_at_py)


@pytest.mark.parametrize("impl", _UNMASKERS, ids=_impl_id)
def test_unmask_at_reads_the_payload_and_its_key_where_they_lie(impl: UnmaskFn) -> None:
    rng = random.Random(7692)
    data = bytes(rng.randrange(256) for _ in range(600))
    for start in (4, 5, 6, 7, 8, 13, 100):
        key = data[start - 4 : start]
        for end in range(start, min(len(data), start + 70)):
            expected = ref_mask(data[start:end], key)
            assert impl(data, start, end) == expected, (start, end)
            assert impl(bytearray(data), start, end) == expected, (start, end)
    assert impl(data, 4, len(data)) == ref_mask(data[4:], data[:4])
    assert type(impl(bytearray(data), 10, 20)) is bytes


@pytest.mark.parametrize("impl", _UNMASKERS, ids=_impl_id)
@pytest.mark.parametrize("start, end", [(3, 10), (0, 0), (10, 9), (10, 65), (-1, 5)])
def test_unmask_at_refuses_a_range_without_its_key_or_past_the_end(
    impl: UnmaskFn, start: int, end: int
) -> None:
    with pytest.raises(ValueError, match="4 <= start <= end"):
        impl(bytes(64), start, end)


def test_apply_mask_is_an_involution() -> None:
    data = os.urandom(3000)
    key = os.urandom(4)
    assert apply_mask(apply_mask(data, key), key) == data
    assert apply_mask(b"", key) == b""


# ---------------------------------------------------------------- close payloads


@pytest.mark.parametrize(
    ("code", "reason", "wire"),
    [
        (1000, "", "03e8"),
        (1001, "bye", "03e9627965"),
        (3000, "", "0bb8"),
        (4999, "é", "1387c3a9"),
        (None, "", ""),
    ],
)
def test_close_payload_roundtrip(code: int | None, reason: str, wire: str) -> None:
    payload = encode_close_payload(code, reason)
    assert payload == bytes.fromhex(wire)
    assert parse_close_payload(payload) == ((1005, "") if code is None else (code, reason))


def test_close_reason_length_limit() -> None:
    assert len(encode_close_payload(1000, "x" * 123)) == 125
    with pytest.raises(ValueError):
        encode_close_payload(1000, "x" * 124)
    with pytest.raises(ValueError):
        encode_close_payload(1000, "é" * 62)  # 124 bytes of UTF-8


def test_close_reason_without_code_refused() -> None:
    with pytest.raises(ValueError):
        encode_close_payload(None, "why")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_encode_close_refuses_invalid_codes(code: int) -> None:
    with pytest.raises(ValueError):
        encode_close_payload(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000])
def test_parse_close_invalid_code_is_1002(code: int) -> None:
    with pytest.raises(ValueError) as info:
        parse_close_payload(struct.pack("!H", code))
    assert info.value.args[1] == 1002


def test_parse_close_one_byte_is_1002() -> None:
    with pytest.raises(ValueError) as info:
        parse_close_payload(b"\x03")
    assert info.value.args[1] == 1002


@pytest.mark.parametrize(
    "reason",
    [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"ok\xf4\x90\x80\x80", b"\xe2\x82"],
)
def test_parse_close_bad_utf8_reason_is_1007(reason: bytes) -> None:
    with pytest.raises(ValueError) as info:
        parse_close_payload(b"\x03\xe8" + reason)
    assert info.value.args[1] == 1007


def test_is_valid_close_code_table() -> None:
    valid = {c for c in range(0, 70000) if is_valid_close_code(c)}
    expected = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))
    assert valid == expected


def test_close_frame_on_the_wire() -> None:
    wire = encode_frame(Opcode.CLOSE, encode_close_payload(1001, "bye"))
    assert wire == bytes.fromhex("880503e9627965")
    (event,) = parse(wire, Side.CLIENT)
    assert isinstance(event, Close)
    assert (event.code, event.reason) == (1001, "bye")


def test_accelerator_state_is_what_the_run_asked_for() -> None:
    """scripts/test runs the suite with and without the C accelerator; make sure each
    pass really tests what it claims (a failed build would silently fall back)."""
    import os

    from epws.protocol import frames, http11

    if os.environ.get("EPWS_NO_EXTENSION"):
        assert frames.SPEEDUPS is False
        assert frames.apply_mask is frames._apply_mask_py
        assert http11.split_head is http11._split_head_py
    elif os.environ.get("EPWS_EXPECT_EXTENSION"):
        assert frames.SPEEDUPS is True
        assert http11.split_head is not http11._split_head_py
    data, key = bytes(range(256)) * 3, b"\x01\x02\x03\x04"
    assert frames.apply_mask(data, key) == frames._apply_mask_py(data, key)
