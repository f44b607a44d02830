"""Every async test runs twice: on asyncio's default event loop and on uvloop.

Property-based tests have no per-example deadline: speed is the benchmarks' business,
and a shared or loaded machine must not turn a slow example into a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, settings

settings.register_profile("epws", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("epws")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def anyloop() -> Any:
    """The running loop's module name, for tests that assert which loop they ran on."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
