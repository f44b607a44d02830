"""permessage-deflate (RFC 7692): the settings, and negotiation on both sides.

Sans-I/O and standard library only. :class:`PerMessageDeflate` is the configuration
an application passes as ``compression=`` to :class:`~epws.Upgrader` or
:class:`~epws.Dialer`; negotiation (this module: the offer, the answer, their
parameters) turns it into one :class:`~epws.protocol.deflate_codec.DeflateCodec` per
connection, which :class:`~epws.protocol.protocol.Protocol` drives through the
:class:`~epws.protocol.codec.MessageCodec` protocol. The codec, the per-message code,
is in :mod:`epws.protocol.deflate_codec`; ``DeflateCodec`` and ``RESTART_COST`` are
importable from here too.

Choices that are not spelled out by the RFC, and why:

* **No context takeover by default, both ways.** A server that keeps an LZ77 window per
  connection pays ~260 KiB of zlib state per client at zlib's default settings, and its
  output depends on each connection's history, so a broadcast must be compressed once
  per recipient. Without context takeover a message compresses the same for everyone:
  one process-wide compressor per setting serves every connection, and a
  :class:`~epws.PreparedMessage` compresses once for a whole room. Chat-sized messages
  lose some ratio (measured in docs/compression.md); takeover is one option away.
* **Window bits 8** may be negotiated either way; how the codec honours it (zlib
  refuses a 256-byte window) is in :mod:`epws.protocol.deflate_codec`.
* **Errors.** A malformed ``Sec-WebSocket-Extensions`` header (bad grammar) is answered
  with 400 by the server; a well-formed permessage-deflate offer with unknown,
  duplicated or invalid parameters is declined (RFC 7692 §5.1 says *decline*), and the
  next offer is tried. The client fails the handshake on any answer that does not fit
  its offer (RFC 7692 §5.1). What the codec fails a connection with (1007, 1009) is in
  its module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..exceptions import NegotiationError
from .deflate_codec import (
    EXTENSION_NAME as EXTENSION_NAME,
    RESTART_COST as RESTART_COST,
    DeflateCodec as DeflateCodec,
)
from .headers import parse_extensions, serialize_extensions
from .http11 import Request, Response

__all__ = ["PerMessageDeflate"]

_BITS_RE = re.compile(r"[1-9][0-9]?")
_SERVER_NCT = "server_no_context_takeover"
_CLIENT_NCT = "client_no_context_takeover"
_SERVER_BITS = "server_max_window_bits"
_CLIENT_BITS = "client_max_window_bits"

# --------------------------------------------------------------------------- parameters


@dataclass(slots=True)
class _Params:
    """One permessage-deflate offer or answer, validated.

    ``client_bits`` is True for ``client_max_window_bits`` without a value, which only
    an offer may carry ("I support the parameter, choose for me").
    """

    server_nct: bool = False
    client_nct: bool = False
    server_bits: int | None = None
    client_bits: int | Literal[True] | None = None


def _window_bits(name: str, value: str | None) -> int:
    # RFC 7692 §7.1.2: "a decimal integer value without leading zeroes between 8 to 15".
    if value is None or not _BITS_RE.fullmatch(value) or not 8 <= int(value) <= 15:
        raise ValueError(f"{name} needs a value from 8 to 15, got {value!r}")
    return int(value)


def _parse_params(params: list[tuple[str, str | None]], *, offer: bool) -> _Params:
    """Validate the parameters of one permessage-deflate element (RFC 7692 §7.1).

    Raises ValueError naming the first problem: an unknown or duplicated parameter,
    or a value where none is allowed, a missing or out-of-range one.
    """
    result = _Params()
    seen: set[str] = set()
    for name, value in params:
        if name in seen:
            raise ValueError(f"duplicate parameter {name}")
        seen.add(name)
        if name in (_SERVER_NCT, _CLIENT_NCT):
            if value is not None:
                raise ValueError(f"{name} takes no value, got {value!r}")
            if name == _SERVER_NCT:
                result.server_nct = True
            else:
                result.client_nct = True
        elif name == _SERVER_BITS:
            result.server_bits = _window_bits(name, value)
        elif name == _CLIENT_BITS:
            if value is None and offer:
                result.client_bits = True
            else:
                result.client_bits = _window_bits(name, value)
        else:
            raise ValueError(f"unknown parameter {name}")
    return result


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class PerMessageDeflate:
    """permessage-deflate settings, valid as ``compression=`` on a server or a client.

    Each option says what this endpoint asks for or allows; the negotiated result
    may be stricter when the peer asks for more (the RFC obliges us to comply).

    Attributes:
        level: zlib compression level, 0-9 (or -1 for zlib's default, 6). The
            default, 1, is gorilla's: about 3x faster than 6 for a few percent of
            size on text.
        mem_level: zlib memory level, 1-9. Only matters per connection when our side
            keeps context takeover (zlib's state is about ``2**(bits+2) +
            2**(mem_level+9)`` bytes then).
        server_max_window_bits: 8-15, or None for no constraint (15). On a server:
            the window we compress with (a client's smaller request wins). On a
            client: the largest window we let the server compress with.
        client_max_window_bits: 8-15, or None. On a server: the window we ask
            clients to compress with, when they announce support for the parameter.
            On a client: the largest window we compress with, offered to the server.
        server_no_context_takeover: the server compresses each message on its own.
            On a server: we always answer with it (True) or only when asked (False).
            On a client: we require it from the server (True).
        client_no_context_takeover: the client compresses each message on its own.
            On a server: we ask clients for it (True). On a client: we offer it and
            keep no context (True), or keep context unless the server asks (False).
        threshold: messages shorter than this many bytes are sent uncompressed (the
            RSV1 bit is per message, RFC 7692 §6); deflate rarely shrinks them, and
            compressing costs time. 0 compresses everything.
    """

    level: int = 1
    mem_level: int = 8
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = True
    threshold: int = 128

    def __post_init__(self) -> None:
        if not -1 <= self.level <= 9:
            raise ValueError(f"level must be from -1 to 9, got {self.level}")
        if not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be from 1 to 9, got {self.mem_level}")
        for name in (_SERVER_BITS, _CLIENT_BITS):
            bits = getattr(self, name)
            if bits is not None and not 8 <= bits <= 15:
                raise ValueError(f"{name} must be from 8 to 15 or None, got {bits}")
        if self.threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {self.threshold}")

    def _codec(
        self, compress_bits: int, compress_nct: bool, decompress_bits: int, decompress_nct: bool
    ) -> DeflateCodec:
        return DeflateCodec(
            compress_bits=compress_bits,
            compress_takeover=not compress_nct,
            decompress_bits=decompress_bits,
            decompress_takeover=not decompress_nct,
            level=self.level,
            mem_level=self.mem_level,
            threshold=self.threshold,
        )

    # ------------------------------------------------------------------ server

    def server_negotiate(self, request: Request) -> tuple[DeflateCodec | None, str | None]:
        """Pick the first acceptable permessage-deflate offer of ``request``.

        Returns the codec and the ``Sec-WebSocket-Extensions`` value to answer with,
        or ``(None, None)`` to decline (no offer, or none valid).

        Raises:
            NegotiationError: (400) the header does not follow RFC 6455 §9.1's grammar.
        """
        values = request.headers.field_values("sec-websocket-extensions")
        if not values:
            return None, None
        for name, raw in parse_extensions(values):
            if name.lower() != EXTENSION_NAME:
                continue
            try:
                offer = _parse_params(raw, offer=True)
            except ValueError:
                continue  # RFC 7692 §5.1: decline this offer; the next may do
            return self._accept(offer)
        return None, None

    def _accept(self, offer: _Params) -> tuple[DeflateCodec, str]:
        params: list[tuple[str, str | None]] = []
        server_nct = offer.server_nct or self.server_no_context_takeover
        if server_nct:
            params.append((_SERVER_NCT, None))
        # The client hinting client_no_context_takeover will not use context anyway;
        # saying so lets us drop the inflater between messages.
        client_nct = offer.client_nct or self.client_no_context_takeover
        if client_nct:
            params.append((_CLIENT_NCT, None))
        server_bits = self.server_max_window_bits
        if offer.server_bits is not None:
            server_bits = min(offer.server_bits, server_bits or 15)
        if server_bits is not None:
            params.append((_SERVER_BITS, str(server_bits)))
        client_bits = 15
        if offer.client_bits is not None:
            # Without the parameter in the offer we may not constrain the client.
            if offer.client_bits is not True:
                client_bits = offer.client_bits
            if self.client_max_window_bits is not None:
                client_bits = min(client_bits, self.client_max_window_bits)
                params.append((_CLIENT_BITS, str(client_bits)))
        header = serialize_extensions([(EXTENSION_NAME, params)])
        return self._codec(server_bits or 15, server_nct, client_bits, client_nct), header

    # ------------------------------------------------------------------ client

    def client_offer(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value a client sends."""
        params: list[tuple[str, str | None]] = []
        if self.server_no_context_takeover:
            params.append((_SERVER_NCT, None))
        if self.client_no_context_takeover:
            params.append((_CLIENT_NCT, None))
        if self.server_max_window_bits is not None:
            params.append((_SERVER_BITS, str(self.server_max_window_bits)))
        # Always announced: it tells the server we can honour a smaller window.
        bits = self.client_max_window_bits
        params.append((_CLIENT_BITS, None if bits is None else str(bits)))
        return serialize_extensions([(EXTENSION_NAME, params)])

    def client_accept(self, response: Response) -> DeflateCodec | None:
        """Check the server's answer to :meth:`client_offer`; the codec, or None.

        Raises:
            NegotiationError: the answer does not fit the offer (RFC 7692 §5.1: the
                client must fail the connection).
        """
        values = response.headers.get_all("Sec-WebSocket-Extensions")
        if not values:
            return None
        try:
            exts = parse_extensions(values)
        except NegotiationError as exc:
            raise NegotiationError(f"malformed Sec-WebSocket-Extensions: {exc}", 101) from None
        if not exts:
            return None
        if len(exts) > 1 or exts[0][0].lower() != EXTENSION_NAME:
            names = ", ".join(name for name, _ in exts)
            raise NegotiationError(
                f"server accepted extensions that were not offered: {names}", 101
            )
        try:
            answer = _parse_params(exts[0][1], offer=False)
        except ValueError as exc:
            raise NegotiationError(f"invalid permessage-deflate answer: {exc}", 101) from None
        if self.server_no_context_takeover and not answer.server_nct:
            raise NegotiationError("server did not accept server_no_context_takeover", 101)
        wanted = self.server_max_window_bits
        if wanted is not None and (answer.server_bits is None or answer.server_bits > wanted):
            raise NegotiationError(
                f"server_max_window_bits={answer.server_bits} does not honour the offered {wanted}",
                101,
            )
        client_bits = self.client_max_window_bits or 15
        if answer.client_bits is not None:
            assert answer.client_bits is not True  # _parse_params(offer=False) ensures it
            if answer.client_bits > client_bits:
                raise NegotiationError(
                    f"client_max_window_bits={answer.client_bits} is over the offered "
                    f"{client_bits}",
                    101,
                )
            client_bits = answer.client_bits
        return self._codec(
            client_bits,
            answer.client_nct or self.client_no_context_takeover,
            answer.server_bits or 15,
            answer.server_nct,
        )
