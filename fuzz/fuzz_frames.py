"""Coverage-guided fuzzing of Protocol.receive_data, both sides (atheris).

One input's head (see layout.py) decides the side, the compression, the read limit,
the split points and the max_messages bounds; the rest is the wire. The input is
parsed twice: whole in one unbounded call, and split with bounds (then drained); both
must give the same
events, no exception may escape (errors are Failure events), no call may return
more data messages than allowed, no message may pass the read limit, and without a
bound only an incomplete frame head may stay buffered. Run: see fuzz/README.md.
"""

from __future__ import annotations

import sys

import atheris
from layout import CUTS, CUTS_SIZE, Head

with atheris.instrument_imports():
    from epws.protocol import Close, Failure, Ping, Pong, Protocol, Side, frames
    from epws.protocol.deflate import DeflateCodec

_CODES = {1002, 1007, 1009}
LIMITS = [0, 1, 16, 125, 1000, 1 << 20]
BOUNDS = [None, 0, 1, 2]
#: flags (bit 0: server side, bit 1: compressed), limit, cuts, one bound per piece.
HEAD_SIZE = 2 + CUTS_SIZE + CUTS + 1


def _norm(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, str | bytes):
            out.append(ev)
        elif isinstance(ev, Ping | Pong):
            out.append((type(ev).__name__, ev.payload))
        elif isinstance(ev, Close):
            out.append(("close", ev.code, ev.reason))
        else:
            assert isinstance(ev, Failure), ev
            assert ev.code in _CODES, ev
            out.append(("fail", ev.code))
    return out


def _check(events: list[object], max_size: int, bound: int | None) -> None:
    data = [ev for ev in events if isinstance(ev, str | bytes)]
    if bound is not None:
        assert len(data) <= bound, (len(data), bound)
    if max_size:
        for ev in data:
            size = len(ev.encode()) if isinstance(ev, str) else len(ev)
            assert size <= max_size, (size, max_size)
    for i, ev in enumerate(events):
        if isinstance(ev, Failure | Close):
            assert i == len(events) - 1, "events after a Close or Failure"


def TestOneInput(data: bytes) -> None:
    head = Head(data, HEAD_SIZE)
    flags = head.byte()
    side = Side.SERVER if flags & 1 else Side.CLIENT
    compressed = bool(flags & 2)
    max_size = head.pick(LIMITS)
    cuts = head.cuts(4096)
    bounds = [head.pick(BOUNDS) for _ in range(CUTS + 1)][: len(cuts) + 1]
    wire = head.wire

    def make() -> Protocol:
        return Protocol(
            side,
            max_size=max_size,
            codec=DeflateCodec(decompress_takeover=True) if compressed else None,
        )

    whole = make()
    expected = whole.receive_data(wire)
    _check(expected, max_size, None)
    whole.data_to_send()

    conn = make()
    got: list[object] = []
    prev = 0
    for cut, bound in zip([*cuts, len(wire)], bounds, strict=True):
        cut = max(prev, min(cut, len(wire)))
        events = conn.receive_data(wire[prev:cut], max_messages=bound)
        _check(events, max_size, bound)
        got += events
        conn.data_to_send()
        if bound is None and not conn.failed and conn.close_rcvd is None:
            # Unbounded: only a frame head (and a control frame's payload) may wait.
            assert conn.input_buffered <= 14 + 125, conn.input_buffered
        prev = cut
    while True:
        events = conn.receive_data(b"", max_messages=1)
        _check(events, max_size, 1)
        if not events:
            break
        got += events
    assert _norm(got) == _norm(expected), (_norm(got), _norm(expected))

    # The C accelerator's unmask_at (the parser's, above) against its Python twin, on
    # ranges of these bytes that the cuts pick.
    if frames.SPEEDUPS and len(wire) >= 4:
        for a, b in zip([4, *cuts], [*cuts, len(wire)], strict=True):
            start = max(4, min(a, len(wire)))
            end = max(start, min(b, len(wire)))
            assert frames.unmask_at(wire, start, end) == frames._unmask_at_py(wire, start, end)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
