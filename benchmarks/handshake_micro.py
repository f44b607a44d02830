"""Microseconds of Python per server handshake: parse, validate, build the 101.

The `connect` scenario of the suite measures whole handshakes, where the event loop
and the kernel take most of the time and two runs differ by 20 %; this isolates the
part epws controls (the sans-I/O handshake code) so a change to it can be measured.

Usage::

    .venv/bin/python benchmarks/handshake_micro.py
"""

from __future__ import annotations

import timeit

from epws.asyncio.server import Upgrader
from epws.protocol.handshake import is_upgrade_request
from epws.protocol.http11 import RequestParser

#: What the Go load generator (gorilla's Dialer) sends.
REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:9310\r\nUser-Agent: Go-http-client/1.1\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
)


def main() -> None:
    upgrader = Upgrader(compression=None)

    def one() -> None:
        request = RequestParser().feed(REQUEST)
        assert request is not None and is_upgrade_request(request)
        upgrader.negotiate(request)
        request.headers.compact()

    n = 20_000
    best = min(timeit.repeat(one, number=n, repeat=5))
    print(f"{best / n * 1e6:.1f} us per handshake (parse + validate + 101), best of 5 x {n:,}")


if __name__ == "__main__":
    main()
