"""permessage-deflate (RFC 7692): negotiation on both sides and the per-connection codec.

Sans-I/O and standard library only (:mod:`zlib`). :class:`PerMessageDeflate` is the
configuration an application passes as ``compression=`` to :class:`~epws.Upgrader` or
:class:`~epws.Dialer`; negotiation turns it into one :class:`DeflateCodec` per
connection, which :class:`~epws.protocol.protocol.Protocol` drives through the
:class:`~epws.protocol.codec.MessageCodec` protocol.

Choices that are not spelled out by the RFC, and why:

* **No context takeover by default, both ways.** A server that keeps an LZ77 window per
  connection pays ~260 KiB of zlib state per client at zlib's default settings, and its
  output depends on each connection's history, so a broadcast must be compressed once
  per recipient. Without context takeover a message compresses the same for everyone:
  one process-wide compressor per setting serves every connection, and a
  :class:`~epws.PreparedMessage` compresses once for a whole room. Chat-sized messages
  lose some ratio (measured in docs/compression.md); takeover is one option away.
* **Window bits 8.** zlib refuses a raw deflate window of 256 bytes. When 8 is
  negotiated for what *we* compress, we compress with window bits 9, and that honours
  the agreement exactly, not nearly: zlib's deflate never emits a match farther back
  than ``MAX_DIST = window size - MIN_LOOKAHEAD = 512 - 262 = 250`` bytes, inside
  the peer's 256-byte window (a test inflates such output with a strict 256-byte
  window across messages). What we *inflate* uses a larger window than the sender's,
  which is always safe for the receiver: the full 32 KiB while a message arrives
  without context takeover (so the result never depends on how the frames were
  split, even for a peer that breaks its window agreement), at least 512 bytes
  with takeover, where the inflater is kept and its window is per-connection memory.
* **Errors.** A malformed ``Sec-WebSocket-Extensions`` header (bad grammar) is answered
  with 400 by the server; a well-formed permessage-deflate offer with unknown,
  duplicated or invalid parameters is declined (RFC 7692 §5.1 says *decline*), and the
  next offer is tried. The client fails the handshake on any answer that does not fit
  its offer (RFC 7692 §5.1). Corrupt compressed data fails the connection with 1007
  (invalid frame payload data: the payload is not what the message says it is); a
  message that inflates past the read limit fails it with 1009 while inflating.
"""

from __future__ import annotations

import re
import threading
import zlib
from dataclasses import dataclass
from typing import Literal

from ..exceptions import MessageTooBig, NegotiationError, ProtocolError
from .codec import InflateError
from .headers import parse_extensions, serialize_extensions
from .http11 import Request, Response

__all__ = ["DeflateCodec", "PerMessageDeflate"]

EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
_BITS_RE = re.compile(r"[1-9][0-9]?")
_SERVER_NCT = "server_no_context_takeover"
_CLIENT_NCT = "client_no_context_takeover"
_SERVER_BITS = "server_max_window_bits"
_CLIENT_BITS = "client_max_window_bits"
# Input is handed to zlib at most this much at a time: when a deflate stream ends,
# zlib copies what follows it (unused_data), so the copy per stream end stays bounded.
_SLICE = 16384
# After a stream end, the next one is fed from this size up (doubling while it goes
# on): the copy per stream end is then about the length of that stream.
_SLICE_MIN = 64
#: Each deflate stream a message starts after its first one counts this many bytes
#: against the read limit: restarting costs zlib a new inflater, so a message of
#: empty final blocks (``03 00``) is refused after limit/1024 of them (1009), not
#: inflated block by block for free (issue 9 item 11).
RESTART_COST = 1024


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


# --------------------------------------------------------------------------- codec

# Compressors for the "no context takeover" direction, one per setting for the whole
# process: each message is followed by Z_FULL_FLUSH, which forgets the history, so the
# next message (for whichever connection) starts from a clean dictionary. The lock
# keeps compress + flush together if several threads run event loops.
_shared: dict[tuple[int, int, int, int], zlib._Compress] = {}
_shared_lock = threading.Lock()


def _new_compressor(key: tuple[int, int, int, int]) -> zlib._Compress:
    wbits, level, mem_level, strategy = key
    return zlib.compressobj(level, zlib.DEFLATED, -wbits, mem_level, strategy)


