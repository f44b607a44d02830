"""The option bytes every harness reads in front of the wire, and how seeds write them.

Each input is a fixed-size head of options (side, limits, split points...) followed by
the wire bytes. The head is read here byte by byte, from the front, so that a seed
written by :mod:`seeds` means what it says: atheris's FuzzedDataProvider takes
integers from the end of the input, which silently put the seeds' option bytes into
their wire (every seed then failed at its first byte).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")

#: Split points per input, at most.
CUTS = 8


class Head:
    """Reads the options of one input; missing bytes read as zero."""

    def __init__(self, data: bytes, size: int) -> None:
        self._head = data[:size].ljust(size, b"\0")
        self.wire = data[size:]
        self._pos = 0

    def byte(self) -> int:
        value = self._head[self._pos]
        self._pos += 1
        return value

    def pick(self, values: Sequence[_T]) -> _T:
        return values[self.byte() % len(values)]

    def cuts(self, top: int) -> list[int]:
        """Up to CUTS split points in 0..top (the count byte, then CUTS 16-bit values)."""
        count = self.byte() % (CUTS + 1)
        points = []
        for i in range(CUTS):
            (value,) = struct.unpack_from("!H", self._head, self._pos)
            self._pos += 2
            if i < count:
                points.append(value % (top + 1))
        return sorted(points)


#: The size of the split-point block that :meth:`Head.cuts` reads.
CUTS_SIZE = 1 + 2 * CUTS


def cuts_block(points: Sequence[int]) -> bytes:
    """The bytes :meth:`Head.cuts` reads back as ``points``."""
    padded = [*points, *[0] * (CUTS - len(points))]
    return bytes([len(points)]) + struct.pack(f"!{CUTS}H", *padded)
