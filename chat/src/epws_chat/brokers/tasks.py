"""Stopping the Redis broker's background tasks: cancel, then wait a bounded time.

Why bounded: shutting down must finish even when code under a task swallows its
cancellation. It happened in the test suite: the presence task was cancelled while
inside a Redis call, went on looping (its next wait had a timeout, so it woke and
looped again every interval), and ``close()``, waiting for it without a bound, never
returned. Why :func:`asyncio.wait` rather than awaiting the task inside
``suppress(CancelledError)``: it neither raises the task's own error nor swallows a
cancellation of the caller (a shutdown that is itself being cancelled).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["stop"]

logger = logging.getLogger("epws_chat.redis")


async def stop(task: asyncio.Task[Any] | None, *, timeout: float = 1.0) -> bool:
    """Cancel ``task`` and wait for it to end, at most ``timeout`` seconds.

    Returns whether it ended. One that did not is logged and left behind, cancelled;
    the loops that run in these tasks also check their owner's closed flag, so they
    end at their next turn anyway.
    """
    if task is None:
        return True
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        logger.warning(
            "redis broker: task %s did not stop within %.1f s of being cancelled; left behind",
            task.get_name(),
            timeout,
        )
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.debug("redis broker: task %s ended with %r", task.get_name(), exc)
    return True
