"""Write a small seed corpus for each harness: python fuzz/seeds.py DIR (makes DIR/frames ...).

Seeds only need to reach the interesting code quickly; the fuzzer mutates from there.
The first bytes of each seed are mostly zero, so the harness's choices (side, limit,
splits) start from their first values and the rest of the seed is the wire.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

from epws.protocol.connection import Connection, Side
from epws.protocol.deflate import DeflateCodec
from epws.protocol.handshake import build_request


def deflated(payload: bytes, flush: int = zlib.Z_SYNC_FLUSH) -> bytes:
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = comp.compress(payload) + comp.flush(flush)
    return out[:-4] if flush == zlib.Z_SYNC_FLUSH else out


def frames(side: Side, compressed: bool) -> bytes:
    peer = Connection(side, codec=DeflateCodec() if compressed else None)
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
    # fuzz_frames: bool side (1 = server), bool compressed, limit index, cut count...
    for i, (side, compressed) in enumerate(
        [(Side.CLIENT, False), (Side.CLIENT, True), (Side.SERVER, False), (Side.SERVER, True)]
    ):
        wire = frames(side, compressed)
        head = bytes([side is Side.CLIENT, compressed, 5, 2, 0, 10, 0, 200, 0, 1, 2])
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
    (root / "http" / "request").write_bytes(b"\x01\x02\x05\x00\x09\x00" + request + b"\x81\x80")
    (root / "http" / "response").write_bytes(b"\x00\x01\x07\x00" + response)
    text = b"the quick brown fox jumps over the lazy dog " * 50
    for i, wire in enumerate(
        [
            deflated(text),
            deflated(text, zlib.Z_FINISH) + deflated(text),
            b"\x03\x00" * 64,
            deflated(bytes(100000)),
        ]
    ):
        (root / "inflate" / f"seed{i}").write_bytes(bytes([3, 7, 2, 0, 5, 0, 40]) + wire)


if __name__ == "__main__":
    main()
