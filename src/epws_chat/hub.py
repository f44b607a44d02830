"""The Hub: the single owner of the set of connected clients.

In the Go original a hub goroutine owns the client map and three unbuffered channels
(register, unregister, broadcast) serialize every change to it. Here the hub and all
clients live on one event loop, which already serializes them: a plain method call
runs to completion before any other task touches the set, so the hub needs neither a
task of its own nor a queue in front of it (each would only add a wake-up per
operation). Nothing in this module awaits.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Hub"]

logger = logging.getLogger("epws_chat.hub")


class Hub:
    """Registered clients, and a broadcast that never waits for any of them.

    Attributes:
        clients: the registered clients, in registration order (a dict used as an
            ordered set, so broadcasts reach clients in a stable order).
    """

    __slots__ = ("clients",)

    def __init__(self) -> None:
        self.clients: dict[Client, None] = {}

    def __len__(self) -> int:
        return len(self.clients)

    def __contains__(self, client: object) -> bool:
        return client in self.clients

    def register(self, client: Client) -> None:
        """Add ``client``: from now on it gets every broadcast message."""
        self.clients[client] = None

    def unregister(self, client: Client) -> None:
        """Remove ``client`` and close its send buffer, so its write pump ends.

        A client the hub already evicted is not in the set any more: then nothing
        happens, so a send buffer is never closed twice (the Go hub's ``if _, ok``).
        """
        if client in self.clients:
            del self.clients[client]
            client.close_send()

    def broadcast(self, message: str) -> None:
        """Queue ``message`` for every client, the sender included, without blocking.

        A client whose send buffer is already full is taken to be dead or stuck: it is
        removed and its buffer closed right away, with no waiting and no retry, so one
        stuck reader can never slow the hub or the other clients down.
        """
        evicted: list[Client] | None = None
        for client in self.clients:
            if not client.enqueue(message):
                if evicted is None:
                    evicted = []
                evicted.append(client)
        if evicted is not None:
            for client in evicted:
                del self.clients[client]
                client.close_send()
                logger.info("evicted %s: send buffer full", client)
