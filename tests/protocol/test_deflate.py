"""permessage-deflate (RFC 7692): examples, negotiation vectors, codec limits, sans-I/O."""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest

from epws import PerMessageDeflate
from epws.exceptions import NegotiationError
from epws.protocol import Close, Failure, Protocol, Side
from epws.protocol.deflate import DeflateCodec
from epws.protocol.frames import encode_frame
from epws.protocol.http11 import Headers, Request, Response

HELLO_1 = bytes.fromhex("c107f248cdc9c90700")  # §7.2.3.1 and first of §7.2.3.2
HELLO_2 = bytes.fromhex("c105f200110000")  # §7.2.3.2, second message, shared window


def codec(**kwargs: object) -> DeflateCodec:
    kwargs.setdefault("threshold", 0)
    return DeflateCodec(**kwargs)  # type: ignore[arg-type]


def text_corpus(n: int, seed: int = 7) -> str:
    """Chat-like text: compressible, but not trivially (not one repeated byte)."""
    rnd = random.Random(seed)
    words = [
        "the",
        "a",
        "room",
        "user",
        "hello",
        "world",
        "message",
        "typing",
        "online",
        "offline",
        "said",
        "now",
        "ok",
    ]
    return " ".join(rnd.choice(words) + str(rnd.randrange(100)) for _ in range(n))


# --------------------------------------------------------------------------- RFC 7692 §7.2.3


class TestRFCExamples:
    """RFC 7692 §7.2.3: the "Hello" examples, byte for byte, both directions."""

    @pytest.mark.parametrize("level", [1, 6, 9])
    def test_7_2_3_1_one_compressed_block(self, level: int) -> None:
        server = Protocol(Side.SERVER, codec=codec(level=level))
        assert server.send_text("Hello") == HELLO_1
        client = Protocol(Side.CLIENT, codec=codec())
        assert client.receive_data(HELLO_1) == ["Hello"]

    def test_7_2_3_1_fragmented(self) -> None:
        client = Protocol(Side.CLIENT, codec=codec())
        frames = bytes.fromhex("4103f248cd") + bytes.fromhex("8004c9c90700")
        assert client.receive_data(frames) == ["Hello"]

    def test_7_2_3_2_sharing_the_window(self) -> None:
        server = Protocol(Side.SERVER, codec=codec(compress_takeover=True))
        assert server.send_text("Hello") == HELLO_1
        assert server.send_text("Hello") == HELLO_2
        client = Protocol(Side.CLIENT, codec=codec(decompress_takeover=True))
        assert client.receive_data(HELLO_1 + HELLO_2) == ["Hello", "Hello"]

    def test_7_2_3_2_without_takeover_each_message_is_alone(self) -> None:
        server = Protocol(Side.SERVER, codec=codec(compress_takeover=False))
        assert server.send_text("Hello") == HELLO_1
        assert server.send_text("Hello") == HELLO_1
        # A receiver that does not keep the window can't read the shared-window form.
        client = Protocol(Side.CLIENT, codec=codec(decompress_takeover=False))
        events = client.receive_data(HELLO_1 + HELLO_2)
        assert events[0] == "Hello"
        assert isinstance(events[1], Failure) and events[1].code == 1007

    def test_7_2_3_3_block_with_no_compression(self) -> None:
        frame = bytes.fromhex("c10b0005 00faff48656c6c6f00".replace(" ", ""))
        assert frame == bytes.fromhex("c10b000500faff48656c6c6f00")
        client = Protocol(Side.CLIENT, codec=codec())
        assert client.receive_data(frame) == ["Hello"]

    def test_7_2_3_4_block_with_bfinal_set(self) -> None:
        frame = bytes.fromhex("c108f348cdc9c9070000")
        client = Protocol(Side.CLIENT, codec=codec(decompress_takeover=True))
        # The inflater starts a new stream after the final block: the next message works.
        assert client.receive_data(frame + frame + HELLO_1) == ["Hello", "Hello", "Hello"]

    def test_7_2_3_5_two_blocks_in_one_message(self) -> None:
        frame = bytes.fromhex("c10df248050000 00ffffcac9c90700".replace(" ", ""))
        client = Protocol(Side.CLIENT, codec=codec())
        assert client.receive_data(frame) == ["Hello"]

    def test_empty_message(self) -> None:
        for takeover in (False, True):
            server = Protocol(Side.SERVER, codec=codec(compress_takeover=takeover))
            client = Protocol(Side.CLIENT, codec=codec(decompress_takeover=takeover))
            data = server.send_text("") + server.send_text("") + server.send_text("Hello")
            assert data[0] == 0xC1  # compressed even when empty (threshold 0)
            assert client.receive_data(data) == ["", "", "Hello"]


