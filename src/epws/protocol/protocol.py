"""The sans-I/O protocol of one WebSocket connection: bytes in, events, bytes out (RFC 6455).

:class:`Protocol` never touches a socket or an event loop. Feed it what the peer
sent with :meth:`Protocol.receive_data`; it returns the events, in order, and queues
what must be sent back automatically (pongs) for :meth:`Protocol.data_to_send`.
The ``send_*`` methods return the bytes to write.

Events are plain objects, cheap on the hot path:

* a text message is a ``str``, a binary message is ``bytes``;
* :class:`~.events.Ping`, :class:`~.events.Pong`: control frames (a pong for each ping
  is already queued);
* :class:`~.events.Close`: the peer's close frame; answer it with :meth:`Protocol.close_reply`
  once the messages before it have been handed to the application;
* :class:`~.events.Failure`: the peer broke the protocol; the events before it are valid and
  should be handed to the application first, then :meth:`Protocol.fail` gives the
  close frame to send. Input after a failure or a close frame is ignored.

Why the close reply and the failure are not sent automatically: a message that came
in the same packet as a close or a bad frame must still be processed, and a reply
written by the application for it (an echo) must go out before the close frame.

Payloads are consumed as they arrive, frame by frame and chunk by chunk, so a text
message is rejected at the first byte that can no longer be UTF-8 and a message over
the size limit is refused when its frame header arrives, before it is buffered.

Why this module is longer than the others (about 680 lines, the one module of the core
over 500): frame parsing is written inline in :meth:`Protocol.receive_data`, next to
the state it judges each frame by, because that loop is the hot path of every message
received; splitting it into per-frame calls costs a function call and attribute
lookups per frame. The ``send_*`` methods run per message too and share that state,
so they stay in the class. What is stateless lives in :mod:`epws.protocol.frames`.
"""

from __future__ import annotations

import codecs
import enum

from ..exceptions import InvalidState, MessageTooBig, ProtocolError
from .codec import InflateError, MessageCodec
from .events import Close, Event, Failure, Ping, Pong
from .frames import (
    CloseCode,
    Opcode,
    apply_mask,
    encode_close_payload,
    encode_frame,
    parse_close_payload,
    unmask_at,
)

__all__ = ["PONG_BACKLOG", "Protocol", "Side", "State", "wire_allowance"]


class Side(enum.Enum):
    """Which end of the connection this is; it decides the masking rules (§5.1)."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.IntEnum):
    """OPEN until a close frame is sent or received, CLOSING until both are, then CLOSED."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# Plain ints on the hot path; one definition of the vocabulary, in frames.Opcode.
_TEXT = Opcode.TEXT.value
_BINARY = Opcode.BINARY.value
_CLOSE = Opcode.CLOSE.value
_PING = Opcode.PING.value
_PONG = Opcode.PONG.value

#: Most pongs waiting for :meth:`Protocol.data_to_send`: past it, the oldest pending
#: pong is dropped, so the latest pings are always answered and a flood costs at most
#: this many pongs (2 KiB) per read.
PONG_BACKLOG = 16
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def wire_allowance(limit: int) -> int:
    """The most wire bytes a compressed message may take under a read limit of ``limit``.

    A message that inflates within the limit must never be refused for its wire size,
    so this is zlib's worst case for data that does not compress, at any settings a
    peer may use (``deflateBound``: about 13% of growth for memLevel 2 and small
    windows, 4% measured with memLevel 1, 0.03% with zlib's defaults), plus room for
    the flush block. It used to be ``limit/1024 + 64``: random bytes at the limit
    from a peer with ``PerMessageDeflate(mem_level=1)`` got 1009.
    """
    return limit + (limit >> 3) + (limit >> 8) + (limit >> 9) + 64


