"""Coverage-guided fuzzing of the HTTP head parsers and what reads their result (atheris).

RequestParser and ResponseParser get the input whole and split: the only error is
HandshakeError, the result (head, every lookup, rest, or status and message) is the
same for every split (so the one-chunk fast path agrees with the line-by-line parser),
and a parsed head then goes through check_request / check_response and the
permessage-deflate negotiation, which may only raise HandshakeError too. The C
accelerator's split_head, when built, must give what its Python twin gives. Run: README.
"""

from __future__ import annotations

import itertools
import sys

import atheris
from layout import CUTS_SIZE, Head

with atheris.instrument_imports():
    from epws.exceptions import HandshakeError
    from epws.protocol.deflate import PerMessageDeflate
    from epws.protocol.handshake import check_request, check_response
    from epws.protocol.http11 import (
        Request,
        RequestParser,
        Response,
        ResponseParser,
        _split_head_py,
    )

try:
    from epws._speedups import split_head as c_split_head
except ImportError:
    c_split_head = None

_PMD = PerMessageDeflate(client_max_window_bits=12)
HEAD_SIZE = 1 + CUTS_SIZE


def parse(make: type[RequestParser] | type[ResponseParser], pieces: list[bytes]) -> object:
    parser = make(max_line=256, max_headers=16, max_header_bytes=2048)
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
    # Every lookup too: a whole head arriving in one piece has its index built by the
    # parser's one-chunk fast path, a split one on first lookup.
    names = sorted({name.lower() for name, _ in head.headers} | {"host", "upgrade"})
    lookups = [(n, head.headers.get_all(n), head.headers.field_values(n)) for n in names]
    return ("head", head, list(head.headers), lookups, parser.rest)


def use(head: Request | Response) -> None:
    try:
        if isinstance(head, Request):
            check_request(head)
            _PMD.server_negotiate(head)
        else:
            check_response(head, "dGhlIHNhbXBsZSBub25jZQ==", ["chat"])
            _PMD.client_accept(head)
    except HandshakeError:
        pass


def TestOneInput(data: bytes) -> None:
    head = Head(data, HEAD_SIZE)  # flags (bit 0: request), cuts; then the wire
    make = RequestParser if head.byte() & 1 else ResponseParser
    cuts = head.cuts(1024)
    wire = head.wire
    whole = parse(make, [wire])
    bounds = [0, *(min(c, len(wire)) for c in cuts), len(wire)]
    split = parse(make, [wire[a:b] for a, b in itertools.pairwise(bounds)])
    assert repr(split) == repr(whole), (split, whole)
    if c_split_head is not None:  # the C accelerator's head splitter and its twin
        for limits in ((256, 16, 2048), (8192, 128, 65536), (24, 2, 64)):
            assert c_split_head(wire, *limits) == _split_head_py(wire, *limits), limits
    if isinstance(whole, tuple) and whole[0] == "head":
        use(whole[1])  # type: ignore[arg-type]


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