# --------------------------------------------------------------------------- negotiation


def request(*values: str) -> Request:
    headers = Headers([("Sec-WebSocket-Extensions", v) for v in values])
    return Request("GET", "/", "HTTP/1.1", headers)


def response(*values: str) -> Response:
    headers = Headers([("Sec-WebSocket-Extensions", v) for v in values])
    return Response(101, "Switching Protocols", headers)


class TestServerNegotiation:
    """RFC 7692 §5 and §7.1, server side."""

    @pytest.mark.parametrize(
        ("offer", "config", "answer", "bits"),
        [
            # Defaults: no context takeover both ways, whatever the client asked.
            (
                "permessage-deflate",
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 15, False),
            ),
            # What browsers send.
            (
                "permessage-deflate; client_max_window_bits",
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 15, False),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                {"client_max_window_bits": 10},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "client_max_window_bits=10",
                (15, False, 10, False),
            ),
            # The client's value is a promise; ours may only lower it.
            (
                "permessage-deflate; client_max_window_bits=9",
                {"client_max_window_bits": 12},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "client_max_window_bits=9",
                (15, False, 9, False),
            ),
            (
                "permessage-deflate; client_max_window_bits=11",
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 11, False),
            ),
            # We may not ask for client_max_window_bits unless the client offered it.
            (
                "permessage-deflate",
                {"client_max_window_bits": 10},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 15, False),
            ),
            # server_max_window_bits: the smaller of the offer and ours, always answered.
            (
                'permessage-deflate; server_max_window_bits="10"',
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=10",
                (10, False, 15, False),
            ),
            (
                "permessage-deflate; server_max_window_bits=12",
                {"server_max_window_bits": 9},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=9",
                (9, False, 15, False),
            ),
            (
                "permessage-deflate",
                {"server_max_window_bits": 11},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=11",
                (11, False, 15, False),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=8",
                (8, False, 15, False),
            ),
            # Context takeover allowed by our config: only what the client asks for.
            (
                "permessage-deflate",
                {"server_no_context_takeover": False, "client_no_context_takeover": False},
                "permessage-deflate",
                (15, True, 15, True),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                {"server_no_context_takeover": False, "client_no_context_takeover": False},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 15, False),
            ),
        ],
    )
    def test_accepted(
        self,
        offer: str,
        config: dict[str, object],
        answer: str,
        bits: tuple[int, bool, int, bool],
    ) -> None:
        pmd = PerMessageDeflate(**config)  # type: ignore[arg-type]
        got, header = pmd.server_negotiate(request(offer))
        assert header == answer
        assert got is not None
        assert (
            got.compress_bits,
            got.compress_takeover,
            got.decompress_bits,
            got.decompress_takeover,
        ) == bits

    @pytest.mark.parametrize(
        "offer",
        [
            "permessage-deflate; foo",
            "permessage-deflate; foo=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            'permessage-deflate; client_no_context_takeover="x"',
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=0",
            "x-webkit-deflate-frame",
            "deflate-frame; no_context_takeover",
        ],
    )
    def test_declined(self, offer: str) -> None:
        assert PerMessageDeflate().server_negotiate(request(offer)) == (None, None)

    def test_no_header(self) -> None:
        assert PerMessageDeflate().server_negotiate(request()) == (None, None)

    def test_first_acceptable_offer_wins(self) -> None:
        pmd = PerMessageDeflate(server_no_context_takeover=False)
        got, header = pmd.server_negotiate(
            request(
                "x-foo, permessage-deflate; bogus, permessage-deflate; server_max_window_bits=16",
                "permessage-deflate; server_max_window_bits=9, permessage-deflate",
            )
        )
        assert header == (
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=9"
        )
        assert got is not None and got.compress_bits == 9 and got.compress_takeover

    @pytest.mark.parametrize(
        "value",
        ["permessage-deflate;", "permessage-deflate; =1", 'permessage-deflate; a="b', "; x"],
    )
    def test_malformed_header_is_400(self, value: str) -> None:
        with pytest.raises(NegotiationError) as info:
            PerMessageDeflate().server_negotiate(request(value))
        assert info.value.status == 400


