"""A blocking client for scripts and tests: ``epws.sync.connect(url)``.

Built on the sans-I/O core (``epws.protocol``) over a plain socket, with no event
loop and no thread of its own; see docs/sync-client.md.
"""

from __future__ import annotations

from .client import connect, unix_connect
from .connection import ClientConnection

__all__ = ["ClientConnection", "connect", "unix_connect"]
