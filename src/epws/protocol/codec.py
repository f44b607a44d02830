"""The interface between the protocol and a per-message compression codec (RFC 7692).

:class:`~epws.protocol.protocol.Protocol` owns framing, RSV1 and the size limit; a codec
(today :class:`~epws.protocol.deflate_codec.DeflateCodec`) only turns payloads into
compressed ones and back. Kept in its own module so that the codec and the state
machine depend on this interface, not on each other.
"""

from __future__ import annotations

from typing import Protocol

from ..exceptions import ProtocolError

__all__ = ["InflateError", "MessageCodec"]


class MessageCodec(Protocol):
    """The extension point for per-message compression (RFC 7692), kept minimal.

    The connection owns framing, RSV1 and the size limit's bookkeeping; the codec
    only turns message payloads into compressed ones and back.

    ``threshold``: messages shorter than this many bytes are sent uncompressed (RSV1
    is per message, RFC 7692 §6), so the connection skips the codec for them.
    """

    threshold: int

    def compress(self, data: bytes) -> bytes:
        """Compress one whole message (the result is sent with RSV1 set)."""
        ...

    def decompress(self, data: bytes, max_size: int | None, final: bool) -> bytes:
        """Inflate a chunk of a compressed message; ``final`` on its last frame's end.

        Must raise rather than produce more than ``max_size`` bytes (None means no
        limit; 0 means not one byte more: the message is already at the limit), so a
        bomb is never held in memory, and must do work in proportion to ``data`` and
        the output. Errors are :class:`InflateError` (or a bare
        :class:`~epws.exceptions.ProtocolError`), 1009 for the limit, 1007 for corrupt
        data.
        """
        ...


class InflateError(Exception):
    """Raised by :meth:`MessageCodec.decompress`: the message failed while inflating.

    ``inflated`` is what the call produced (within the limit) before the failure; the
    connection checks it like any other payload first, so a text message gets the
    same close code whether it arrived whole or byte by byte: the first problem in
    the inflated byte stream decides (invalid UTF-8 before the limit: 1007). zlib
    gives nothing from a call that finds corrupt data, so for that error
    ``inflated`` depends on the pieces; the code is 1007 anyway.
    """

    def __init__(self, error: ProtocolError, inflated: bytes = b"") -> None:
        super().__init__(error)
        self.error = error
        self.inflated = inflated
