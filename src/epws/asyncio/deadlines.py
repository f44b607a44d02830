"""Read deadlines of every connection on a loop, behind one timer.

Why not a ``loop.call_at`` per connection: a server holding 10,000 idle connections
with a read deadline each (the chat's pong wait) would hold 10,000 timer handles, about
150 bytes each on asyncio and 600 on uvloop, and a keepalive that pushes every deadline
forward on each pong would cancel and re-create all of them every period. Here each
deadline is one heap entry (a small tuple) and the loop has one timer, armed for the
earliest deadline.

Pushing a deadline forward leaves its old entry in the heap; an entry is acted on only
if it is still its connection's current deadline. Stale entries are dropped when they
come due, and the heap is rebuilt when they outnumber the live ones, so memory stays
proportional to the connections that have a deadline, however often they push it.

When the last deadline goes, the timer is left to fire (and find nothing): a server
whose connections come and go one at a time keeps one queue and one timer rather than
making and cancelling both for each connection.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import weakref
from typing import Protocol

__all__ = ["DeadlineQueue", "HasDeadline", "queue_for"]

logger = logging.getLogger("epws")

#: Seconds: how early a deadline may be acted on (asyncio's timers run up to about a
#: millisecond early too).
_RESOLUTION = 0.001


class HasDeadline(Protocol):
    """What the queue needs of a connection: its current deadline and an expiry hook."""

    _read_deadline: float | None

    def _read_timed_out(self) -> None: ...


class DeadlineQueue:
    """Deadlines of many connections on one event loop, one loop timer for all.

    Holds no reference to the loop itself (it is found when the timer fires); while a
    deadline is pending, the loop's armed timer is what keeps the queue alive.
    """

    __slots__ = ("__weakref__", "_heap", "_live", "_seq", "_timer", "_timer_when")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, HasDeadline]] = []
        self._seq = itertools.count()
        self._live = 0  # connections with a deadline set
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0

    def __len__(self) -> int:
        return self._live

    def changed(
        self,
        loop: asyncio.AbstractEventLoop,
        target: HasDeadline,
        old: float | None,
        new: float | None,
    ) -> None:
        """``target``'s deadline went from ``old`` to ``new`` (either may be None)."""
        if new is None:
            if old is not None:
                self._live -= 1
                if self._live == 0:
                    # Every entry left is stale. The timer stays armed: the connection
                    # that comes next (a server's churn: one handshake after another)
                    # finds this queue and its timer ready instead of making both
                    # again; when the timer fires with nothing due, the queue goes.
                    self._heap = []
            return
        if old is None:
            self._live += 1
        heap = self._heap
        heapq.heappush(heap, (new, next(self._seq), target))
        # The timer is for the heap's earliest entry, not for this one: while _fire
        # runs there is no timer, and an expiry hook that sets a later deadline must
        # not arm it past entries still waiting in the heap (they would wait for it).
        top = heap[0][0]
        if self._timer is None or top < self._timer_when:
            self._arm(loop, top)
        if len(heap) > 2 * self._live + 64:
            self._compact()

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_when = when

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        # Loops run a timer up to their clock resolution early; a deadline that close
        # is due now, rather than re-armed for a few microseconds.
        due = loop.time() + _RESOLUTION
        # self._heap, not a local: an expiry callback may set other deadlines, which
        # can rebuild the heap.
        while self._heap and self._heap[0][0] <= due:
            when, _, target = heapq.heappop(self._heap)
            if target._read_deadline == when:
                self._live -= 1
                target._read_deadline = None
                try:
                    target._read_timed_out()
                except Exception:  # one failing connection must not stop the others
                    logger.exception("read deadline handler failed")
        if not self._live:
            self._heap = []  # only stale entries: the queue goes with its timer
        elif self._heap:
            # Hooks may have armed the timer for an entry popped since; the earliest
            # one left is what it must wait for.
            top = self._heap[0][0]
            if self._timer is None or top != self._timer_when:
                self._arm(loop, top)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2]._read_deadline == e[0]]
        heapq.heapify(self._heap)


# Weak on both sides. The loop owns its queue while a deadline is pending, through the
# armed timer (loop -> timer -> queue._fire -> queue); a queue with no deadline holds
# nothing worth keeping and is made again on next use. A strong value here would pin
# the loop for ever: the queue holds connections, and a connection holds its loop, so a
# loop closed with deadlines pending (asyncio.run ending with connections open) would
# live on with its connections and their sockets (issue 9 item 16).
_QUEUES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.ref[DeadlineQueue]] = (
    weakref.WeakKeyDictionary()
)


def queue_for(loop: asyncio.AbstractEventLoop) -> DeadlineQueue:
    """The deadline queue of ``loop``, made on first use (and again once it is empty)."""
    ref = _QUEUES.get(loop)
    queue = ref() if ref is not None else None
    if queue is None:
        queue = DeadlineQueue()
        _QUEUES[loop] = weakref.ref(queue)
    return queue
