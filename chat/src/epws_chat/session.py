"""The WebSocket side of the chat: the upgrade's settings, the handler each upgraded
connection runs, the token-expiry eviction and the keepalive shared by every client.

The handler admits a connection (token, per-address cap), hands it to
:func:`~epws_chat.client.accept` (which starts its read pump in the hub) and frees its
place in the gate when it closes. What is refused before the upgrade is decided in
:mod:`epws_chat.routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import epws

from .auth import EXPIRED_CODE, AuthError, ExpiryQueue, Identity, TokenAuth
from .client import PROTOCOL, Client, Settings, accept
from .hub import Hub
from .limits import Gate
from .metrics import Counters
from .routes import identify

__all__ = ["keepalive", "make_expiry", "make_handler", "make_upgrader"]

# The per-connection logger that --log-rate bounds (limits.FLOODABLE).
logger = logging.getLogger("epws_chat")


def make_upgrader(settings: Settings) -> epws.Upgrader:
    """The upgrade as the Go original does it, with the chat's limits."""
    return epws.Upgrader(
        check_origin=None,  # the same-origin check, as gorilla's nil CheckOrigin
        subprotocols=[PROTOCOL],
        read_limit=settings.read_limit,
        close_timeout=settings.write_wait,
        compression=None,  # as the Go original: lines are short, CPU is the budget
        # The chat keeps the seed's keepalive (keepalive below: an empty ping every
        # ping_period, a read deadline pong_wait ahead), not the library's.
        ping_interval=None,
    )


def make_expiry(hub: Hub, stats: Counters | None) -> ExpiryQueue:
    """The queue that closes a client (:data:`~epws_chat.auth.EXPIRED_CODE`)
    when its token expires, while it is still in the hub."""

    def expired(client: Client) -> None:
        logger.info("%s: token expired", client)
        if stats is not None:
            stats.evicted("token_expired")
        hub.unregister(client)
        client.conn.close_nowait(EXPIRED_CODE, "token expired")

    return ExpiryQueue(expired, hub.__contains__)


def make_handler(
    hub: Hub,
    settings: Settings,
    gate: Gate,
    auth: TokenAuth | None,
    stats: Counters | None,
    expiry: ExpiryQueue,
) -> Callable[[epws.Conn], None]:
    """The handler of every upgraded connection (``epws.serve``'s first argument)."""

    # One bound method for every client: the Client calls it as it goes, so that a
    # connection costs no closure of its own (about 200 bytes each).
    release = gate.release

    def handler(conn: epws.Conn) -> None:
        identity: Identity | None = None
        if auth is not None:
            try:  # checked before the upgrade; again here, as it may expire meanwhile
                identity = identify(auth, conn.request)
            except AuthError as exc:
                conn.close_nowait(EXPIRED_CODE if exc.status == 401 else 1008, exc.text)
                return
        if stats is not None:
            stats.handshake(101)
        address = gate.admit(conn)
        if address is None:
            logger.info("refused %s: too many connections", conn.remote_address)
            if stats is not None:
                stats.evicted("address_cap")
            conn.close_nowait(1013, "too many connections; try again later")
            return
        client = accept(hub, settings, conn, identity, address=address, release=release)
        if client is None:
            release(address)  # refused (a bad room): it is closing, and counts no more
        elif identity is not None and identity.expires is not None:
            expiry.add(client, identity.expires)

    return handler


async def keepalive(hub: Hub, settings: Settings) -> None:
    """Go's per-client ticker and write deadline, as one timer for every client.

    Every ping period each client gets an empty ping (clients that joined since the
    last one get theirs within a period, as in Go; the pong wait is longer either way).
    Between pings, the hub's sweep drops clients whose outgoing data has waited longer
    than ``write_wait`` (Go's write deadline), even in a room that fell silent.
    """
    loop = asyncio.get_running_loop()
    step = min(settings.ping_period, settings.write_wait / 2)
    next_ping = loop.time() + settings.ping_period
    failures = 0
    while True:
        await asyncio.sleep(step)
        # Supervised: an unexpected error is logged and the next round runs anyway.
        # Without this one bug would stop every ping and sweep, silently, forever.
        try:
            hub.sweep()
            if loop.time() < next_ping:
                continue
            next_ping += settings.ping_period
            for client in list(hub.clients):
                conn = client.conn
                if not conn.closed:
                    with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
                        await conn.ping(b"")
            failures = 0
        except Exception:
            failures += 1
            logger.exception("keepalive round failed (%d in a row); going on", failures)
            if loop.time() >= next_ping:
                next_ping = loop.time() + settings.ping_period
