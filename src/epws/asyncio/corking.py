"""Corked writes: the frames a loop iteration writes leave at its end, one call per connection.

Why one batch per loop rather than a ``call_soon`` per connection: the batch is the one
place that knows how many connections have output waiting in this iteration, and that
decides when a connection should not wait for the end of the iteration.

A connection that is **alone** (the only one with corked output in this iteration)
hands its first frame on as soon as it has it (:data:`SPLIT` frames), then the next
``2 * SPLIT``, and so on, doubling. With one busy connection, the peer and this process
otherwise take turns: the peer sends a window of messages, waits while all the replies
are made, then gets them in one piece, so one side is always idle. Sending the first
reply at once lets the peer start while the rest are being made, and a lone request
gets its answer with no wait for the end of the iteration (the echo benchmark of one
connection: see docs/performance.md); doubling keeps a long burst to a few writes (a
burst of ``n`` frames costs about ``log2(n / SPLIT) + 1`` of them). With several
connections busy, the other connections' peers already overlap with this process's
work, and one write per connection per iteration (fewer system calls) is the better
trade: only the first connection of an iteration can be alone, so a busy server pays
at most a few extra writes per iteration.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Protocol

__all__ = ["SPLIT", "Corked", "WriteBatch", "batch_for"]

logger = logging.getLogger("epws")

#: Frames a connection alone in its loop iteration corks before its first write: 1,
#: the first reply leaves at once (4 cost a lone request its answer until the end of
#: the iteration, and the one-connection echo about a fifth: docs/performance.md).
SPLIT = 1


class Corked(Protocol):
    """What the batch needs of a connection: a way to hand its corked frames on."""

    def _flush(self) -> None: ...


class WriteBatch:
    """The connections of one loop with frames corked in the current iteration."""

    __slots__ = ("conns", "split")

    def __init__(self) -> None:
        # The connections with frames corked (Conn._write adds one when it corks its
        # first frame of the iteration); empty between iterations.
        self.conns: list[Corked] = []
        # How many frames the connection alone corks before its next early write.
        self.split = SPLIT

    def run(self) -> None:
        """The end of the iteration: hand every connection's frames to its transport."""
        conns = self.conns
        self.conns = []
        self.split = SPLIT
        for conn in conns:
            try:
                conn._flush()
            except Exception:  # one connection's failure must not strand the others' output
                logger.exception("epws: writing a connection's corked frames failed")


# Weak on the loop: a batch holds connections only while they have output corked, and
# never the loop, so a closed loop goes with its batch.
_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary()
)


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The write batch of ``loop``, made on first use (once per connection, not per write)."""
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch()
    return batch
