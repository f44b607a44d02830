"""The blocking client: the sans-I/O core over a plain socket.

The caller's thread does all the reading: :meth:`ClientConnection.recv` reads from
the socket only until the next message is complete, feeding the bytes to the
protocol core and writing what it answers (pongs, the close reply). Nothing reads
while the application does not, so the socket's receive buffer and the peer's TCP
window are the backpressure, and what the client holds is bounded by the core's
read limit plus one read (64 KiB) of parsed messages.

Any thread may :meth:`~ClientConnection.send` while another waits in ``recv``: one
lock serializes the core and the socket writes (never held while blocked reading).
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Iterator, Sequence
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
from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    ProxyError,
)
from ..protocol import Close, Failure, MessageCodec, Pong, Protocol, Side
from ..protocol.deflate import PerMessageDeflate
from ..protocol.handshake import build_request, check_response, generate_key
from ..protocol.http11 import Headers, Response, ResponseParser
from ..protocol.uri import parse_uri

__all__ = ["ClientConnection", "connect", "unix_connect"]

_READ_SIZE = 65536
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_OK_CODES = frozenset({1000, 1001, 1005})
_DEFAULT_COMPRESSION: Any = object()


class ClientConnection:
    """An open WebSocket connection, client side, blocking.

    Attributes:
        response: the server's answer to the opening handshake.
        subprotocol: the negotiated subprotocol, or None.
        close_timeout: seconds :meth:`close` waits for the server to finish.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        response: Response,
        subprotocol: str | None,
        rest: bytes,
        close_timeout: float,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
    ) -> None:
        self.socket = sock
        self.response = response
        self.subprotocol = subprotocol
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_interval if ping_timeout is None else ping_timeout
        #: The last round trip measured by a ping (``ping()`` or keepalive), in seconds.
        self.latency: float | None = None
        self._protocol = protocol
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        self._messages: collections.deque[str | bytes] = collections.deque()
        # Pings waiting for their pong: payload -> when sent, then when answered.
        # Only payloads we sent are recorded, so unsolicited pongs cost nothing.
        self._pings: dict[bytes, float] = {}
        self._pongs: dict[bytes, float] = {}
        self._keepalive: bytes | None = None
        self._last_read = time.monotonic()
        self._eof = False
        self._closed = False
        if rest:
            self._feed(rest)

    # ------------------------------------------------------------ state

    @property
    def close_code(self) -> int | None:
        """The close code received, or 1006 if none came; None while open."""
        rcvd = self._protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        return 1006 if self._closed else None

    def _closed_error(self) -> ConnectionClosed:
        protocol = self._protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        code = rcvd.code if rcvd is not None else None
        ok = code in _OK_CODES and not protocol.failed
        cls = ConnectionClosedOK if ok else ConnectionClosedError
        return cls(
            code,
            rcvd.reason if rcvd is not None else "",
            sent[0] if sent is not None else None,
            sent[1] if sent is not None else "",
        )

    # ------------------------------------------------------------ reading

    def _feed(self, data: bytes) -> None:
        """Hand bytes (b"": EOF) to the core; queue messages, answer what needs it."""
        with self._lock:
            protocol = self._protocol
            if data:
                events = protocol.receive_data(data)
            else:
                self._eof = True
                protocol.receive_eof()
                events = []
            out = protocol.data_to_send()
            for ev in events:
                kind = type(ev)
                if kind is str or kind is bytes:
                    self._messages.append(ev)  # type: ignore[arg-type]
                elif kind is Pong:
                    sent = self._pings.pop(ev.payload, None)  # type: ignore[union-attr]
                    if sent is not None:
                        now = time.monotonic()
                        self.latency = now - sent
                        self._pongs[ev.payload] = now  # type: ignore[union-attr]
                elif kind is Close:
                    out += protocol.close_reply()
                elif kind is Failure:
                    out += protocol.fail(ev.code, str(ev.error))  # type: ignore[union-attr]
            if out:
                self._send_raw(out)
        # TCP goes when the server closes it (RFC 6455 §7.1.1), or at once if we failed.
        if self._eof or protocol.failed:
            self._shut()

    def _send_raw(self, data: bytes) -> None:
        try:
            self.socket.sendall(data)
        except OSError:
            self._eof = True  # the peer is gone; reading will see it too

    def _read_once(self, deadline: float | None) -> None:
        """One read from the socket, fed to the core; TimeoutError past ``deadline``."""
        if deadline is None:
            self.socket.settimeout(None)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for a message")
            self.socket.settimeout(remaining)
        try:
            data = self.socket.recv(_READ_SIZE)
        except TimeoutError:
            raise TimeoutError("timed out waiting for a message") from None
        except OSError:
            data = b""
        self._last_read = time.monotonic()
        self._feed(data)

    def _keepalive_due(self) -> float | None:
        """Ping when the peer has been quiet for ping_interval; fail when the pong is
        later than ping_timeout. Returns when to look again (None: no keepalive).

        Runs only while the application waits in recv(): a blocking client has no
        thread to do it otherwise (and needs none: a script that does not read does
        not care whether the peer is alive until it reads again).
        """
        interval = self.ping_interval
        if not interval:
            return None
        now = time.monotonic()
        payload = self._keepalive
        if payload is not None and payload not in self._pings:
            self._pongs.pop(payload, None)
            self._keepalive = payload = None  # answered
        if payload is None:
            if now - self._last_read < interval:
                return self._last_read + interval
            payload = os.urandom(4)
            with self._lock:
                if self._protocol.close_sent is not None or self._eof:
                    return None
                self._pings[payload] = now
                self._send_raw(self._protocol.send_ping(payload))
            self._keepalive = payload
            return now + (self.ping_timeout or interval)
        due = self._pings[payload] + (self.ping_timeout or interval)
        if now < due:
            return due
        with self._lock:
            self._send_raw(self._protocol.fail(1011, "keepalive ping timeout"))
        self._shut()
        return None

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            TimeoutError: no message within ``timeout`` seconds (the connection
                stays usable; a partial message read so far is kept).
            ConnectionClosed: the connection is closed (cleanly: ConnectionClosedOK).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._reading:
            while True:
                if self._messages:
                    return self._messages.popleft()
                if self._closed or self._eof or self._protocol.close_rcvd is not None:
                    self._finish(deadline)
                    raise self._closed_error()
                wake = self._keepalive_due()
                if self._closed:
                    continue  # the keepalive failed the connection
                if wake is None or (deadline is not None and deadline <= wake):
                    self._read_once(deadline)
                    continue
                try:
                    self._read_once(wake)
                except TimeoutError:
                    continue  # time for the keepalive, not the caller's deadline

    def __iter__(self) -> Iterator[str | bytes]:
        """Messages until the connection closes; a clean close ends the loop quietly."""
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    # ------------------------------------------------------------ writing

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary message; raises ConnectionClosed once closing."""
        with self._lock:
            if self._protocol.close_sent is not None or self._eof:
                raise self._closed_error()
            if isinstance(message, str):
                frame = self._protocol.send_text(message)
            else:
                frame = self._protocol.send_binary(message)
            self.socket.sendall(frame)

    def ping(self, data: bytes = b"", timeout: float | None = 10.0) -> float:
        """Send a ping and read until its pong comes; return the round trip in seconds.

        Messages that arrive meanwhile are kept for :meth:`recv`.
        """
        with self._lock:
            if self._protocol.close_sent is not None or self._eof:
                raise self._closed_error()
            self._pongs.pop(data, None)
            sent = time.monotonic()
            self._pings[data] = sent
            self.socket.sendall(self._protocol.send_ping(data))
        deadline = None if timeout is None else sent + timeout
        try:
            with self._reading:
                while data not in self._pongs:
                    if self._closed or self._eof or self._protocol.close_rcvd is not None:
                        raise self._closed_error()
                    self._read_once(deadline)
            return self._pongs[data] - sent
        finally:
            self._pings.pop(data, None)
            self._pongs.pop(data, None)

    # ------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (at most :attr:`close_timeout` seconds), then
        close the socket. Messages that arrive after our close frame are dropped.
        Safe to call more than once.
        """
        with self._lock:
            if self._closed:
                return
            frame = self._protocol.send_close(code, reason)
            if frame:
                self._send_raw(frame)
        with self._reading:
            self._finish(time.monotonic() + self.close_timeout)

    def _finish(self, deadline: float | None) -> None:
        """Read until the server closes TCP (RFC 6455 §7.1.1), or the deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.close_timeout
        try:
            while not self._closed and not self._eof:
                self._read_once(deadline)
        except TimeoutError:
            pass
        self._shut()

    def _shut(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.socket.close()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------- opening


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
