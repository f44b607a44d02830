"""The opening handshake of RFC 6455 §1.3 as bytes, shared by the handshake tests.

``test_http11`` parses these messages and ``test_handshake`` builds and checks them; the
constants live here so that neither test module imports the other, as does
:func:`head_outcome`, what the head parsers' split tests compare.
"""

from __future__ import annotations

from epws.exceptions import HandshakeError
from epws.protocol.http11 import RequestParser, ResponseParser

# RFC 6455 §1.3.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

REQUEST_BYTES = (
    b"GET /chat?room=1&flag= HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
FRAMES = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7 masked "Hello"

RESPONSE_BYTES = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)


def head_outcome(parser: RequestParser | ResponseParser, pieces: list[bytes]) -> object:
    """Everything a head parser's result shows, fed ``pieces``: the head, its fields,
    lookups by name in any case (present or not), the rest; or the error's status and
    message; or that the head is incomplete."""
    head = None
    try:
        for piece in pieces:
            got = parser.feed(piece)
            if got is not None:
                assert head is None
                head = got
    except HandshakeError as exc:
        return ("error", exc.status, str(exc))
    if head is None:
        return ("incomplete",)
    names = sorted({name for name, _ in head.headers} | {"host", "HOST", "x-a", "nope"})
    lookups = [(n, head.headers.get_all(n), n in head.headers) for n in names]
    return ("head", repr(head), list(head.headers), lookups, parser.rest)
