"""Wire-level vocabulary of RFC 6455 §5: opcodes, close codes, masking, frame encoding.

Parsing lives in :mod:`epws.protocol.protocol`, next to the state it needs (a frame
cannot be judged without knowing whether a fragmented message is open); this module
holds what is stateless, so that prepared messages and tests can use it alone.
"""

from __future__ import annotations

import enum
import os
import struct

from .speedups import pick

__all__ = [
    "SPEEDUPS",
    "CloseCode",
    "MessageType",
    "Opcode",
    "apply_mask",
    "encode_close_payload",
    "encode_frame",
    "is_valid_close_code",
    "parse_close_payload",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class MessageType(enum.IntEnum):
    """The two kinds of data message, with their opcodes as values.

    A subset of :class:`~epws.protocol.frames.Opcode` kept apart so that an API taking
    a message type cannot be handed a control or continuation opcode.
    """

    TEXT = Opcode.TEXT.value
    BINARY = Opcode.BINARY.value


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire: "the close frame had no code"
    ABNORMAL_CLOSURE = 1006  # never on the wire: "no close frame at all"
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


_MASK_BIT = 0x80
_pack_16 = struct.Struct("!BBH").pack
_pack_64 = struct.Struct("!BBQ").pack


def is_valid_close_code(code: int) -> bool:
    """True for codes that may appear in a close frame on the wire.

    1004 is reserved, 1005/1006/1015 are for reporting only, 1016-2999 are
    unassigned and 0-999 unused (RFC 6455 §7.4); 3000-4999 belong to libraries
    and applications.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3).

    Pure Python: one big-integer XOR is far faster than a byte loop, because
    CPython does the work in C over machine words. The C accelerator, when built,
    replaces it (see :data:`SPEEDUPS`).
    """
    n = len(data)
    if n == 0:
        return b""
    key = mask * ((n >> 2) + 1)
    if len(key) != n:
        key = key[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _unmask_at_py(data: bytes | bytearray, start: int, end: int) -> bytes:
    """The payload ``data[start:end]`` of a masked frame, unmasked with the key in the
    four bytes in front of it: the parser's call, so that the C accelerator can read
    the payload where it lies instead of from a copy in a slice."""
    if not 4 <= start <= end <= len(data):
        raise ValueError("unmask_at needs 4 <= start <= end <= len(data)")
    return _apply_mask_py(data[start:end], data[start - 4 : start])


apply_mask = pick("apply_mask", _apply_mask_py)
unmask_at = pick("unmask_at", _unmask_at_py)

#: True when the C accelerator is in use (False with EPWS_NO_EXTENSION=1).
SPEEDUPS = apply_mask is not _apply_mask_py


def encode_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bool = False,
) -> bytes:
    """Serialize one frame; clients pass ``mask=True`` and get a fresh random key."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    n = len(payload)
    mbit = _MASK_BIT if mask else 0
    if n < 126:
        header = bytes((b0, n | mbit))
    elif n < 65536:
        header = _pack_16(b0, 126 | mbit, n)
    else:
        header = _pack_64(b0, 127 | mbit, n)
    if mask:
        key = os.urandom(4)
        return header + key + apply_mask(payload, key)
    return header + payload


def encode_close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame; ``None`` gives the empty payload (peer sees 1005)."""
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 §7.4)")
    data = reason.encode()
    if len(data) > 123:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")
    return code.to_bytes(2, "big") + data


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    """Decode a received close payload; raises ValueError with the close code to fail with.

    The ValueError's ``args`` are ``(message, close_code)`` so the caller fails with
    1002 for a bad code or length and 1007 for a reason that is not UTF-8.
    """
    n = len(payload)
    if n == 0:
        return CloseCode.NO_STATUS_RCVD, ""
    if n == 1:
        raise ValueError("close frame payload of 1 byte", 1002)
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise ValueError(f"invalid close code {code}", 1002)
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise ValueError("close reason is not valid UTF-8", 1007) from None
    return code, reason
