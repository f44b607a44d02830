"""Every error epws raises, under one root so applications can catch them all.

The tree::

    EpwsError
    ├── HandshakeError            the opening handshake failed (carries an HTTP status)
    │   ├── BadOrigin             403: Origin refused by the origin check
    │   ├── NegotiationError      an extension or subprotocol answer does not fit the offer
    │   └── ProxyError            the proxy refused the tunnel (HTTP-like status: 407, 502...)
    ├── InvalidURI                not a ws:// or wss:// URL
    ├── ProtocolError             the peer broke RFC 6455/7692 (carries the close code sent)
    │   └── MessageTooBig         a message passed the read limit (close code 1009)
    ├── ConnectionClosed          the connection is closed (carries both close frames)
    │   ├── ConnectionClosedOK    ... cleanly, with 1000 or 1001 (or no code)
    │   └── ConnectionClosedError ... otherwise
    ├── InvalidState              an operation the connection's state forbids (send after close)
    └── ConcurrencyError          two tasks read (or write a fragmented message) at once

Timeouts and deadlines raise the built-in :class:`TimeoutError`, as asyncio does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.protocol import Protocol

__all__ = [
    "BadOrigin",
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "EpwsError",
    "HandshakeError",
    "InvalidState",
    "InvalidURI",
    "MessageTooBig",
    "NegotiationError",
    "ProtocolError",
    "ProxyError",
    "is_unexpected_close",
]


class EpwsError(Exception):
    """Root of every exception raised by epws."""


class HandshakeError(EpwsError):
    """The opening handshake failed.

    On the server, ``status`` and ``headers`` are what the HTTP error response says,
    so an application can log the exact reason the peer was refused. On the client,
    ``status`` is the status the server answered (0 when it did not answer HTTP).
    """

    def __init__(
        self,
        message: str,
        status: int = 400,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []
        self.body = body


class BadOrigin(HandshakeError):
    """The Origin header was refused: the request is a cross-site one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 403)


class NegotiationError(HandshakeError):
    """An extension or subprotocol could not be agreed on."""


class ProxyError(HandshakeError):
    """The proxy did not open a tunnel to the server.

    ``status`` is the proxy's HTTP answer to CONNECT (407: authentication wanted or
    refused, 403: not allowed, 502/504: the proxy could not reach the server); SOCKS
    refusals are given the status an HTTP proxy would have answered.
    """


class InvalidURI(EpwsError):
    """The URL given to the client is not a usable ws:// or wss:// URL."""


class ProtocolError(EpwsError):
    """The peer broke the protocol; the connection was failed with ``code``."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class MessageTooBig(ProtocolError):
    """A message went past the read limit; it was refused before being buffered."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 1009)


class ConnectionClosed(EpwsError):
    """The connection is closed; reading or writing on it is no longer possible.

    ``rcvd_code``/``rcvd_reason`` describe the close frame received (``None`` if
    none came), ``sent_code``/``sent_reason`` the one sent. ``code`` is the code
    the application should act on, as browsers report it: the received code,
    1005 when the peer's close frame had no code, 1006 when no close frame
    arrived at all.
    """

    def __init__(
        self,
        rcvd_code: int | None,
        rcvd_reason: str,
        sent_code: int | None,
        sent_reason: str,
        *,
        rcvd_then_sent: bool | None = None,
        cause: str = "",
    ) -> None:
        self.rcvd_code = rcvd_code
        self.rcvd_reason = rcvd_reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason
        self.rcvd_then_sent = rcvd_then_sent
        self.cause = cause
        # No message is made here (see __str__): a server makes one of these for every
        # connection that ends, and most are never looked at.

    def __str__(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()!r})"

    @property
    def code(self) -> int:
        """The close code as the application sees it (1005/1006 when absent)."""
        if self.rcvd_code is not None:
            return self.rcvd_code
        return 1006

    @property
    def reason(self) -> str:
        return self.rcvd_reason

    def _describe(self) -> str:
        rcvd = (
            "no close frame received"
            if self.rcvd_code is None
            else (f"received {self.rcvd_code} ({self.rcvd_reason!r})")
        )
        sent = (
            "no close frame sent"
            if self.sent_code is None
            else (f"sent {self.sent_code} ({self.sent_reason!r})")
        )
        order = (
            f"{rcvd}; then {sent}" if self.rcvd_then_sent is not False else f"{sent}; then {rcvd}"
        )
        return f"{order}{'; ' + self.cause if self.cause else ''}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed cleanly (1000, 1001 or 1005 received)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed abnormally or with an error code."""


#: Received close codes that make a closed connection "OK" (1005: a frame with no code).
_OK_CODES = frozenset({1000, 1001, 1005})


def closed_error(protocol: Protocol, exc: BaseException | None = None) -> ConnectionClosed:
    """The :class:`ConnectionClosed` that ``protocol``'s close frames (both ways) make.

    One copy of the rule for the asyncio and the sync connection: OK when the peer's
    code is 1000, 1001 or none and nothing failed; ``exc`` (what ended TCP) becomes
    the cause.
    """
    rcvd, sent = protocol.close_rcvd, protocol.close_sent
    code = rcvd.code if rcvd is not None else None
    ok = code in _OK_CODES and not protocol.failed
    cls = ConnectionClosedOK if ok else ConnectionClosedError
    err = cls(
        code,
        rcvd.reason if rcvd is not None else "",
        sent[0] if sent is not None else None,
        sent[1] if sent is not None else "",
        cause=str(exc) if exc else "",
    )
    if exc is not None:
        err.__cause__ = exc
    return err


class InvalidState(EpwsError, RuntimeError):
    """The operation is not allowed in the connection's current state.

    For example sending a message after the close frame went out, or starting a
    second fragmented message before the first one ended.
    """


class ConcurrencyError(EpwsError, RuntimeError):
    """Two tasks used the connection in a way its contract forbids.

    A connection supports one reader at a time; whole-message writes may come from
    any number of tasks, but a fragmented message in progress belongs to the task
    that started it.
    """


def is_unexpected_close(err: BaseException, *expected: int) -> bool:
    """True if ``err`` is a close with a received code not in ``expected``.

    Mirrors gorilla's ``IsUnexpectedCloseError``: only a close the peer initiated
    (or the abnormal 1006 when no code came) is considered; other errors are not
    closes at all and give False.
    """
    if not isinstance(err, ConnectionClosed):
        return False
    return err.code not in expected
