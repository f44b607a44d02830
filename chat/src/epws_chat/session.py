"""The WebSocket side of the chat: the upgrade's settings (the seed's keepalive among
them, run by epws), the handler each upgraded connection runs, the token-expiry
eviction.

The handler admits a connection (token, per-address cap), hands it to
:func:`~epws_chat.client.accept` (which starts its read pump in the hub) and frees its
place in the gate when it closes. What is refused before the upgrade is decided in
:mod:`epws_chat.routes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import epws

from .auth import EXPIRED_CODE, AuthError, ExpiryQueue, Identity, TokenAuth
from .client import PROTOCOL, Client, accept
from .hub import Hub
from .limits import Gate
from .metrics import Counters
from .routes import identify
from .settings import Settings

__all__ = ["make_expiry", "make_handler", "make_upgrader"]

# The per-connection logger that --log-rate bounds (limits.FLOODABLE).
logger = logging.getLogger("epws_chat")


def make_upgrader(settings: Settings, stats: Counters | None = None) -> epws.Upgrader:
    """The upgrade as the Go original does it, with the chat's limits.

    The handshakes the library refuses by itself (a malformed request: 400, not an
    upgrade: 426, another site's page: 403, ...) are counted in ``stats`` by their
    status, like the ones the chat refuses (:mod:`epws_chat.routes`) and accepts.
    """
    on_refusal = None
    if stats is not None:
        count = stats.handshake

        def on_refusal(error: epws.HandshakeError, request: epws.Request | None) -> None:
            count(error.status)

    return epws.Upgrader(
        check_origin=None,  # the same-origin check, as gorilla's nil CheckOrigin
        subprotocols=[PROTOCOL],
        read_limit=settings.read_limit,
        close_timeout=settings.write_wait,
        compression=None,  # as the Go original: lines are short, CPU is the budget
        # The seed's keepalive on the library's: an empty ping every ping_period, and a
        # client whose pong does not come within pong_wait - ping_period dropped, which
        # is pong_wait after the last ping it answered (Go: a read deadline pong_wait
        # ahead, pushed only by pongs, so pong_wait after the last pong).
        ping_interval=settings.ping_period,
        ping_timeout=settings.pong_wait - settings.ping_period,
        ping_payload=b"",
        on_refusal=on_refusal,
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