def _strip_tail(out: bytes) -> bytes:
    """RFC 7692 §7.2.1: drop the 00 00 ff ff of the final empty stored block.

    If zlib emitted no flush block (it may skip a second flush with no input in
    between), the payload must still end as if one had been stripped: a lone
    0x00 is the rest of an empty stored block, which the receiver completes.
    """
    if out.endswith(_TAIL):
        return out[:-4]
    return out + b"\x00"


# Deflate inflates at most 1032 bytes per input byte (a 258-byte match in two bits).
_MAX_RATIO = 1032


def _replay(infl: zlib._Decompress, piece: bytes | memoryview, budget: int) -> bytes | None:
    """Inflate ``piece`` byte by byte from a saved state, after it failed zlib whole:
    the output up to where it passes ``budget`` if that comes first in the stream,
    None if the corrupt data does. Only run on failure, so valid input never pays.
    """
    out: list[bytes] = []
    total = 0
    for i in range(len(piece)):
        try:
            got = infl.decompress(piece[i : i + 1], budget - total + 1)
        except zlib.error:
            return None
        out.append(got)
        total += len(got)
        if total > budget:
            return b"".join(out)
    return None


class DeflateCodec:
    """permessage-deflate for one connection, as negotiated (a ``MessageCodec``).

    Args:
        compress_bits: LZ77 window (8-15) for what we send, as agreed.
        compress_takeover: keep our window across messages (False: each message is
            compressed independently, by a compressor shared by all connections).
        decompress_bits: window (8-15) the peer agreed to compress with.
        decompress_takeover: the peer may refer to earlier messages; keep the
            inflater between messages (False: it exists only while a message arrives).
        level, mem_level: zlib's compression level and memory level.
        threshold: messages shorter than this are sent uncompressed.

    Attributes:
        shared_key: when our side compresses without context takeover, a hashable
            summary of everything that determines the compressed bytes; equal keys
            mean a compressed frame can be reused across connections (see
            :class:`~epws.PreparedMessage`). None otherwise.
    """

    __slots__ = (
        "_charged",
        "_comp",
        "_comp_key",
        "_compress_takeover",
        "_decompress_takeover",
        "_ended",
        "_infl",
        "_inflate_bits",
        "compress_bits",
        "decompress_bits",
        "shared_key",
        "threshold",
    )

    def __init__(
        self,
        *,
        compress_bits: int = 15,
        compress_takeover: bool = False,
        decompress_bits: int = 15,
        decompress_takeover: bool = False,
        level: int = 1,
        mem_level: int = 8,
        threshold: int = 0,
    ) -> None:
        self.compress_bits = compress_bits
        self.decompress_bits = decompress_bits
        self.threshold = threshold
        self._compress_takeover = compress_takeover
        self._decompress_takeover = decompress_takeover
        # zlib can't compress with 8; 9 only reaches 250 bytes back (module docstring).
        self._comp_key = (max(compress_bits, 9), level, mem_level, zlib.Z_DEFAULT_STRATEGY)
        # zlib checks a match's distance against its window only for output of earlier
        # calls, so a peer referring past the agreed window would be accepted whole and
        # refused (1007) in pieces. A transient inflater (no takeover) uses the full
        # window, which holds any legal distance: the same result for any split. A kept
        # one keeps the agreed window (at least 9 bits: zlib refuses 8), which is what
        # bounds a connection's memory; there only such a peer's result may vary.
        self._inflate_bits = max(decompress_bits, 9) if decompress_takeover else 15
        self._comp: zlib._Compress | None = None
        self._infl: zlib._Decompress | None = None
        # Stream restarts in the message being inflated, as bytes of its budget.
        self._charged = 0
        self._ended = False  # a stream ended; the next input byte starts another
        self.shared_key: tuple[object, ...] | None = (
            None if compress_takeover else (EXTENSION_NAME, *self._comp_key, threshold)
        )

    @property
    def compress_takeover(self) -> bool:
        return self._compress_takeover

    @property
    def decompress_takeover(self) -> bool:
        return self._decompress_takeover

    def compress(self, data: bytes) -> bytes:
        """One whole message, compressed, without the sync-flush tail (RFC 7692 §7.2.1)."""
        if self._compress_takeover:
            comp = self._comp
            if comp is None:
                # Created on the first compressed message: connections that never
                # send one (or only small ones) never pay for zlib's state.
                comp = self._comp = _new_compressor(self._comp_key)
            return _strip_tail(comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH))
        key = self._comp_key
        with _shared_lock:
            comp = _shared.get(key)
            if comp is None:
                comp = _shared[key] = _new_compressor(key)
            out = comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)
        return _strip_tail(out)

    def decompress(self, data: bytes, max_size: int | None, final: bool) -> bytes:
        """Inflate the next piece of a compressed message, producing at most ``max_size``.

        The limit is enforced while inflating: zlib is asked for one byte more than
        allowed, and getting it means the message is too big. So a small frame that
        would inflate to gigabytes costs at most the read limit before it is refused.

        The work is linear in the input: zlib gets bounded slices, so the copy it makes
        of the input behind a stream end is short, and each stream after the first
        costs ``RESTART_COST`` (1,024) bytes of ``max_size``.

        Raises:
            InflateError: wrapping MessageTooBig (1009) or ProtocolError (1007), with
                what was inflated within the limit before.
        """
        if final:
            data += _TAIL
            wire_end = len(data) - 4
        else:
            wire_end = len(data)
        budget = None if max_size is None else max_size - self._charged
        parts: list[bytes] = []
        infl = self._infl
        n = len(data)
        pos = 0
        step = _SLICE
        view: memoryview | None = None
        try:
            while pos < n:
                if infl is None:
                    if self._ended:
                        # A stream ended: what follows starts a new one. Only our own
                        # tail behind the end of a message is nothing to inflate.
                        if pos >= wire_end:
                            break
                        self._ended = False
                        self._charged += RESTART_COST
                        if budget is not None:
                            budget -= RESTART_COST
                            if budget < 0:
                                raise MessageTooBig(
                                    "compressed message restarts deflate too often: each "
                                    f"stream after the first counts {RESTART_COST} bytes "
                                    "against the read limit"
                                )
                    infl = self._infl = zlib.decompressobj(-self._inflate_bits)
                if pos == 0 and n <= step:
                    piece: bytes | memoryview = data
                else:
                    if view is None:
                        view = memoryview(data)
                    piece = view[pos : pos + step]
                if budget is None:
                    out = infl.decompress(piece)
                else:
                    # zlib goes on reading block headers once the output is full, so
                    # corrupt data just past the limit would fail the call (1007)
                    # where smaller pieces stop at the limit first (1009). When this
                    # piece can reach the limit, keep a copy to replay it exactly.
                    saved = infl.copy() if _MAX_RATIO * len(piece) + 258 > budget else None
                    try:
                        out = infl.decompress(piece, budget + 1)
                    except zlib.error:
                        replayed = None if saved is None else _replay(saved, piece, budget)
                        if replayed is None:
                            raise
                        out = replayed
                    if len(out) > budget:
                        parts.append(out[:budget])  # checked by the caller first
                        raise MessageTooBig(
                            "compressed message inflates past the read limit "
                            f"({max_size} more bytes were allowed)"
                        )
                    budget -= len(out)
                if out:
                    parts.append(out)
                if not infl.eof:
                    # Below the limit zlib took the whole piece (max_length not reached).
                    pos += len(piece)
                    if step < _SLICE:
                        step *= 2
                    continue
                # The peer ended a deflate stream (a block with BFINAL set, RFC 7692
                # §7.2.3.4); whatever follows is a new stream. Its history is lost, so
                # a peer that still refers to it gets a 1007 below.
                pos += len(piece) - len(infl.unused_data)
                infl = self._infl = None
                self._ended = True
                step = _SLICE_MIN
        except MessageTooBig as exc:
            self._reset()
            raise InflateError(exc, b"".join(parts)) from None
        except zlib.error as exc:
            self._reset()
            error = ProtocolError(f"invalid compressed data: {exc}", 1007)
            raise InflateError(error, b"".join(parts)) from None
        if final:
            self._charged = 0
            self._ended = False
            if not self._decompress_takeover:
                self._infl = None
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _reset(self) -> None:
        """The message failed: free zlib's state now (the connection is failing)."""
        self._infl = None
        self._charged = 0
        self._ended = False

    def __repr__(self) -> str:
        return (
            f"DeflateCodec(compress_bits={self.compress_bits}, "
            f"compress_takeover={self._compress_takeover}, "
            f"decompress_bits={self.decompress_bits}, "
            f"decompress_takeover={self._decompress_takeover}, threshold={self.threshold})"
        )


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
        values = request.headers.get_all("Sec-WebSocket-Extensions")
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
