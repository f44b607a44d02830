"""Clients: the :class:`Dialer` policy, :func:`connect` and :func:`unix_connect`.

The dialer opens TCP (through a proxy when one is configured or named by the
environment, see :mod:`epws.asyncio.proxy`) or a Unix socket, adds TLS for ``wss://``,
writes the upgrade request, reads the response with a bounded parser under a timeout,
follows redirects (bounded, never from ``wss://`` to ``ws://``), checks the answer and
hands the transport to a :class:`~epws.asyncio.conn.Conn`.

:func:`connect` returns an object that is awaitable (one connection), an async context
manager (one connection, closed on exit) and an async iterator (a new connection each
time round, after a backoff when the last attempt failed for a transient reason).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import HandshakeError, InvalidURI
from ..protocol import MessageCodec, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import build_request, check_response, generate_key
from ..protocol.http11 import Response, ResponseParser
from ..protocol.uri import parse_uri
from .conn import Conn
from .keepalive import KEEPALIVE_PAYLOAD, keepalive_settings
from .proxy import open_via_proxy, select_proxy

__all__ = ["Backoff", "Dialer", "connect", "is_transient", "unix_connect"]

logger = logging.getLogger("epws.client")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Closes that ask the client to come back later rather than at once (RFC 6455 §7.4.1
# registry: 1012 Service Restart, 1013 Try Again Later).
_BACKOFF_CLOSES = frozenset({1012, 1013})


@dataclass(slots=True)
class Dialer:
    """How a client opens WebSocket connections (gorilla's Dialer).

    Attributes:
        headers: extra request headers, e.g. ``[("Authorization", "Bearer ...")]``.
        origin: the Origin header to send (browsers always send one; scripts need not).
        subprotocols: subprotocols to offer, in order of preference.
        handshake_timeout: seconds for TCP, proxy, TLS and the HTTP exchange together
            (each redirect gets its own).
        ssl: the TLS context for ``wss://`` URLs (default: ``ssl.create_default_context()``).
        read_limit, max_queue, write_limit, close_timeout, ping_interval, ping_timeout,
        ping_payload: as on :class:`~epws.Upgrader`.
        compression: permessage-deflate settings (:class:`~epws.PerMessageDeflate`;
            offered by default, as browsers do), or None to offer nothing.
        proxy: a proxy URL (``http://``, ``https://``, ``socks5://``, ``socks5h://``,
            ``socks4://``, ``socks4a://``; credentials as user-info), True to take it
            from the environment as curl does (the default), or None for none.
        proxy_ssl: the TLS context for an ``https://`` proxy (default: the system's).
        max_redirects: how many 3xx answers with a Location are followed (0: none).
    """

    headers: Sequence[tuple[str, str]] = ()
    origin: str | None = None
    subprotocols: Sequence[str] = ()
    handshake_timeout: float = 10.0
    ssl: ssl_module.SSLContext | None = None
    read_limit: int | None = 1 << 20
    max_queue: int = 16
    write_limit: int = 64 * 1024
    close_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    ping_payload: bytes = KEEPALIVE_PAYLOAD
    compression: Any = field(default_factory=PerMessageDeflate)
    proxy: str | bool | None = True
    proxy_ssl: ssl_module.SSLContext | None = None
    max_redirects: int = 10

    def __post_init__(self) -> None:
        # A bad keepalive value fails here, at connect(), before any socket is opened.
        keepalive_settings(self.ping_interval, self.ping_timeout, self.ping_payload)

    async def dial(self, url: str, *, unix_path: str | None = None) -> Conn:
        """Connect to ``url`` (``ws://`` or ``wss://``) and return the open connection.

        With ``unix_path`` the connection goes to that Unix socket and ``url`` only
        gives the Host, the resource and whether to speak TLS; no proxy is used and a
        redirect is not followed (it would leave the socket).

        Raises:
            InvalidURI: the URL (or a redirect's Location) is not a WebSocket URL.
            HandshakeError: the server refused the upgrade (``status`` tells why,
                ``headers`` are the response's) or answered something that is not a
                valid upgrade; too many redirects, or one from wss:// to ws://.
            ProxyError: the proxy refused the tunnel (``status`` tells why).
            TimeoutError: the handshake took longer than ``handshake_timeout``.
            OSError: TCP or TLS failed (``ssl.SSLCertVerificationError`` included).
        """
        origin = _origin_of(url)
        headers = self.headers
        for _ in range(self.max_redirects + 1):
            outcome = await self._dial_once(url, unix_path, headers)
            if isinstance(outcome, Conn):
                return outcome
            if unix_path is not None:
                raise HandshakeError(
                    f"server redirected to {outcome!r}; not followed over a Unix socket", 300
                )
            logger.debug("redirected from %s to %s", url, outcome)
            url = outcome
            headers = redirect_headers(headers, origin, url)
        raise HandshakeError(f"more than {self.max_redirects} redirects, the last to {url}", 300)

    async def _dial_once(
        self, url: str, unix_path: str | None, headers: Sequence[tuple[str, str]]
    ) -> Conn | str:
        """One HTTP exchange: the open connection, or the URL a redirect points to."""
        secure, host, port, resource, host_header = parse_uri(url)
        context = None
        if secure:
            context = self.ssl if self.ssl is not None else ssl_module.create_default_context()
        loop = asyncio.get_running_loop()
        key = generate_key()
        offer = None
        if self.compression is not None:
            offer = self.compression.client_offer()
        request = build_request(
            host_header,
            resource,
            key,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extensions=offer,
            extra_headers=headers,
        )
        server_hostname = host if secure else None
        async with asyncio.timeout(self.handshake_timeout):
            transport: asyncio.Transport
            hs: _ClientHandshake
            if unix_path is not None:
                transport, hs = await loop.create_unix_connection(
                    lambda: _ClientHandshake(loop),
                    unix_path,
                    ssl=context,
                    server_hostname=server_hostname,
                )
            else:
                proxy = select_proxy(self.proxy, secure, host, port)
                if proxy is None:
                    transport, hs = await loop.create_connection(
                        lambda: _ClientHandshake(loop),
                        host,
                        port,
                        ssl=context,
                        server_hostname=server_hostname,
                    )
                else:
                    transport, hs = await open_via_proxy(
                        loop,
                        proxy,
                        host,
                        port,
                        lambda: _ClientHandshake(loop),
                        ssl=context,
                        server_hostname=server_hostname,
                        proxy_ssl=self.proxy_ssl,
                    )
            response: Response | None = None
            try:
                transport.write(request)
                response = await hs.response
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location is not None:
                    transport.abort()
                    return _redirect_target(url, secure, location, response.status)
                subprotocol = check_response(response, key, self.subprotocols)
                codec: MessageCodec | None = None
                if self.compression is not None:
                    codec = self.compression.client_accept(response)
                elif response.headers.get("Sec-WebSocket-Extensions"):
                    raise HandshakeError("server accepted an extension that was not offered", 101)
            except HandshakeError as exc:
                transport.abort()
                if response is not None and exc.status == response.status and not exc.headers:
                    # Retry-After and the like, for the caller (and the reconnect loop).
                    exc.headers = list(response.headers)
                raise
            except BaseException:
                transport.abort()
                raise
        protocol = Protocol(Side.CLIENT, max_size=self.read_limit, codec=codec)
        conn = Conn(
            protocol,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            close_timeout=self.close_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            ping_payload=self.ping_payload,
            subprotocol=subprotocol,
            response=response,
        )
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if hs.rest:
            conn.data_received(hs.rest)
        if hs.eof:
            conn.eof_received()
            transport.close()
        if hs.lost:
            # TCP went while the handshake protocol was still in place (a reset right
            # behind the 101): the transport will not tell the Conn, so we do.
            conn.connection_lost(hs.lost_exc)
        return conn


# Credentials a redirect to another origin must not carry (curl drops them too).
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _origin_of(url: str) -> tuple[bool, str, int]:
    secure, host, port, _, _ = parse_uri(url)
    return secure, host.lower(), port


def redirect_headers(
    headers: Sequence[tuple[str, str]], origin: tuple[bool, str, int], target: str
) -> Sequence[tuple[str, str]]:
    """The extra headers to send after a redirect to ``target``.

    Authorization and Cookie headers are meant for the origin they were given for
    (scheme, host, port of the URL first dialled): a redirect elsewhere drops them,
    so a server cannot collect a client's credentials by redirecting it.
    """
    if _origin_of(target) == origin:
        return headers
    return [(name, value) for name, value in headers if name.lower() not in _CREDENTIALS]


def _redirect_target(url: str, secure: bool, location: str, status: int) -> str:
    """The ws:// or wss:// URL a 3xx ``Location`` points to, relative ones resolved.

    ``urljoin`` only resolves relative references for schemes it knows, so the base
    is spelled http(s):// for the join; http(s) targets map to ws(s), as browsers do
    for a WebSocket redirect.
    """
    base = ("https" if secure else "http") + url[url.index(":") :]
    target = urllib.parse.urldefrag(urllib.parse.urljoin(base, location)).url
    scheme, _, rest = target.partition(":")
    mapped = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower())
    if mapped is None:
        raise InvalidURI(f"redirect to {location!r}, which is not a WebSocket or HTTP URL")
    if secure and mapped == "ws":
        raise HandshakeError(f"refusing a redirect from wss:// to ws:// ({location!r})", status)
    return f"{mapped}:{rest}"


@dataclass(slots=True, frozen=True)
class Backoff:
    """Delays between reconnection attempts: exponential, capped, with jitter.

    The n-th consecutive failure waits ``min(maximum, initial * factor ** (n - 1))``
    seconds, less a random share of up to ``jitter`` of it, so that clients dropped
    together by a restarting server do not come back in step. A server's
    ``Retry-After`` (on 429 or 503) lengthens the wait up to ``maximum``.
    ``max_attempts`` bounds consecutive failed attempts (None: keep trying).
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.5
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("need 0 <= initial <= maximum and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a share of the delay, between 0 and 1")

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (>= 1)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
        wait = base * (1 - self.jitter * random.random())
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.maximum))
        return wait


def is_transient(exc: BaseException) -> bool:
    """Whether a failed connection attempt is worth retrying later.

    Transient: refused, reset, unreachable and other OS errors, timeouts, a server
    that hung up or answered garbage (status 0), 5xx and 429 answers to the upgrade
    (or to a proxy's CONNECT). Final: a bad URL, TLS certificate verification, any
    other answer (4xx, a wrong 101, a failed negotiation), a missing optional library.
    """
    if isinstance(exc, ssl_module.SSLCertVerificationError | InvalidURI):
        return False
    if isinstance(exc, HandshakeError):
        return exc.status == 0 or exc.status == 429 or 500 <= exc.status < 600
    return isinstance(exc, OSError | TimeoutError)


def _retry_after(exc: BaseException) -> float | None:
    """A Retry-After given in seconds (the HTTP-date form is ignored)."""
    if not isinstance(exc, HandshakeError):
        return None
    for name, value in exc.headers:
        if name.lower() == "retry-after" and value.strip().isdigit():
            return float(value.strip())
    return None


def connect(url: str, *, backoff: Backoff | None = None, **options: Any) -> _Connect:
    """Open a WebSocket connection to ``url``; ``options`` are :class:`Dialer` fields.

    Three ways to use it::

        conn = await epws.connect(url)            # one connection

        async with epws.connect(url) as conn:     # one, closed on exit
            await conn.send("hello")

        async for conn in epws.connect(url):      # reconnecting
            try:
                async for message in conn:
                    ...
            except epws.ConnectionClosed:
                continue                          # the next round reconnects

    Reconnecting: each round yields a new open connection, closing the previous one
    if the loop body left it open. Failed attempts are retried after the delays of
    ``backoff`` when :func:`~epws.asyncio.client.is_transient` says so and raised
    otherwise; a connection that ended with 1012 (service restart) or 1013 (try again
    later) counts as a failure too, so the next attempt waits. Any other ended
    connection resets the count: the next attempt is immediate.
    """
    return _Connect(Dialer(**options), url, backoff or Backoff())


def unix_connect(
    path: str, uri: str = "ws://localhost/", *, backoff: Backoff | None = None, **options: Any
) -> _Connect:
    """Like :func:`connect`, over the Unix socket at ``path``.

    ``uri`` gives the Host header, the resource and ``ws``/``wss``; it is never
    resolved. No proxy is used and redirects are not followed.
    """
    return _Connect(Dialer(**options), uri, backoff or Backoff(), unix_path=path)


class _Connect:
    """What :func:`connect` returns: awaitable, async context manager, async iterator."""

    __slots__ = ("_backoff", "_conn", "_dialer", "_failures", "_unix_path", "_url")

    def __init__(
        self, dialer: Dialer, url: str, backoff: Backoff, *, unix_path: str | None = None
    ) -> None:
        self._dialer = dialer
        self._url = url
        self._backoff = backoff
        self._unix_path = unix_path
        self._conn: Conn | None = None
        self._failures = 0

    @property
    def dialer(self) -> Dialer:
        """The :class:`Dialer` built from the options."""
        return self._dialer

    def __await__(self) -> Any:
        return self._dialer.dial(self._url, unix_path=self._unix_path).__await__()

    async def __aenter__(self) -> Conn:
        self._conn = await self._dialer.dial(self._url, unix_path=self._unix_path)
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    def __aiter__(self) -> _Connect:
        return self

    async def __anext__(self) -> Conn:
        previous = self._conn
        if previous is not None:
            self._conn = None
            await previous.close()
            code = previous.close_code
            if code in _BACKOFF_CLOSES:
                self._failures += 1
                delay = self._backoff.delay(self._failures)
                logger.info("server closed with %s; reconnecting in %.2f s", code, delay)
                await asyncio.sleep(delay)
            else:
                self._failures = 0
        while True:
            try:
                conn = await self._dialer.dial(self._url, unix_path=self._unix_path)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failures += 1
                limit = self._backoff.max_attempts
                if limit is not None and self._failures >= limit:
                    raise
                delay = self._backoff.delay(self._failures, _retry_after(exc))
                logger.info(
                    "connecting to %s failed (%s); retrying in %.2f s", self._url, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            self._conn = conn
            return conn


class _ClientHandshake(asyncio.Protocol):
    """Reads the server's HTTP response to the upgrade request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.response: asyncio.Future[Response] = loop.create_future()
        self._parser: ResponseParser | None = ResponseParser()
        self.rest = b""
        self.eof = False
        self.lost = False
        self.lost_exc: Exception | None = None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.rest += data  # frames that raced the switch to Conn
            return
        try:
            response = parser.feed(data)
        except HandshakeError as exc:
            self._parser = None
            if not self.response.done():
                self.response.set_exception(exc)
            return
        if response is not None:
            self._parser = None
            self.rest = parser.rest
            if not self.response.done():
                self.response.set_result(response)

    def eof_received(self) -> bool | None:
        self.eof = True
        if not self.response.done():
            self.response.set_exception(
                HandshakeError("connection closed before the handshake response", 0)
            )
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.lost_exc = exc
        if not self.response.done():
            self.response.set_exception(
                HandshakeError(f"connection lost during the handshake: {exc}", 0)
            )
