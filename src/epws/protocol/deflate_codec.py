"""The permessage-deflate codec (RFC 7692 §7.2): one connection's compressor and inflater.

:class:`DeflateCodec` is what negotiation in :mod:`epws.protocol.deflate` produces, one
per connection, as agreed with the peer; :class:`~epws.protocol.protocol.Protocol`
drives it through the :class:`~epws.protocol.codec.MessageCodec` protocol, once per
compressed message it sends and once per frame of one it receives. Sans-I/O and
standard library only (:mod:`zlib`). Kept apart from the negotiation so that the
per-message code, and the limits it enforces while inflating, read on their own.

Choices that are not spelled out by the RFC, and why:

* **No context takeover: one compressor for the whole process.** Without takeover a
  message compresses the same for every connection, so one zlib compressor per
  setting serves them all (:attr:`DeflateCodec.shared_key` says when frames can be
  reused, as :class:`~epws.PreparedMessage` does), and no zlib state is kept per
  idle connection. Why it is the default is in :mod:`epws.protocol.deflate`.
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
* **Errors.** Corrupt compressed data fails the connection with 1007 (invalid frame
  payload data: the payload is not what the message says it is); a message that
  inflates past the read limit fails it with 1009 while inflating, and so does one
  that restarts deflate streams too often (:data:`RESTART_COST`).
"""

from __future__ import annotations

import threading
import zlib

from ..exceptions import MessageTooBig, ProtocolError
from .codec import InflateError

__all__ = ["RESTART_COST", "DeflateCodec"]

#: The extension's name in ``Sec-WebSocket-Extensions`` (RFC 7692 §7), also the first
#: item of :attr:`DeflateCodec.shared_key`.
EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
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
