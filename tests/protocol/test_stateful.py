"""Stateful fuzzing of the sans-I/O Connection: a server and a client wired to each other.

Hypothesis drives both ends at once (issue 9, "Tests that keep it true"): each side
sends text, binary, fragmented messages, pings, pongs and close frames; what one side
writes reaches the other in random pieces, read with random ``max_messages`` bounds
(0 and None included); a side can close TCP (EOF); and garbage can be injected into
one direction. The compression, when on, is negotiated the way the handshake does it
(offer, server answer, client check), with random settings.

What must hold, whatever the sequence:

* no exception escapes ``receive_data`` (errors are :class:`Failure` events with close
  code 1002, 1007 or 1009, carrying a ProtocolError), and the ``send_*`` methods raise
  only the documented InvalidState / ValueError;
* after each call, what is buffered stays within the documented bounds: a call without a
  bound leaves at most an incomplete frame head or control frame; the held input costs
  at most twice what :attr:`Connection.input_buffered` reports; a message being
  assembled never passes the read limit; a call never returns more data messages than
  its bound, nor any event after a Close or Failure;
* without garbage, each side receives exactly what the other sent, in order (a message
  over the read limit is a 1009 in its place; data arriving after our own close frame is
  dropped, and only data); the auto pongs answer every ping, the latest PONG_BACKLOG of them;
* chunking and bounds never change the result: the events equal those of a fresh
  Protocol fed the same bytes whole (split only where the receiver sent its close).
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from epws.exceptions import InvalidState, ProtocolError
from epws.protocol import (
    PONG_BACKLOG,
    Close,
    Event,
    Failure,
    Ping,
    Pong,
    Protocol,
    Side,
)
from epws.protocol.deflate import DeflateCodec, PerMessageDeflate
from epws.protocol.http11 import Headers, Request, Response

SIDES = (Side.SERVER, Side.CLIENT)
# A call without a bound parses everything it can: only a frame head (at most 13 of
# its 14 bytes) or a control frame (at most 130 of 131 bytes) may wait for more.
UNBOUNDED_LEFTOVER = 130
FAIL_CODES = {1002, 1007, 1009}

Item = tuple[Any, ...]


def negotiate(
    server_pmd: PerMessageDeflate, client_pmd: PerMessageDeflate
) -> tuple[DeflateCodec, DeflateCodec]:
    """The codecs both sides get, as the opening handshake negotiates them."""
    offer = client_pmd.client_offer()
    request = Request("GET", "/", "HTTP/1.1", Headers([("Sec-WebSocket-Extensions", offer)]))
    server_codec, answer = server_pmd.server_negotiate(request)
    assert server_codec is not None and answer is not None
    response = Response(101, "Switching Protocols", Headers([("Sec-WebSocket-Extensions", answer)]))
    client_codec = client_pmd.client_accept(response)
    assert client_codec is not None
    return server_codec, client_codec


def norm(ev: Event) -> Item:
    if isinstance(ev, str | bytes):
        return ("msg", ev)
    if isinstance(ev, Ping):
        return ("ping", ev.payload)
    if isinstance(ev, Pong):
        return ("pong", ev.payload)
    if isinstance(ev, Close):
        return ("close", ev.code, ev.reason)
    assert isinstance(ev, Failure), ev
    assert isinstance(ev.error, ProtocolError), ev.error
    assert ev.code in FAIL_CODES, ev
    return ("fail", ev.code)


def short(value: object) -> str:
    """A repr short enough for an assertion message (payloads run to kilobytes)."""
    text = repr(value)
    return text if len(text) < 300 else text[:300] + f"... ({len(text)} chars)"


def is_data(item: Item) -> bool:
    return item[0] == "msg" or item == ("fail", 1009)


def make_payload(size: int, seed: int, compressible: bool) -> bytes:
    """Incompressible (random) or very compressible bytes, drawn cheaply."""
    rnd = random.Random(seed)
    if compressible:
        unit = rnd.randbytes(rnd.randint(1, 8))
        return (unit * (size // len(unit) + 1))[:size]
    return rnd.randbytes(size)


# Sizes at and around the read limits drawn below, where the limit rules bite.
sizes = st.one_of(
    st.integers(0, 6000),
    st.sampled_from([100, 1000, 4096, 65536]).flatmap(lambda n: st.integers(n - 2, n + 2)),
)
payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(make_payload, sizes, st.integers(0, 1 << 16), st.booleans()),
)
texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=8), st.integers(1, 800)),
)
# None: a payload unique to the frame, so that which ping a pong answers shows.
control_payloads = st.one_of(st.none(), st.none(), st.binary(max_size=130))  # > 125: ValueError
bounds = st.sampled_from([None, None, 0, 1, 2, 3])
limits = st.sampled_from([None, 0, 100, 1000, 4096, 65536, 1 << 20])
pmds = st.builds(
    PerMessageDeflate,
    level=st.sampled_from([-1, 0, 1, 9]),
    mem_level=st.sampled_from([1, 2, 8, 9]),
    server_max_window_bits=st.sampled_from([None, 8, 9, 12, 15]),
    client_max_window_bits=st.sampled_from([None, 8, 9, 12, 15]),
    server_no_context_takeover=st.booleans(),
    client_no_context_takeover=st.booleans(),
    threshold=st.sampled_from([0, 16, 128]),
)


class Pipe:
    """One direction: the bytes the sender wrote that the receiver has not read yet,
    and what the checks need to know about everything that went through."""

    def __init__(self, receiver_side: Side) -> None:
        self.receiver_side = receiver_side
        self.wire = bytearray()  # written, not delivered yet
        self.fed = bytearray()  # delivered to the receiver
        self.sent: list[Item] = []  # what the receiver should see, in wire order
        self.got: list[Item] = []  # what it saw
        self.garbage = False
        self.eof = False  # the sender closed TCP: nothing more goes through
        self.ended = False  # the receiver saw a Close or a Failure
        # Where in ``fed`` the receiver's parsing stood when it sent its close frame,
        # and how many events it had seen by then: data after that may be dropped.
        self.close_at: int | None = None
        self.got_at_close: int | None = None


class ConnectionPair(RuleBasedStateMachine):
    """A server Connection and a client Protocol, each the other's peer."""

    @initialize(
        compressed=st.booleans(),
        server_pmd=pmds,
        client_pmd=pmds,
        server_limit=limits,
        client_limit=limits,
    )
    def setup(
        self,
        compressed: bool,
        server_pmd: PerMessageDeflate,
        client_pmd: PerMessageDeflate,
        server_limit: int | None,
        client_limit: int | None,
    ) -> None:
        self.compressed = compressed
        self.pmds = (server_pmd, client_pmd)
        self.limits = {Side.SERVER: server_limit, Side.CLIENT: client_limit}
        self.conns = {side: self.fresh(side) for side in SIDES}
        # pipes[side]: the direction towards ``side``.
        self.pipes = {side: Pipe(side) for side in SIDES}
        self.frag: dict[Side, tuple[int, bytes, list[bytes]] | None] = dict.fromkeys(SIDES)
        self.frag_sent: dict[Side, int] = dict.fromkeys(SIDES, 0)
        self.frag_failed: dict[Side, bool] = dict.fromkeys(SIDES, False)
        self.pending_pong: dict[Side, list[bytes]] = {side: [] for side in SIDES}
        self.counter = 0

    def fresh(self, side: Side) -> Protocol:
        """A new Protocol for ``side``, with a freshly negotiated codec if compressed."""
        codec = None
        if self.compressed:
            server_codec, client_codec = negotiate(*self.pmds)
            codec = server_codec if side is Side.SERVER else client_codec
        return Protocol(side, max_size=self.limits[side], codec=codec)

    @staticmethod
    def peer(side: Side) -> Side:
        return Side.CLIENT if side is Side.SERVER else Side.SERVER

    def out(self, side: Side) -> Pipe:
        return self.pipes[self.peer(side)]

    def write(self, side: Side, data: bytes, item: Item | None) -> None:
        """``side`` wrote ``data``; ``item`` is what its peer should see of it."""
        pipe = self.out(side)
        if pipe.eof or not data:
            return
        pipe.wire += data
        if item is not None:
            pipe.sent.append(item)

    def over_limit(self, receiver: Side, size: int) -> bool:
        limit = self.limits[receiver]
        return bool(limit) and size > limit  # type: ignore[operator]

    def can_send(self, side: Side) -> bool:
        return self.conns[side].close_sent is None

    # ------------------------------------------------------------------ sending

    def send_whole(self, side: Side, data: str | bytes, compress: bool) -> None:
        conn = self.conns[side]
        if not self.can_send(side) or self.frag[side] is not None:
            try:
                if isinstance(data, str):
                    conn.send_text(data, compress=compress)
                else:
                    conn.send_binary(data, compress=compress)
            except InvalidState:
                return
            raise AssertionError("sending must raise InvalidState here")
        wire = (
            conn.send_text(data, compress=compress)
            if isinstance(data, str)
            else conn.send_binary(data, compress=compress)
        )
        size = len(data.encode()) if isinstance(data, str) else len(data)
        over = self.over_limit(self.peer(side), size)
        self.write(side, wire, ("fail", 1009) if over else ("msg", data))

    @rule(side=st.sampled_from(SIDES), text=texts, compress=st.booleans())
    def send_text(self, side: Side, text: str, compress: bool) -> None:
        self.send_whole(side, text, compress)

    @rule(side=st.sampled_from(SIDES), data=payloads, compress=st.booleans())
    def send_binary(self, side: Side, data: bytes, compress: bool) -> None:
        self.send_whole(side, data, compress)

    @rule(
        side=st.sampled_from(SIDES),
        delta=st.integers(-3, 3),
        seed=st.integers(0, 1 << 16),
        compressible=st.booleans(),
    )
    def send_at_the_limit(self, side: Side, delta: int, seed: int, compressible: bool) -> None:
        """A binary message within a few bytes of the peer's read limit, where the limit
        rules (and deflate's growth of incompressible data) decide."""
        limit = self.limits[self.peer(side)]
        if limit and limit <= 1 << 16:
            self.send_whole(side, make_payload(limit + delta, seed, compressible), True)

    @rule(
        side=st.sampled_from(SIDES),
        message=st.one_of(texts, payloads),
        cuts=st.lists(st.integers(0, 6000), max_size=6),
    )
    def start_fragmented(self, side: Side, message: str | bytes, cuts: list[int]) -> None:
        """Start a fragmented message: its pieces go out one per ``next_fragment``
        (text is cut at any byte, through characters too)."""
        if self.frag[side] is not None or not self.can_send(side):
            return
        opcode, data = (1, message.encode()) if isinstance(message, str) else (2, message)
        points = sorted({c for c in cuts if 0 < c < len(data)})
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
        self.frag[side] = (opcode, data, pieces)
        self.frag_sent[side] = 0
        self.frag_failed[side] = False
        self.next_fragment(side)

    @precondition(lambda self: any(self.frag[side] is not None for side in SIDES))
    @rule(pick=st.integers(0, 1))
    def next_fragment_rule(self, pick: int) -> None:
        sides = [side for side in SIDES if self.frag[side] is not None]
        self.next_fragment(sides[pick % len(sides)])

    def next_fragment(self, side: Side) -> None:
        state = self.frag[side]
        assert state is not None
        opcode, data, pieces = state
        conn = self.conns[side]
        if not self.can_send(side):
            # Our close frame ended the fragmented message; sending more is refused.
            self.frag[side] = None
            try:
                conn.send_fragment(0, b"", fin=True)
            except InvalidState:
                return
            raise AssertionError("a fragment after the close frame must raise InvalidState")
        piece = pieces.pop(0)
        first = self.frag_sent[side] == 0
        fin = not pieces
        wire = conn.send_fragment(opcode if first else 0, piece, fin=fin)
        self.frag_sent[side] += len(piece)
        item: Item | None = None
        if not self.frag_failed[side] and self.over_limit(self.peer(side), self.frag_sent[side]):
            # The receiver refuses the fragment whose header takes the total over.
            self.frag_failed[side] = True
            item = ("fail", 1009)
        elif fin and not self.frag_failed[side]:
            item = ("msg", data.decode() if opcode == 1 else data)
        self.write(side, wire, item)
        if fin:
            self.frag[side] = None

    @rule(side=st.sampled_from(SIDES), payload=control_payloads, pong=st.booleans())
    def send_control(self, side: Side, payload: bytes | None, pong: bool) -> None:
        conn = self.conns[side]
        if payload is None:
            self.counter += 1
            payload = b"#%d" % self.counter
        send = conn.send_pong if pong else conn.send_ping
        if not self.can_send(side):
            try:
                send(payload)
            except InvalidState:
                return
            raise AssertionError("a control frame after the close frame must raise")
        if len(payload) > 125:
            try:
                send(payload)
            except ValueError:
                return
            raise AssertionError("a control payload over 125 bytes must raise ValueError")
        self.write(side, send(payload), ("pong" if pong else "ping", payload))

    @rule(side=st.sampled_from(SIDES))
    def send_auto(self, side: Side) -> None:
        """What the protocol queued by itself: a pong per ping, the latest PONG_BACKLOG."""
        data = self.conns[side].data_to_send()
        expected = self.pending_pong[side][-PONG_BACKLOG:]
        self.pending_pong[side] = []
        if not expected:
            assert data == b""
            return
        assert data
        pipe = self.out(side)
        if pipe.eof:
            return
        self.write(side, data, None)
        pipe.sent.extend(("pong", payload) for payload in expected)

    @rule(
        side=st.sampled_from(SIDES),
        code=st.sampled_from([None, 1000, 1001, 1011, 3000, 4999]),
        reason=st.text(max_size=20),
    )
    def send_close(self, side: Side, code: int | None, reason: str) -> None:
        if code is None:
            reason = ""
        self.closing(side, self.conns[side].send_close(code, reason))

    @rule(side=st.sampled_from(SIDES))
    def reply_close(self, side: Side) -> None:
        """Answer the peer's close frame, as the I/O layer does once it has handed over
        the messages before it."""
        self.closing(side, self.conns[side].close_reply())

    def closing(self, side: Side, wire: bytes) -> None:
        """``side`` sent a close frame (if ``wire``): from now on it drops data."""
        conn = self.conns[side]
        if not wire:
            return
        self.frag[side] = None
        self.pending_pong[side] = []
        incoming = self.pipes[side]
        if incoming.close_at is None:
            incoming.close_at = len(incoming.fed) - conn.input_buffered
            incoming.got_at_close = len(incoming.got)
        assert conn.close_sent is not None
        code, reason = conn.close_sent
        self.write(side, wire, ("close", 1005 if code is None else code, reason))

    # ------------------------------------------------------------------ receiving

    def receive(self, side: Side, data: bytes, bound: int | None) -> None:
        conn = self.conns[side]
        pipe = self.pipes[side]
        events = conn.receive_data(data, max_messages=bound)
        if not pipe.eof:
            pipe.fed += data
        messages = [ev for ev in events if isinstance(ev, str | bytes)]
        if bound is not None:
            assert len(messages) <= bound, (len(messages), bound)
        limit = self.limits[side]
        for message in messages:
            size = len(message.encode()) if isinstance(message, str) else len(message)
            assert not limit or size <= limit, (size, limit)
        if pipe.ended:
            assert events == [], "events after a Close or Failure"
        for i, event in enumerate(events):
            if isinstance(event, Close | Failure):
                assert i == len(events) - 1, "events after a Close or Failure"
                pipe.ended = True
        if bound is None and not conn.failed and conn.close_rcvd is None:
            assert conn.input_buffered <= UNBOUNDED_LEFTOVER, conn.input_buffered
        pipe.got += [norm(ev) for ev in events]
        for ev in events:
            if isinstance(ev, Ping) and conn.close_sent is None:
                self.pending_pong[side].append(ev.payload)
            elif isinstance(ev, Failure):
                # As the I/O layer does once the events before it are handled.
                self.closing(side, conn.fail(ev.code, str(ev.error)))
                assert conn.failed

    @rule(
        side=st.sampled_from(SIDES),
        take=st.integers(0, 1 << 16),
        cuts=st.lists(st.integers(0, 1 << 16), max_size=5),
        bound_list=st.lists(bounds, min_size=6, max_size=6),
    )
    def deliver(self, side: Side, take: int, cuts: list[int], bound_list: list[int | None]) -> None:
        """Some of what was written towards ``side`` arrives, in random pieces."""
        pipe = self.pipes[side]
        data = bytes(pipe.wire[:take])
        del pipe.wire[:take]
        points = sorted({c % (len(data) + 1) for c in cuts})
        for a, b, bound in zip([0, *points], [*points, len(data)], bound_list, strict=False):
            self.receive(side, data[a:b], bound)

    @rule(side=st.sampled_from(SIDES), bound=bounds)
    def drain(self, side: Side, bound: int | None) -> None:
        """Read what was held back, with room for ``bound`` more messages."""
        self.receive(side, b"", bound)

    @rule(side=st.sampled_from(SIDES))
    def eof(self, side: Side) -> None:
        """The peer of ``side`` closes TCP: what is in flight arrives, then EOF."""
        pipe = self.pipes[side]
        if pipe.eof:
            return
        self.receive(side, bytes(pipe.wire), 0)
        pipe.wire.clear()
        pipe.eof = True
        self.conns[side].receive_eof()

    @rule(side=st.sampled_from(SIDES), junk=st.binary(min_size=1, max_size=24), at=st.integers())
    def inject_garbage(self, side: Side, junk: bytes, at: int) -> None:
        """Random bytes somewhere in what has not arrived yet, even inside a frame."""
        pipe = self.pipes[side]
        if pipe.eof:
            return
        at %= len(pipe.wire) + 1
        pipe.wire[at:at] = junk
        pipe.garbage = True

    # ------------------------------------------------------------------ invariants

    @invariant()
    def buffers_within_bounds(self) -> None:
        for side in SIDES:
            conn = self.conns[side]
            held = conn.input_buffered
            assert held >= 0
            # The input object kept is at most twice what is held (Protocol.receive_data).
            assert len(conn._buf) <= 2 * held, (len(conn._buf), held)
            limit = self.limits[side]
            if limit:
                assert conn._msg_size <= limit, (conn._msg_size, limit)
                acc = conn._acc
                if acc is not None:
                    assert len(acc) <= limit, (len(acc), limit)

    @invariant()
    def received_what_was_sent(self) -> None:
        for side in SIDES:
            pipe = self.pipes[side]
            if not pipe.garbage:
                self.match(pipe, complete=False)

    def match(self, pipe: Pipe, *, complete: bool) -> None:
        """``got`` is ``sent`` in order, but for data dropped because it was parsed
        after the receiver's close frame; with ``complete``, everything sent was
        accounted for."""
        i = 0
        dropped = False
        closed_at = pipe.got_at_close
        for j, g in enumerate(pipe.got):
            while i < len(pipe.sent) and pipe.sent[i] != g:
                assert is_data(pipe.sent[i]), (short(pipe.sent[i]), short(g))
                assert closed_at is not None and j >= closed_at, (short(pipe.sent[i]), short(g))
                dropped = True
                i += 1
            assert i < len(pipe.sent), (short(g), short(pipe.sent), short(pipe.got))
            assert not (dropped and is_data(g)), "data after dropped data"
            i += 1
        if complete and not pipe.ended:
            rest = pipe.sent[i:]
            assert all(is_data(item) for item in rest), (short(rest), short(pipe.got))
            assert not rest or closed_at is not None, short(rest)

    def teardown(self) -> None:
        if not hasattr(self, "conns"):
            return
        # Let everything in flight arrive, answering what must be answered.
        for _ in range(4):
            for side in SIDES:
                pipe = self.pipes[side]
                data = bytes(pipe.wire)
                pipe.wire.clear()
                self.receive(side, data, None)
                self.send_auto(side)
                if self.conns[side].close_rcvd is not None:
                    self.reply_close(side)
        for side in SIDES:
            pipe = self.pipes[side]
            assert not pipe.wire
            if not pipe.garbage:
                self.match(pipe, complete=True)
            self.same_as_whole(pipe)

    def same_as_whole(self, pipe: Pipe) -> None:
        """A fresh receiver fed the same bytes whole (no bound) sees the same events."""
        shadow = self.fresh(pipe.receiver_side)
        events: list[Event] = []
        if pipe.close_at is None:
            events += shadow.receive_data(bytes(pipe.fed))
        else:
            events += shadow.receive_data(bytes(pipe.fed[: pipe.close_at]))
            shadow.send_close()
            events += shadow.receive_data(bytes(pipe.fed[pipe.close_at :]))
        if pipe.eof:
            shadow.receive_eof()
            events += shadow.receive_data(b"")
        seen = [norm(ev) for ev in events]
        assert seen == pipe.got, (short(seen), short(pipe.got))


ConnectionPair.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestConnectionPair = ConnectionPair.TestCase
