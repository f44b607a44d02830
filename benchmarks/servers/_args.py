"""The command line every benchmark server takes, and running its main() on a loop.

Kept apart so that each server file shows only what its library's docs recommend.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def parse(
    description: str | None, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--kind", choices=("echo", "chat"), default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    return parser.parse_args()


def run(main: Callable[[], Coroutine[Any, Any, None]], use_uvloop: bool) -> None:
    """Run main() until the process is killed (SIGTERM's default action ends it)."""
    if use_uvloop:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