class TestClientNegotiation:
    """RFC 7692 §5 and §7.1, client side: the answer must fit the offer."""

    @pytest.mark.parametrize(
        ("config", "offer"),
        [
            (
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "client_max_window_bits",
            ),
            (
                {
                    "server_no_context_takeover": False,
                    "client_no_context_takeover": False,
                    "server_max_window_bits": 10,
                    "client_max_window_bits": 12,
                },
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
            ),
        ],
    )
    def test_offer(self, config: dict[str, object], offer: str) -> None:
        assert PerMessageDeflate(**config).client_offer() == offer  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("config", "answer", "bits"),
        [
            (
                {},
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                (15, False, 15, False),
            ),
            (
                {},
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=9; "
                'server_max_window_bits="10"',
                (9, False, 10, False),
            ),
            (
                {"server_no_context_takeover": False, "client_no_context_takeover": False},
                "permessage-deflate",
                (15, True, 15, True),
            ),
            (
                {"server_no_context_takeover": False, "client_no_context_takeover": False},
                "permessage-deflate; client_no_context_takeover",
                (15, False, 15, True),
            ),
            (
                {"server_no_context_takeover": False, "client_max_window_bits": 12},
                "permessage-deflate; server_max_window_bits=8",
                (12, False, 8, True),
            ),
            (
                {"server_max_window_bits": 12, "client_max_window_bits": 12},
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11; "
                "client_max_window_bits=8",
                (8, False, 11, False),
            ),
        ],
    )
    def test_accepted(
        self, config: dict[str, object], answer: str, bits: tuple[int, bool, int, bool]
    ) -> None:
        got = PerMessageDeflate(**config).client_accept(response(answer))  # type: ignore[arg-type]
        assert got is not None
        assert (
            got.compress_bits,
            got.compress_takeover,
            got.decompress_bits,
            got.decompress_takeover,
        ) == bits

    def test_declined_by_server(self) -> None:
        assert PerMessageDeflate().client_accept(response()) is None

    @pytest.mark.parametrize(
        ("config", "answer"),
        [
            ({}, "permessage-deflate; client_no_context_takeover"),  # we required server nct
            ({}, "permessage-deflate; server_no_context_takeover; foo"),
            ({}, "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            ({}, "permessage-deflate; server_no_context_takeover; client_max_window_bits"),
            ({}, "permessage-deflate; server_no_context_takeover; server_max_window_bits=16"),
            ({}, "permessage-deflate; server_no_context_takeover; server_max_window_bits=010"),
            ({}, "permessage-deflate; server_no_context_takeover=yes"),
            ({"server_max_window_bits": 10}, "permessage-deflate; server_no_context_takeover"),
            (
                {"server_max_window_bits": 10},
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
            ),
            (
                {"client_max_window_bits": 10},
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=11",
            ),
            ({}, "x-webkit-deflate-frame"),
            ({}, "permessage-deflate; server_no_context_takeover, permessage-deflate"),
            ({}, "permessage-deflate; server_no_context_takeover, x-foo"),
            ({}, "permessage-deflate; server_no_context_takeover;"),
        ],
    )
    def test_refused(self, config: dict[str, object], answer: str) -> None:
        pmd = PerMessageDeflate(**config)  # type: ignore[arg-type]
        with pytest.raises(NegotiationError) as info:
            pmd.client_accept(response(answer))
        assert info.value.status == 101

    def test_round_trip_of_every_default_pair(self) -> None:
        """Defaults work as a server config and as a client config (compliance drivers)."""
        server_pmd, client_pmd = PerMessageDeflate(), PerMessageDeflate()
        server_codec, header = server_pmd.server_negotiate(request(client_pmd.client_offer()))
        assert server_codec is not None and header is not None
        client_codec = client_pmd.client_accept(response(header))
        assert client_codec is not None
        assert server_codec.shared_key is not None  # broadcast-friendly by default

    @pytest.mark.parametrize(
        "config",
        [
            {"level": 10},
            {"level": -2},
            {"mem_level": 0},
            {"mem_level": 10},
            {"server_max_window_bits": 7},
            {"client_max_window_bits": 16},
            {"threshold": -1},
        ],
    )
    def test_bad_config(self, config: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            PerMessageDeflate(**config)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the codec


def pair(
    server_config: PerMessageDeflate, client_config: PerMessageDeflate
) -> tuple[DeflateCodec, DeflateCodec]:
    server_codec, header = server_config.server_negotiate(request(client_config.client_offer()))
    assert server_codec is not None and header is not None
    client_codec = client_config.client_accept(response(header))
    assert client_codec is not None
    return server_codec, client_codec


SETTINGS = [
    {},
    {"server_no_context_takeover": False, "client_no_context_takeover": False},
    {"server_max_window_bits": 8, "client_max_window_bits": 8},
    {
        "server_no_context_takeover": False,
        "client_no_context_takeover": False,
        "server_max_window_bits": 8,
        "client_max_window_bits": 9,
        "mem_level": 1,
    },
    {"server_max_window_bits": 12, "client_max_window_bits": 10, "level": 9},
    {"level": 0, "threshold": 0},
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_round_trip_both_ways(settings: dict[str, object]) -> None:
    cfg = PerMessageDeflate(**settings)  # type: ignore[arg-type]
    server_codec, client_codec = pair(cfg, cfg)
    server = Protocol(Side.SERVER, codec=server_codec)
    client = Protocol(Side.CLIENT, codec=client_codec)
    messages: list[str | bytes] = [text_corpus(n, n) for n in (0, 3, 40, 400, 4000)]
    messages += [bytes(range(256)) * 20, b"\x00" * 70000, "é€😀" * 500]
    for message in messages * 2:
        out = server.send_text(message) if isinstance(message, str) else server.send_binary(message)
        assert client.receive_data(out) == [message]
        out = client.send_text(message) if isinstance(message, str) else client.send_binary(message)
        assert server.receive_data(out) == [message]


def test_window_8_output_is_valid_for_a_256_byte_window() -> None:
    """What we compress under window bits 8 inflates with a strict 256-byte window.

    zlib compresses with 9 there, whose matches reach at most 250 bytes back. Repeated
    messages with context takeover tempt the compressor into long references.
    """
    comp = codec(compress_bits=8, compress_takeover=True)
    strict = zlib.decompressobj(-8)
    for n in (50, 60, 60, 500, 500, 5000, 5000):
        message = text_corpus(n, n).encode()
        out = comp.compress(message)
        assert strict.decompress(out + b"\x00\x00\xff\xff") == message
        assert len(out) < len(message)
    # The strict inflater does refuse a wider window's references (the check can fail).
    wide = codec(compress_bits=15, compress_takeover=True)
    strict = zlib.decompressobj(-8)
    message = text_corpus(60).encode()
    strict.decompress(wide.compress(message) + b"\x00\x00\xff\xff")
    with pytest.raises(zlib.error):
        strict.decompress(wide.compress(message) + b"\x00\x00\xff\xff")


def test_shared_key() -> None:
    assert codec(compress_takeover=True).shared_key is None
    a = codec(compress_bits=12, level=1)
    b = codec(compress_bits=12, level=1, decompress_bits=9, decompress_takeover=True)
    assert a.shared_key == b.shared_key is not None
    assert a.shared_key != codec(compress_bits=13, level=1).shared_key
    assert a.shared_key != codec(compress_bits=12, level=2).shared_key
    assert a.shared_key != codec(compress_bits=12, level=1, threshold=5).shared_key


def test_no_takeover_compresses_the_same_for_every_connection() -> None:
    """The property PreparedMessage relies on: output independent of the history."""
    a, b = codec(), codec()
    message = text_corpus(300).encode()
    a.compress(text_corpus(500, 1).encode())
    assert a.compress(message) == b.compress(message)
    fresh = zlib.decompressobj(-15)
    assert fresh.decompress(a.compress(message) + b"\x00\x00\xff\xff") == message


def test_threshold_and_per_message_switch() -> None:
    server = Protocol(Side.SERVER, codec=codec(threshold=100))
    client = Protocol(Side.CLIENT, codec=codec())
    small, large = "x" * 99, "x" * 100
    frames = [server.send_text(small), server.send_text(large)]
    frames.append(server.send_text(large, compress=False))
    assert [f[0] for f in frames] == [0x81, 0xC1, 0x81]  # RSV1 only on the compressed one
    assert client.receive_data(b"".join(frames)) == [small, large, large]
    # Control frames never go through the codec.
    assert server.send_ping(b"x" * 125)[0] == 0x89
    assert server.send_close(1000, "x" * 100)[0] == 0x88


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=True)


def compressed(data: bytes, *, wbits: int = 15, tail: bool = False) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    return out if tail else out[:-4]


def test_fragmented_across_many_frames() -> None:
    message = text_corpus(20000)
    payload = compressed(message.encode())
    size = len(payload) // 300 + 1
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    assert len(pieces) >= 250
    data = masked(1, pieces[0], fin=False, rsv1=True)
    data += b"".join(masked(0, p, fin=False) for p in pieces[1:-1])
    data += masked(0, pieces[-1])
    server = Protocol(Side.SERVER, codec=codec())
    events: list[object] = []
    rnd = random.Random(1)
    pos = 0
    while pos < len(data):  # in odd-sized packets, cutting frames anywhere
        step = rnd.randrange(1, 3000)
        events += server.receive_data(data[pos : pos + step])
        pos += step
    assert events == [message]


def test_rsv1_rules() -> None:
    payload = compressed(b"Hello")
    # RSV1 on a continuation frame.
    server = Protocol(Side.SERVER, codec=codec())
    events = server.receive_data(
        masked(1, payload[:2], fin=False, rsv1=True) + masked(0, payload[2:], rsv1=True)
    )
    assert isinstance(events[-1], Failure) and events[-1].code == 1002
    # RSV1 without a negotiated codec.
    server = Protocol(Side.SERVER)
    events = server.receive_data(masked(1, payload, rsv1=True))
    assert isinstance(events[-1], Failure) and events[-1].code == 1002
    # RSV1 on a control frame, even with a codec.
    server = Protocol(Side.SERVER, codec=codec())
    ping = bytearray(masked(9, b"x"))
    ping[0] |= 0x40
    events = server.receive_data(bytes(ping))
    assert isinstance(events[-1], Failure) and events[-1].code == 1002


def test_corrupt_data_is_1007() -> None:
    server = Protocol(Side.SERVER, codec=codec())
    events = server.receive_data(masked(2, b"\xff\xff\xff\xff", rsv1=True))
    assert len(events) == 1 and isinstance(events[0], Failure)
    assert events[0].code == 1007
    assert server.fail(events[0].code)[:4] == b"\x88\x02\x03\xef"


def test_valid_deflate_but_invalid_utf8_is_1007() -> None:
    server = Protocol(Side.SERVER, codec=codec())
    events = server.receive_data(masked(1, compressed(b"ok \xed\xa0\x80"), rsv1=True))
    assert isinstance(events[0], Failure) and events[0].code == 1007


class TestReadLimit:
    """The read limit counts inflated bytes and is enforced while inflating."""

    LIMIT = 1 << 20

    def test_exactly_the_limit_is_accepted(self) -> None:
        server = Protocol(Side.SERVER, max_size=self.LIMIT, codec=codec())
        data = b"\x00" * self.LIMIT
        assert server.receive_data(masked(2, compressed(data), rsv1=True)) == [data]

    def test_one_byte_over_is_1009(self) -> None:
        server = Protocol(Side.SERVER, max_size=self.LIMIT, codec=codec())
        events = server.receive_data(masked(2, compressed(b"\x00" * (self.LIMIT + 1)), rsv1=True))
        assert len(events) == 1 and isinstance(events[0], Failure)
        assert events[0].code == 1009

    def test_at_the_limit_then_more_in_the_next_frame(self) -> None:
        """Once a message is exactly at the limit, its budget is 0, not "unlimited"."""
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        first = comp.compress(b"a" * 1000) + comp.flush(zlib.Z_SYNC_FLUSH)
        bomb = comp.compress(b"\x00" * (8 << 20)) + comp.flush(zlib.Z_SYNC_FLUSH)
        server = Protocol(Side.SERVER, max_size=1000, codec=codec())
        assert server.receive_data(masked(2, first, fin=False, rsv1=True)) == []
        events = server.receive_data(masked(0, bomb[:-4]))
        assert len(events) == 1 and isinstance(events[0], Failure)
        assert events[0].code == 1009

    def test_a_trailing_empty_frame_at_the_limit_is_fine(self) -> None:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        first = comp.compress(b"a" * 1000) + comp.flush(zlib.Z_SYNC_FLUSH)
        server = Protocol(Side.SERVER, max_size=1000, codec=codec())
        events = server.receive_data(masked(2, first, fin=False, rsv1=True) + masked(0, b""))
        assert events == [b"a" * 1000]

    def test_bomb_never_holds_the_inflated_size(self) -> None:
        """10 MB of zeros in ~10 KB: refused with 1009, peak memory near the limit."""
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        zeros = b"\x00" * (1 << 20)
        payload = b"".join(comp.compress(zeros) for _ in range(10))
        payload += comp.flush(zlib.Z_SYNC_FLUSH)[:-4]
        del zeros
        assert len(payload) < 20_000
        frame = masked(2, payload, rsv1=True)
        server = Protocol(Side.SERVER, max_size=self.LIMIT, codec=codec())
        tracemalloc.start()
        try:
            events = server.receive_data(frame)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(events) == 1 and isinstance(events[0], Failure)
        assert events[0].code == 1009
        assert peak < 3 * self.LIMIT, peak  # 10 MiB if it were inflated first

    def test_no_limit(self) -> None:
        server = Protocol(Side.SERVER, max_size=None, codec=codec())
        data = b"\x00" * (3 << 20)
        assert server.receive_data(masked(2, compressed(data), rsv1=True)) == [data]


def test_no_takeover_inflater_lives_only_during_a_message() -> None:
    """Memory: a connection without client context takeover holds no zlib state idle."""
    server_codec = codec(decompress_takeover=False)
    server = Protocol(Side.SERVER, codec=server_codec)
    payload = compressed(text_corpus(100).encode())
    server.receive_data(masked(1, payload[:10], fin=False, rsv1=True))
    assert server_codec._infl is not None
    server.receive_data(masked(0, payload[10:]))
    assert server_codec._infl is None
    keep = codec(decompress_takeover=True)
    Protocol(Side.SERVER, codec=keep).receive_data(masked(1, payload, rsv1=True))
    assert keep._infl is not None


def test_close_during_compressed_message() -> None:
    server = Protocol(Side.SERVER, codec=codec())
    payload = compressed(b"Hello")
    events = server.receive_data(masked(1, payload[:3], fin=False, rsv1=True))
    events += server.receive_data(masked(8, b"\x03\xe8"))
    assert len(events) == 1 and isinstance(events[0], Close)
