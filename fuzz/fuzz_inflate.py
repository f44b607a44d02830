"""Coverage-guided fuzzing of DeflateCodec.decompress with read limits (atheris).

The wire bytes of one compressed message are inflated whole and in random pieces:
the only error is InflateError (carrying MessageTooBig, 1009, or ProtocolError,
1007), what comes out never passes the limit, and the result (bytes, or the error's
code and what was inflated before it) is the same for every split (for corrupt data,
only the code: zlib drops the output of the call that fails). Run: see README.
"""

from __future__ import annotations

import itertools
import sys

import atheris
from layout import CUTS_SIZE, Head

with atheris.instrument_imports():
    from epws.exceptions import MessageTooBig, ProtocolError
    from epws.protocol import InflateError
    from epws.protocol.deflate import DeflateCodec


LIMITS = [None, 0, 1, 100, 1024, 5000, 1 << 16]
HEAD_SIZE = 2 + CUTS_SIZE


def inflate(pieces: list[bytes], max_size: int | None, bits: int) -> tuple[object, ...]:
    codec = DeflateCodec(decompress_bits=bits)
    out = b""
    try:
        for i, piece in enumerate(pieces):
            budget = None if max_size is None else max_size - len(out)
            got = codec.decompress(piece, budget, i == len(pieces) - 1)
            if budget is not None:
                assert len(got) <= budget, (len(got), budget)
            out += got
    except InflateError as exc:
        assert isinstance(exc.error, ProtocolError)
        if isinstance(exc.error, MessageTooBig):
            assert exc.error.code == 1009
        else:
            assert exc.error.code == 1007
        if max_size is not None:
            assert len(out) + len(exc.inflated) <= max_size
        return ("error", exc.error.code, out + exc.inflated)
    return ("ok", out)


def TestOneInput(data: bytes) -> None:
    head = Head(data, HEAD_SIZE)  # limit, window bits, cuts; then the wire
    max_size = head.pick(LIMITS)
    bits = 8 + head.byte() % 8
    cuts = head.cuts(2048)
    wire = head.wire
    whole = inflate([wire], max_size, bits)
    bounds = [0, *(min(c, len(wire)) for c in cuts), len(wire)]
    pieces = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    split = inflate(pieces, max_size, bits)
    if whole[0] == "error" and whole[1] == 1007:
        # zlib returns nothing from the call that finds corrupt data, so how much was
        # inflated before it depends on the pieces; the close code does not.
        assert split[:2] == whole[:2], (split, whole)
        a, b = split[2], whole[2]
        assert isinstance(a, bytes) and isinstance(b, bytes)
        assert a.startswith(b) or b.startswith(a), (split, whole)
    else:
        assert split == whole, (split, whole)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
