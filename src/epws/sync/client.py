"""Opening the blocking client's connection: the socket, proxies, TLS, the handshake.

:func:`connect` turns a URL into an open
:class:`~epws.sync.connection.ClientConnection` (the reading and writing are in
:mod:`epws.sync.connection`): a TCP or Unix socket, tunnelled through an HTTP
CONNECT or SOCKS proxy if one applies, TLS for ``wss://``, the opening handshake
with a deadline over all of it, and redirects followed with the asyncio client's
rules (:mod:`epws.asyncio.client`, :mod:`epws.asyncio.proxy`).
"""

from __future__ import annotations

import socket
import ssl as ssl_module
import time
from collections.abc import Sequence
from typing import Any

# The same redirect rules as the asyncio client.
from ..asyncio.client import _origin_of, _redirect_target, redirect_headers
from ..asyncio.proxy import (
    _MAX_REPLY,
    _STATUS_LINE,
    _connect_request,
    _parse_proxy,
    _redact,
    select_proxy,
    socks_refusal,
)
from ..exceptions import HandshakeError, ProxyError
from ..protocol import MessageCodec, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import build_request, check_response, generate_key
from ..protocol.http11 import Headers, Response, ResponseParser
from ..protocol.uri import parse_uri
from .connection import _READ_SIZE, ClientConnection

__all__ = ["ClientConnection", "connect", "unix_connect"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_COMPRESSION: Any = object()


def connect(
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    open_timeout: float = 10.0,
    ssl: ssl_module.SSLContext | None = None,
    read_limit: int | None = 1 << 20,
    close_timeout: float = 10.0,
    compression: Any = _DEFAULT_COMPRESSION,
    proxy: str | bool | None = True,
    proxy_ssl: ssl_module.SSLContext | None = None,
    max_redirects: int = 10,
    unix_path: str | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
) -> ClientConnection:
    """Open a WebSocket connection and return it, blocking.

    The options mean what they mean on :class:`epws.Dialer` (``open_timeout`` is its
    ``handshake_timeout``); proxies (HTTP CONNECT, and SOCKS with python-socks),
    redirects and the limits are the same.

    Keepalive (off by default): with ``ping_interval``, a :meth:`~ClientConnection.recv`
    that has seen nothing from the server for that long sends a ping, and fails the
    connection with 1011 when the pong is ``ping_timeout`` (default: the interval)
    late; :attr:`ClientConnection.latency` is the last round trip.

    Raises what :meth:`epws.Dialer.dial` raises.
    """
    if compression is _DEFAULT_COMPRESSION:
        compression = PerMessageDeflate()
    first = _origin_of(url)
    for _ in range(max_redirects + 1):
        outcome = _open_once(
            url,
            headers=headers,
            origin=origin,
            subprotocols=subprotocols,
            timeout=open_timeout,
            ssl=ssl,
            read_limit=read_limit,
            close_timeout=close_timeout,
            compression=compression,
            proxy=proxy,
            proxy_ssl=proxy_ssl,
            unix_path=unix_path,
        )
        if isinstance(outcome, ClientConnection):
            outcome.ping_interval = ping_interval
            outcome.ping_timeout = ping_interval if ping_timeout is None else ping_timeout
            return outcome
        if unix_path is not None:
            raise HandshakeError(
                f"server redirected to {outcome!r}; not followed over a Unix socket", 300
            )
        url = outcome
        headers = redirect_headers(headers, first, url)
    raise HandshakeError(f"more than {max_redirects} redirects, the last to {url}", 300)


def unix_connect(path: str, uri: str = "ws://localhost/", **options: Any) -> ClientConnection:
    """Like :func:`connect`, over the Unix socket at ``path`` (``uri`` is not resolved)."""
    return connect(uri, unix_path=path, **options)


def _open_once(
    url: str,
    *,
    headers: Sequence[tuple[str, str]],
    origin: str | None,
    subprotocols: Sequence[str],
    timeout: float,
    ssl: ssl_module.SSLContext | None,
    read_limit: int | None,
    close_timeout: float,
    compression: Any,
    proxy: str | bool | None,
    proxy_ssl: ssl_module.SSLContext | None,
    unix_path: str | None,
) -> ClientConnection | str:
    secure, host, port, resource, host_header = parse_uri(url)
    deadline = time.monotonic() + timeout
    key = generate_key()
    offer = compression.client_offer() if compression is not None else None
    request = build_request(
        host_header,
        resource,
        key,
        origin=origin,
        subprotocols=subprotocols,
        extensions=offer,
        extra_headers=headers,
    )
    sock = _open_socket(
        host, port, deadline, proxy if unix_path is None else None, proxy_ssl, secure, unix_path
    )
    try:
        if secure:
            context = ssl if ssl is not None else ssl_module.create_default_context()
            sock.settimeout(_left(deadline))
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        response, rest = _read_head(sock, deadline, ResponseParser())
        location = response.headers.get("Location")
        if response.status in _REDIRECTS and location is not None:
            sock.close()
            return _redirect_target(url, secure, location, response.status)
        try:
            subprotocol = check_response(response, key, subprotocols)
            codec: MessageCodec | None = None
            if compression is not None:
                codec = compression.client_accept(response)
            elif response.headers.get("Sec-WebSocket-Extensions"):
                raise HandshakeError("server accepted an extension that was not offered", 101)
        except HandshakeError as exc:
            if exc.status == response.status and not exc.headers:
                exc.headers = list(response.headers)
            raise
    except BaseException:
        sock.close()
        raise
    protocol = Protocol(Side.CLIENT, max_size=read_limit, codec=codec)
    return ClientConnection(sock, protocol, response, subprotocol, rest, close_timeout)


def _left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the opening handshake timed out")
    return remaining


def _open_socket(
    host: str,
    port: int,
    deadline: float,
    proxy: str | bool | None,
    proxy_ssl: ssl_module.SSLContext | None,
    secure: bool,
    unix_path: str | None,
) -> socket.socket:
    """A connected socket to the server: direct, over a Unix socket, or tunnelled."""
    if unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_left(deadline))
            sock.connect(unix_path)
        except BaseException:
            sock.close()
            raise
        return sock
    proxy_url = select_proxy(proxy, secure, host, port)
    if proxy_url is None:
        return socket.create_connection((host, port), timeout=_left(deadline))
    scheme, phost, pport, user, password = _parse_proxy(proxy_url)
    if scheme.startswith("socks"):
        return _socks(scheme, phost, pport, user, password, host, port, deadline)
    try:
        sock = socket.create_connection((phost, pport), timeout=_left(deadline))
    except ssl_module.SSLError:
        raise
    except OSError as exc:
        message = f"proxy {_redact(proxy_url)} unreachable: {exc.strerror or exc}"
        if exc.errno is None:
            raise type(exc)(message) from exc
        raise type(exc)(exc.errno, message) from exc
    try:
        if scheme == "https":
            context = proxy_ssl if proxy_ssl is not None else ssl_module.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=phost)
        sock.sendall(_connect_request(host, port, user, password))
        response = _read_connect_reply(sock, deadline)
        if response.status in (401, 407):
            raise ProxyError(
                f"proxy {_redact(proxy_url)} wants authentication "
                f"({response.status} {response.reason})",
                response.status,
            )
        if not 200 <= response.status < 300:
            raise ProxyError(
                f"proxy {_redact(proxy_url)} answered {response.status} {response.reason} "
                "to CONNECT",
                response.status,
            )
    except BaseException:
        sock.close()
        raise
    if isinstance(sock, ssl_module.SSLSocket) and secure:
        # TLS to the server inside TLS to the proxy: the ssl module cannot wrap an
        # SSLSocket, so this one case is refused rather than half done.
        sock.close()
        raise ProxyError("wss:// through an https:// proxy needs the asyncio client", 501)
    return sock


