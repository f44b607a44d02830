"""The loop's deadline queue: one timer for every connection's read deadline."""

from __future__ import annotations

import asyncio
import gc
import warnings
import weakref
from collections.abc import Callable

import pytest
import uvloop

import epws
from epws.asyncio.deadlines import DeadlineQueue, queue_for


class Target:
    """Stands for a Conn: the queue only needs its deadline and the expiry hook."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self._read_deadline: float | None = None

    def set(self, queue: DeadlineQueue, when: float | None) -> None:
        old, self._read_deadline = self._read_deadline, when
        queue.changed(asyncio.get_running_loop(), self, old, when)

    def _read_timed_out(self) -> None:
        assert self._read_deadline is None  # cleared before the hook runs
        self.log.append(self.name)


async def test_deadlines_fire_in_order_and_pushed_ones_wait() -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []
    a, b, c, d = (Target(n, log) for n in "abcd")
    now = loop.time()
    c.set(queue, now + 0.15)
    a.set(queue, now + 0.05)
    b.set(queue, now + 0.10)
    d.set(queue, now + 0.02)
    d.set(queue, None)  # cleared before it fires
    a.set(queue, now + 0.25)  # pushed forward: its first entry is stale
    assert len(queue) == 3
    await asyncio.sleep(0.2)
    assert log == ["b", "c"]
    await asyncio.sleep(0.1)
    assert log == ["b", "c", "a"]
    assert len(queue) == 0 and queue._timer is None and not queue._heap


class Rearming(Target):
    """Sets a new, later deadline of its own from its expiry hook, as the keepalive does
    (a ping sent: the pong wait is its next deadline)."""

    def __init__(self, name: str, log: list[str], queue: DeadlineQueue, after: float) -> None:
        super().__init__(name, log)
        self.queue = queue
        self.after = after

    def _read_timed_out(self) -> None:
        super()._read_timed_out()
        self.set(self.queue, asyncio.get_running_loop().time() + self.after)


async def test_a_deadline_set_while_firing_does_not_delay_an_earlier_one() -> None:
    """Found by the scale run (keepalive pings at a third of their rate with 500
    connections): while the timer's callback ran, the first deadline set from an
    expiry hook armed the timer for itself, later than entries still in the heap,
    which then waited for it."""
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []
    now = loop.time()
    first = Rearming("first", log, queue, after=1.0)  # re-arms 1 s after it fires
    second = Target("second", log)
    first.set(queue, now + 0.02)
    second.set(queue, now + 0.10)
    await asyncio.sleep(0.3)
    assert log == ["first", "second"]  # the second fired on time, not after 1 s
    first.set(queue, None)
    assert len(queue) == 0


async def test_pushing_often_keeps_the_heap_small() -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []
    targets = [Target(str(i), log) for i in range(100)]
    for step in range(200):  # every target pushes its deadline 200 times
        for t in targets:
            t.set(queue, loop.time() + 60 + step)
    assert len(queue) == 100
    assert len(queue._heap) <= 2 * 100 + 64 + 1  # stale entries were dropped
    for t in targets:
        t.set(queue, None)
    assert not queue._heap and len(queue) == 0  # nothing left behind but the timer
    assert log == []


async def test_the_queue_and_its_timer_outlive_a_connection_then_go() -> None:
    """A server's churn (one handshake after another, each with a keepalive deadline)
    keeps one queue and one timer: the last deadline leaving does not cancel the timer,
    which fires once with nothing due and then lets the queue go."""
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []
    a, b = Target("a", log), Target("b", log)
    a.set(queue, loop.time() + 0.05)
    timer = queue._timer
    a.set(queue, None)
    b.set(queue, loop.time() + 0.2)  # the next connection: no new timer for it
    assert queue._timer is timer and not timer.cancelled()  # type: ignore[union-attr]
    b.set(queue, None)
    assert queue._timer is timer and not queue._heap
    await asyncio.sleep(0.1)  # the timer fired with nothing due
    assert queue._timer is None and not queue._heap and log == []
    ref = weakref.ref(queue)
    del queue, timer
    gc.collect()
    assert ref() is None  # nothing holds an empty queue


async def test_an_expiry_hook_may_set_other_deadlines() -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []
    late = Target("late", log)
    others = [Target(f"o{i}", log) for i in range(200)]

    class Chain(Target):
        def _read_timed_out(self) -> None:
            super()._read_timed_out()
            for o in others:  # enough pushes to rebuild the heap from inside _fire
                o.set(queue, loop.time() + 30)
                o.set(queue, loop.time() + 31)
            late.set(queue, loop.time() + 0.05)

    Chain("first", log).set(queue, loop.time() + 0.01)
    await asyncio.sleep(0.15)
    assert log == ["first", "late"]
    for o in others:
        o.set(queue, None)
    assert len(queue) == 0


async def test_a_failing_expiry_hook_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    queue = DeadlineQueue()
    log: list[str] = []

    class Broken(Target):
        def _read_timed_out(self) -> None:
            raise RuntimeError("boom")

    now = loop.time()
    Broken("broken", log).set(queue, now + 0.01)
    Target("same-time", log).set(queue, now + 0.01)
    Target("later", log).set(queue, now + 0.05)
    await asyncio.sleep(0.15)
    assert log == ["same-time", "later"]
    assert "read deadline handler failed" in caplog.text
    assert len(queue) == 0


async def test_one_queue_per_loop_and_many_connections_time_out_on_it() -> None:
    loop = asyncio.get_running_loop()
    conns: list[epws.Conn] = []
    closed: list[epws.ConnectionClosed] = []

    def on_connect(conn: epws.Conn) -> None:
        conns.append(conn)
        conn.on_message = lambda _m: None
        conn.on_close = closed.append

    # Keepalive off: its entries would be in the queue too (the count below is exact).
    server = await epws.serve(on_connect, "127.0.0.1", 0, close_timeout=1, ping_interval=None)
    clients = [
        await epws.connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None) for _ in range(20)
    ]
    try:
        for _ in range(100):
            await asyncio.sleep(0)
            if len(conns) == 20:
                break
        queue = queue_for(loop)
        assert queue is queue_for(loop)
        before = len(queue)
        for i, conn in enumerate(conns):
            conn.set_read_deadline(loop.time() + (0.1 if i % 2 else 30))
        assert len(queue) == before + 20
        async with asyncio.timeout(5):
            while len(closed) < 10:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert len(closed) == 10  # the odd ones, whose deadline passed
        assert all("read deadline" in exc.cause for exc in closed)
        assert len(queue) == before + 10
    finally:
        for client in clients:
            await client.close()
        await server.close(timeout=2)
    # Connections that closed took their deadlines with them.
    assert len(queue_for(loop)) == before


@pytest.mark.parametrize(
    "make_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_a_closed_loop_with_deadlines_pending_is_not_kept_alive(
    make_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Issue 9 item 16: the per-loop queue must not pin the loop through its connections.

    A loop closed while connections still have read deadlines (asyncio.run ending with
    connections open, a test's loop torn down) is a cycle of loop, timer, queue and
    connections; the module-level registry must hold no strong reference into it,
    else every such loop, its connections and their sockets live forever.
    """
    loop = make_loop()

    async def leave_a_deadline_pending() -> None:
        loop = asyncio.get_running_loop()
        conns: list[epws.Conn] = []
        server = await epws.serve(conns.append, "127.0.0.1", 0)
        client = await epws.connect(f"ws://127.0.0.1:{server.port}/")
        async with asyncio.timeout(5):
            while not conns:
                await asyncio.sleep(0.01)
        conns[0].on_message = lambda _m: None
        conns[0].set_read_deadline(loop.time() + 3600)
        client.set_read_deadline(loop.time() + 3600)
        assert len(queue_for(loop)) == 2

    loop.run_until_complete(leave_a_deadline_pending())
    ref = weakref.ref(loop)
    with warnings.catch_warnings():
        # The transports are left open on purpose; uvloop warns as it closes them (and
        # its close() never ends if that warning is raised as an error).
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()
        del loop
        for _ in range(3):
            gc.collect()
    assert ref() is None
