"""Write a small seed corpus for each harness: python fuzz/seeds.py DIR (makes DIR/frames ...).

Seeds only need to reach the interesting code quickly; the fuzzer mutates from there.
Each seed is the harness's head of options (layout.py: side, limit, split points...)
followed by the wire, so the fuzzer starts from inputs that parse: valid frames, a
complete upgrade request and response, deflate streams.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

from layout import CUTS, cuts_block

from epws.protocol import Protocol, Side
from epws.protocol.deflate import DeflateCodec
from epws.protocol.handshake import build_request


def deflated(payload: bytes, flush: int = zlib.Z_SYNC_FLUSH) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = comp.compress(payload) + comp.flush(flush)
    return out[:-4] if flush == zlib.Z_SYNC_FLUSH else out


def frames(side: Side, compressed: bool) -> bytes:
    peer = Protocol(side, codec=DeflateCodec() if compressed else None)
    return b"".join(
        [
            peer.send_text("héllo " * 20),
            peer.send_binary(bytes(range(256))),
            peer.send_ping(b"ping"),
            peer.send_fragment(1, b"frag", fin=False),
            peer.send_pong(b"pong"),
            peer.send_fragment(0, "ment ✓".encode(), fin=True),
            peer.send_binary(bytes(70000)),
            peer.send_close(1000, "bye"),
        ]
    )


def main() -> None:
    root = Path(sys.argv[1])
    for name in ("frames", "http", "inflate"):
        (root / name).mkdir(parents=True, exist_ok=True)
    # fuzz_frames: flags (bit 0: server, bit 1: compressed), limit index (5: 1 MiB),
    # cuts, then a max_messages bound per piece (index into None, 0, 1, 2).
    for i, (side, compressed) in enumerate(
        [(Side.CLIENT, False), (Side.CLIENT, True), (Side.SERVER, False), (Side.SERVER, True)]
    ):
        # The peer of a server is a client: its frames are masked.
        wire = frames(Side.CLIENT if side is Side.SERVER else Side.SERVER, compressed)
        flags = (side is Side.SERVER) | (compressed << 1)
        bounds = bytes([0, 2, 3, 1] + [0] * (CUTS + 1 - 4))
        head = bytes([flags, 5]) + cuts_block([10, 200, 300]) + bounds
        (root / "frames" / f"seed{i}").write_bytes(head + wire)
    request = build_request(
        "example.com",
        "/chat?x=1",
        "dGhlIHNhbXBsZSBub25jZQ==",
        extensions="permessage-deflate; client_max_window_bits",
    )
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
    )
    # fuzz_http: flags (bit 0: request), cuts.
    (root / "http" / "request").write_bytes(b"\x01" + cuts_block([5, 9]) + request + b"\x81\x80")
    (root / "http" / "response").write_bytes(b"\x00" + cuts_block([7]) + response)
    text = b"the quick brown fox jumps over the lazy dog " * 50
    for i, wire in enumerate(
        [
            deflated(text),
            deflated(text, zlib.Z_FINISH) + deflated(text),
            b"\x03\x00" * 64,
            deflated(bytes(100000)),
        ]
    ):
        # fuzz_inflate: limit index (None, 1024, 5000, 64 KiB), window bits - 8, cuts.
        head = bytes([(0, 4, 5, 6)[i], 7]) + cuts_block([5, 40])
        (root / "inflate" / f"seed{i}").write_bytes(head + wire)


if __name__ == "__main__":
    main()