def _read_connect_reply(sock: socket.socket, deadline: float) -> Response:
    """The proxy's answer to CONNECT, read byte by byte so nothing after it is taken."""
    buf = bytearray()
    while not buf.endswith(b"\r\n\r\n"):
        if len(buf) > _MAX_REPLY:
            raise ProxyError("proxy answer to CONNECT is too long", 502)
        sock.settimeout(_left(deadline))
        byte = sock.recv(1)
        if not byte:
            raise ProxyError("proxy closed the connection before answering CONNECT", 502)
        buf += byte
    lines = bytes(buf[:-4]).split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise ProxyError(f"proxy answered CONNECT with {lines[0][:60]!r}", 502)
    fields = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name:
            fields.add(name.decode("latin-1"), value.strip().decode("latin-1"))
    return Response(int(match.group(1)), (match.group(2) or b"").decode("latin-1"), fields)


def _socks(
    scheme: str,
    phost: str,
    pport: int,
    user: str | None,
    password: str | None,
    host: str,
    port: int,
    deadline: float,
) -> socket.socket:
    try:
        from python_socks import ProxyError as SocksError, ProxyType
        from python_socks.sync import Proxy
    except ImportError:
        raise ImportError(
            f"{scheme}:// proxies need python-socks: pip install 'epws[socks]'"
        ) from None
    kind = ProxyType.SOCKS5 if scheme.startswith("socks5") else ProxyType.SOCKS4
    proxy = Proxy(
        kind, phost, pport, username=user, password=password, rdns=scheme.endswith(("h", "a"))
    )
    try:
        sock: socket.socket = proxy.connect(host, port, timeout=_left(deadline))
    except SocksError as exc:
        raise socks_refusal(exc, phost, pport) from None
    return sock


def _read_head(
    sock: socket.socket, deadline: float, parser: ResponseParser
) -> tuple[Response, bytes]:
    """Read the response head with the bounded parser; the bytes behind it too."""
    while True:
        sock.settimeout(_left(deadline))
        data = sock.recv(_READ_SIZE)
        if not data:
            raise HandshakeError("connection closed before the handshake response", 0)
        response = parser.feed(data)
        if response is not None:
            return response, parser.rest
