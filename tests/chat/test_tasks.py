"""brokers/tasks.py: stopping a background task never hangs, whatever the task does."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from epws_chat.brokers.tasks import stop


async def test_a_task_that_swallows_its_cancellation_is_left_behind_in_bounded_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ending = asyncio.Event()

    async def stubborn() -> None:
        # What the presence task did once: the cancellation lost under a library call,
        # then a loop whose every wait has a timeout, so it never ends on its own.
        while not ending.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
    try:
        await asyncio.sleep(0.02)
        started = time.monotonic()
        assert await stop(task, timeout=0.2) is False
        # The loop's clock, not this one, times the wait: uvloop's counts whole
        # milliseconds, so allow for one.
        assert 0.19 <= time.monotonic() - started < 1.0
        assert "stubborn did not stop" in caplog.text
    finally:
        ending.set()  # whatever failed above, the task must end: nothing can cancel it
        async with asyncio.timeout(2):
            await task


async def test_a_task_that_ends_is_waited_for_and_its_error_kept_from_the_caller() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise RuntimeError("cleanup failed")

    task = asyncio.get_running_loop().create_task(failing())
    await asyncio.sleep(0)
    assert await stop(task) is True
    assert task.done() and isinstance(task.exception(), RuntimeError)
    assert await stop(None) is True


async def test_a_cancelled_caller_is_not_swallowed() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.5)

    inner = asyncio.get_running_loop().create_task(slow_to_stop())
    await asyncio.sleep(0)
    outer = asyncio.get_running_loop().create_task(stop(inner, timeout=5))
    await asyncio.sleep(0.05)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    async with asyncio.timeout(2):
        with contextlib.suppress(asyncio.CancelledError):
            await inner