def _too_big(size: int, limit: int) -> MessageTooBig:
    """The 1009 failure for a message known to be at least ``size`` bytes (one rule
    for the one-frame fast path and for fragments)."""
    return MessageTooBig(
        f"message of at least {size} bytes is over the read limit of {limit} bytes"
    )


def _invalid_utf8(reason: str) -> ProtocolError:
    """The 1007 failure for a text message that is not UTF-8 (RFC 6455 §8.1), wherever
    it is found: a whole frame, the end of a message, or a piece on the way."""
    return ProtocolError(f"invalid UTF-8 in text message: {reason}", 1007)


def _ed_surrogate_pending(decoder: codecs.IncrementalDecoder) -> bool:
    """True if the decoder holds ED followed by A0-BF: a UTF-16 surrogate, never valid.

    CPython's incremental decoder waits for the third byte before refusing these;
    every other impossible prefix it refuses at once. Checking here makes the
    validation fail-fast everywhere, as RFC 6455 §8.1 allows and Autobahn prefers.
    """
    pending = decoder.getstate()[0]
    return len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0


class Protocol:
    """The protocol state of one WebSocket connection, after the opening handshake.

    Args:
        side: ``Side.SERVER`` requires masked frames from the peer and sends
            unmasked ones; ``Side.CLIENT`` the reverse.
        max_size: the read limit in bytes for one message (after decompression);
            ``None`` or 0 for no limit. Over it the connection fails with 1009.
        codec: the negotiated permessage-deflate codec, if any.
    """

    __slots__ = (
        "_acc",
        "_buf",
        "_close_rcvd",
        "_close_sent",
        "_codec",
        "_compressed",
        "_decoder",
        "_done",
        "_eof",
        "_failed",
        "_frame_fin",
        "_left",
        "_mask",
        "_mask_off",
        "_msg_op",
        "_msg_size",
        "_msg_wire",
        "_off",
        "_out_frag",
        "_pongs",
        "_server",
        "max_size",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_size: int | None = 1 << 20,
        codec: MessageCodec | None = None,
    ) -> None:
        # The side as one bool: tested on every frame, and the Side is derived from it.
        self._server = side is Side.SERVER
        self.max_size = max_size or 0
        self._codec = codec
        # Input not parsed yet: self._buf[self._off:].
        self._buf: bytes | bytearray = b""
        self._off = 0
        self._eof = False
        # Payloads of the pings to answer, oldest first, at most PONG_BACKLOG: every
        # ping gets its pong, but a flood keeps only the latest ones (RFC 6455 §5.5.3
        # lets us answer only the latest), so it costs a few hundred bytes at most.
        self._pongs: list[bytes] | None = None
        # Message being received: opcode (0 = none), size so far (inflated), wire size
        # (compressed messages), payload so far in one growing buffer (None until a
        # message needs more than one piece), and the UTF-8 validator of a text one.
        self._msg_op = 0
        self._msg_size = 0
        self._msg_wire = 0
        self._acc: bytearray | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self._compressed = False
        # Data frame whose payload is still arriving.
        self._left = 0
        self._frame_fin = False
        self._mask: bytes | None = None
        self._mask_off = 0
        self._failed = False
        # Nothing more will be parsed: failed, closed by the peer, or EOF with nothing held.
        self._done = False
        self._close_rcvd: Close | None = None
        self._close_sent: tuple[int | None, str] | None = None
        self._out_frag = 0  # opcode of a fragmented message being sent, 0 if none

    # ------------------------------------------------------------------ state

    @property
    def side(self) -> Side:
        """``Side.SERVER`` or ``Side.CLIENT``, as given (kept as one bool for the parser)."""
        return Side.SERVER if self._server else Side.CLIENT

    @property
    def state(self) -> State:
        if self._close_rcvd is not None and self._close_sent is not None:
            return State.CLOSED
        if self._close_rcvd is not None or self._close_sent is not None or self.failed:
            return State.CLOSING
        return State.OPEN

    @property
    def close_rcvd(self) -> Close | None:
        """The peer's close frame, once received."""
        return self._close_rcvd

    @property
    def close_sent(self) -> tuple[int | None, str] | None:
        """``(code, reason)`` of the close frame sent, once sent (code None: empty frame)."""
        return self._close_sent

    @property
    def failed(self) -> bool:
        """True once the peer broke the protocol (or closed TCP without a close frame)."""
        return self._failed or (self._eof and self._close_rcvd is None)

    @property
    def codec(self) -> MessageCodec | None:
        return self._codec

    # ------------------------------------------------------------------ input

    @property
    def input_buffered(self) -> int:
        """Bytes received but not parsed yet, such as an incomplete frame or input held back
        by ``max_messages`` until :meth:`receive_data` is called again with room."""
        return len(self._buf) - self._off

    def receive_data(self, data: bytes | bytearray, max_messages: int | None = None) -> list[Event]:
        """Parse what arrived; return the events it completes, in order.

        ``max_messages`` bounds the data messages (text or binary) returned by this
        call; control frames do not count and are handled as they come. Once that
        many messages are complete, parsing stops in front of the next data frame,
        or in front of the rest of the one in progress (with 0: at once), and the
        input behind stays buffered here (:attr:`input_buffered` says how much).
        Nothing behind the stop is looked at: a compressed message is not inflated,
        a frame header is not judged, until a later call with room, such as
        ``receive_data(b"", max_messages=n)``. So the caller's queue bounds the
        memory that messages cost, and what is held is wire bytes only. The result
        over the calls is the same as with ``None`` (no bound), for any split of the
        input and any sequence of bounds.

        After :meth:`receive_eof`, ``data`` is ignored but what was buffered can
        still be parsed this way.
        """
        events: list[Event] = []
        if self._done:
            return events
        buf = held = self._buf
        if held:
            pos = self._off
            if data and not self._eof:
                buf = (buf[pos:] if pos else buf) + data
                pos = 0
        else:
            buf = data
            pos = 0
        end = len(buf)
        server = self._server
        # Messages this call may still return; -1 never counts down to 0: no bound.
        room = -1
        if self._close_sent is None:
            dropping = False
            fast_max = 2  # the fast path takes TEXT and BINARY
            if max_messages is not None:
                if max_messages < 0:
                    raise ValueError(f"max_messages must be None or >= 0, got {max_messages}")
                room = max_messages
        else:
            # After our close frame, data messages are parsed for framing only and
            # dropped, so they cost nothing and need no room.
            dropping = True
            fast_max = 0
        try:
            while pos < end:
                left = self._left
                if left:
                    # The rest (or the next chunk) of a data frame's payload.
                    if not room:
                        break
                    take = end - pos
                    if take > left:
                        take = left
                    start = pos
                    pos += take
                    left -= take
                    self._left = left
                    if dropping:
                        if not left and self._frame_fin:
                            self._msg_op = 0
                        continue
                    chunk = buf[start:pos]
                    mask = self._mask
                    if mask is not None:
                        off = self._mask_off
                        if off:
                            mask = mask[off:] + mask[:off]
                        chunk = apply_mask(chunk, mask)
                        self._mask_off = (off + take) & 3
                    last = left == 0 and self._frame_fin
                    self._data_chunk(bytes(chunk), last, events)
                    if last:
                        room -= 1
                    continue
                if end - pos < 2:
                    break
                b0 = buf[pos]
                if not room and not b0 & 8:
                    break  # a data frame, and no room for another message
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                hlen = 2
                if length == 126:
                    hlen = 4
                    if end - pos < 4:
                        break
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                elif length == 127:
                    hlen = 10
                    if end - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise ProtocolError("frame length has its most significant bit set")
                masked = b1 & 0x80
                if masked:
                    hlen += 4
                    if end - pos < hlen:
                        break
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                if masked:
                    if not server:
                        raise ProtocolError("a server must not mask its frames")
                elif server:
                    raise ProtocolError("a client must mask its frames")
                if opcode >= 8:
                    if b0 & 0x70:
                        raise ProtocolError("reserved bits set on a control frame")
                    if not fin:
                        raise ProtocolError("a control frame must not be fragmented")
                    if length > 125:
                        raise ProtocolError("a control frame payload is at most 125 bytes")
                    if end - pos < hlen + length:
                        break  # wait for the whole (small) control frame
                    payload = buf[pos + hlen : pos + hlen + length]
                    if masked:
                        payload = apply_mask(payload, bytes(buf[pos + hlen - 4 : pos + hlen]))
                    pos += hlen + length
                    self._control(opcode, bytes(payload), events)
                    if self._close_rcvd is not None:
                        pos = end  # RFC 6455 §5.5.1: nothing after a close frame counts
                    continue
                # A data frame.
                rsv = b0 & 0x70
                if fin and not rsv and 0 < opcode <= fast_max and not self._msg_op:
                    # The common case, fast: a whole uncompressed message in one frame.
                    # No message state is touched; rules and limits are the same.
                    limit = self.max_size
                    if limit and length > limit:
                        raise _too_big(length, limit)
                    start = pos + hlen
                    if end - start >= length:
                        pos = start + length
                        payload = unmask_at(buf, start, pos) if masked else bytes(buf[start:pos])
                        if opcode == _TEXT:
                            try:
                                events.append(payload.decode())
                            except UnicodeDecodeError as exc:
                                raise _invalid_utf8(exc.reason) from None
                        else:
                            events.append(payload)
                        room -= 1
                        continue
                if opcode == 0:
                    if not self._msg_op:
                        raise ProtocolError("continuation frame without a message to continue")
                    if rsv:
                        raise ProtocolError("reserved bits set on a continuation frame")
                elif opcode <= 2:
                    if self._msg_op:
                        raise ProtocolError("new message started before the previous one ended")
                    if rsv:
                        if rsv != 0x40 or self._codec is None:
                            raise ProtocolError("reserved bits set without a negotiated extension")
                        self._compressed = True
                    else:
                        self._compressed = False
                    self._msg_op = opcode
                    self._msg_size = 0
                    self._msg_wire = 0
                else:
                    raise ProtocolError(f"reserved opcode {opcode}")
                if dropping:
                    # Skip the payload, however long, across calls if need be.
                    if fin:
                        self._msg_op = 0
                    self._frame_fin = bool(fin)
                    self._left = length
                    pos += hlen
                    continue
                limit = self.max_size
                if limit:
                    if not self._compressed:
                        if self._msg_size + length > limit:
                            raise _too_big(self._msg_size + length, limit)
                    else:
                        # The wire size of a compressed message counts too, so that a
                        # message inflating to (almost) nothing still ends (see
                        # wire_allowance).
                        wire = self._msg_wire + length
                        if wire > wire_allowance(limit):
                            raise MessageTooBig(
                                f"compressed message of at least {wire} bytes on the wire "
                                f"is over the read limit of {limit} bytes"
                            )
                        self._msg_wire = wire
                self._mask = bytes(buf[pos + hlen - 4 : pos + hlen]) if masked else None
                self._mask_off = 0
                self._frame_fin = bool(fin)
                pos += hlen
                if end - pos >= length:
                    # Fast path: the whole payload is here.
                    chunk = buf[pos : pos + length]
                    pos += length
                    if masked:
                        chunk = apply_mask(chunk, self._mask)  # type: ignore[arg-type]
                    self._data_chunk(bytes(chunk), bool(fin), events)
                    if fin:
                        room -= 1
                else:
                    self._left = length
        except ProtocolError as exc:
            self._failed = self._done = True
            self._buf = b""
            self._off = 0
            events.append(Failure(exc))
            return events
        if pos < end:
            # Keep the rest. Holding on to the input itself (bytes are immutable) saves
            # copying a large held-back remainder on every resumed call; a remainder
            # under half of it is copied, so memory stays within twice what is held.
            if type(buf) is bytes and (end - pos) * 2 >= end:
                self._buf = buf
                self._off = pos
            else:
                self._buf = bytes(buf[pos:])
                self._off = 0
        elif held:
            self._buf = b""
            self._off = 0
            if self._eof:
                self._done = True
        return events

    def _data_chunk(self, chunk: bytes, last: bool, events: list[Event]) -> None:
        """Take a piece of a data message's payload; ``last`` when the message ends here.

        Pieces go into one growing buffer, so a message of tiny fragments costs about
        its size, not an object per fragment; a text message is validated piece by
        piece (failing at the first impossible byte) and decoded once, at the end.
        """
        if self._compressed:
            codec = self._codec
            assert codec is not None
            limit = self.max_size
            try:
                # None, not 0, for "no limit": 0 is a real budget once at the limit.
                chunk = codec.decompress(chunk, limit - self._msg_size if limit else None, last)
            except InflateError as exc:
                if self._msg_op == _TEXT and exc.inflated:
                    self._validate(exc.inflated)
                raise exc.error from None
        self._msg_size += len(chunk)
        acc = self._acc
        if self._msg_op == _TEXT:
            if last:
                if acc is not None:
                    acc += chunk
                    chunk = acc  # type: ignore[assignment]
                    self._acc = None
                    self._decoder = None
                try:
                    events.append(chunk.decode())
                except UnicodeDecodeError as exc:
                    raise _invalid_utf8(exc.reason) from None
                self._msg_op = 0
                return
            self._validate(chunk)
        elif last:
            if acc is not None:
                acc += chunk
                chunk = bytes(acc)
                self._acc = None
            events.append(chunk)
            self._msg_op = 0
            return
        if chunk:
            if acc is None:
                self._acc = bytearray(chunk)
            else:
                acc += chunk

    def _validate(self, chunk: bytes) -> None:
        """Check a non-final piece of a text message: 1007 at the first impossible byte."""
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = _utf8_decoder()
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            raise _invalid_utf8(exc.reason) from None
        if _ed_surrogate_pending(decoder):
            raise _invalid_utf8("surrogate")

    def _control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == _PING:
            if self._close_sent is None:
                pongs = self._pongs
                if pongs is None:
                    self._pongs = [payload]
                else:
                    pongs.append(payload)
                    if len(pongs) > PONG_BACKLOG:
                        del pongs[0]
            events.append(Ping(payload))
        elif opcode == _PONG:
            events.append(Pong(payload))
        elif opcode == _CLOSE:
            try:
                code, reason = parse_close_payload(payload)
            except ValueError as exc:
                raise ProtocolError(exc.args[0], exc.args[1]) from None
            close = Close(code, reason)
            self._close_rcvd = close
            self._done = True
            # A fragmented message cut by a close is simply abandoned.
            self._msg_op = 0
            self._acc = None
            self._decoder = None
            self._left = 0
            events.append(close)
        else:
            raise ProtocolError(f"reserved control opcode {opcode}")

    def receive_eof(self) -> None:
        """The peer closed TCP: nothing more arrives.

        Complete frames still buffered (held back by ``max_messages``) can be parsed
        with ``receive_data(b"", ...)``; :attr:`failed` is True unless a close frame
        was (or is then) received.
        """
        self._eof = True
        self._done = self._done or not self._buf

    def data_to_send(self) -> bytes:
        """Bytes the protocol wants sent on its own (pongs); empty if none.

        A pong for each ping received since the last call, in order, but for at most
        the :data:`PONG_BACKLOG` latest ones: a peer may send a few pings at once and
        expect each answered (Autobahn|Testsuite 2.10), while a flood, or a caller that
        holds off while the peer does not read, keeps a bounded few, never a pile
        (RFC 6455 §5.5.3 requires only the latest ping to be answered).
        """
        pongs = self._pongs
        if pongs is None:
            return b""
        self._pongs = None
        mask = not self._server
        if len(pongs) == 1:
            return encode_frame(_PONG, pongs[0], mask=mask)
        return b"".join([encode_frame(_PONG, p, mask=mask) for p in pongs])

    # ------------------------------------------------------------------ output

    def _check_can_send(self) -> None:
        if self._close_sent is not None:
            raise InvalidState("cannot send after the close frame was sent")

    def send_text(self, data: str, *, compress: bool = True) -> bytes:
        """One whole text message."""
        return self.send_message(_TEXT, data.encode(), compress=compress)

    def send_binary(self, data: bytes | bytearray | memoryview, *, compress: bool = True) -> bytes:
        """One whole binary message."""
        return self.send_message(_BINARY, data, compress=compress)

    def send_message(
        self, opcode: int, payload: bytes | bytearray | memoryview, *, compress: bool = True
    ) -> bytes:
        """One whole data message in a single frame, compressed if a codec was negotiated."""
        self._check_can_send()
        if self._out_frag:
            raise InvalidState("a fragmented message is being sent")
        codec = self._codec
        if codec is not None and compress and len(payload) >= codec.threshold:
            return encode_frame(
                opcode, codec.compress(bytes(payload)), rsv1=True, mask=not self._server
            )
        return encode_frame(opcode, payload, mask=not self._server)

    def send_fragment(
        self, opcode: int, payload: bytes | bytearray | memoryview, *, fin: bool
    ) -> bytes:
        """One frame of a fragmented message: TEXT/BINARY first, then CONT frames.

        Fragmented messages are sent uncompressed: compressing each fragment well
        would need a streaming compressor per message, and the whole point of
        fragments is to send without holding the message.
        """
        self._check_can_send()
        if self._out_frag:
            if opcode != 0:
                raise InvalidState("a fragmented message is already being sent")
        elif opcode not in (_TEXT, _BINARY):
            raise InvalidState("a fragmented message starts with TEXT or BINARY")
        else:
            self._out_frag = opcode
        if fin:
            self._out_frag = 0
        return encode_frame(opcode, payload, fin=fin, mask=not self._server)

    def send_ping(self, payload: bytes = b"") -> bytes:
        self._check_can_send()
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        return encode_frame(_PING, payload, mask=not self._server)

    def send_pong(self, payload: bytes = b"") -> bytes:
        self._check_can_send()
        if len(payload) > 125:
            raise ValueError("a pong payload is at most 125 bytes")
        return encode_frame(_PONG, payload, mask=not self._server)

    def send_close(self, code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Start (or answer) the closing handshake; ``None`` sends an empty close frame."""
        if self._close_sent is not None:
            return b""
        payload = encode_close_payload(code, reason)
        self._close_sent = (code, reason)
        self._out_frag = 0
        # From now on incoming data is dropped (RFC 6455 §1.4: after sending a close
        # frame an endpoint need not process data): free what a message holds.
        self._acc = None
        self._decoder = None
        self._pongs = None
        return encode_frame(_CLOSE, payload, mask=not self._server)

    def close_reply(self) -> bytes:
        """The answer to the peer's close frame: its code echoed (RFC 6455 §5.5.1)."""
        rcvd = self._close_rcvd
        if rcvd is None or self._close_sent is not None:
            return b""
        code: int | None = rcvd.code
        if code == CloseCode.NO_STATUS_RCVD:
            code = None
        return self.send_close(code)

    def fail(self, code: int, reason: str = "") -> bytes:
        """The close frame that fails the connection (empty if one was already sent)."""
        self._failed = self._done = True
        reason_b = reason.encode()
        if len(reason_b) > 123:
            reason = reason_b[:123].decode(errors="ignore")
        return self.send_close(code, reason)
