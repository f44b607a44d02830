"""Reaching a WebSocket server through a proxy: which proxy, and the tunnel through it.

Which proxy: an explicit ``proxy=`` URL, or (``proxy=True``, the default) the one the
environment names, looked up as curl and websockets do: ``wss_proxy``, then
``https_proxy``, then ``all_proxy`` for ``wss://`` URLs; ``ws_proxy``, ``http_proxy``,
``all_proxy`` for ``ws://``; no proxy for hosts that ``no_proxy`` lists. ``proxy=None``
(or False) never uses one.

The tunnel: ``http://`` and ``https://`` proxies get an HTTP ``CONNECT`` (Basic auth
from the proxy URL's user-info), written here because it is twenty lines of HTTP that
the handshake parser already reads. SOCKS5 and SOCKS4 (``socks5://``, ``socks5h://``
for DNS at the proxy, ``socks4://``, ``socks4a://``) go through python-socks, an
optional dependency (``pip install 'epws[socks]'``): SOCKS is a binary protocol with
enough corners that a well-kept library beats a hand-written one.

Every refusal by a proxy is a :class:`~epws.exceptions.ProxyError` whose ``status`` is
HTTP-like (407: credentials missing or refused, 403: not allowed, 502/504: the proxy
could not reach the server), so a reconnecting client can tell transient from final.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl as ssl_module
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from ..exceptions import InvalidURI, ProxyError
from ..protocol.http11 import Headers, Response

__all__ = ["open_via_proxy", "select_proxy"]

_HTTP_SCHEMES = frozenset({"http", "https"})
_SOCKS_SCHEMES = frozenset({"socks5", "socks5h", "socks4", "socks4a"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
_DEFAULT_PORTS |= {"socks4": 1080, "socks4a": 1080}


def select_proxy(proxy: str | bool | None, secure: bool, host: str, port: int) -> str | None:
    """The proxy URL to use for a connection to ``host:port``, or None to go direct.

    ``proxy`` is the Dialer's option: a URL (used as given), True (look in the
    environment) or None/False (never a proxy).
    """
    if proxy is None or proxy is False:
        return None
    if isinstance(proxy, str):
        return proxy
    env = urllib.request.getproxies_environment()
    if _bypassed(env.get("no", ""), host, port):
        return None
    for scheme in ("wss", "https", "all") if secure else ("ws", "http", "all"):
        found = env.get(scheme)
        if found:
            return found
    return None


def _bypassed(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``no_proxy`` exempts ``host:port``, as curl reads it.

    Entries are comma-separated: ``*`` (everything), a host name or IP address, a
    domain (``example.com`` or ``.example.com``: itself and every subdomain), each
    optionally with ``:port``; IPv6 addresses may be bracketed.
    """
    host = host.lower().rstrip(".")
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if entry.startswith("["):  # [::1] or [::1]:8080
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".").rstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _parse_proxy(url: str) -> tuple[str, str, int, str | None, str | None]:
    """(scheme, host, port, user, password) of a proxy URL; bare "host:port" is http."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"proxy {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES and scheme not in _SOCKS_SCHEMES:
        raise InvalidURI(f"proxy {url!r}: scheme must be http, https, socks5(h) or socks4(a)")
    if not parts.hostname:
        raise InvalidURI(f"proxy {url!r} has no host")
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], user, password


async def open_via_proxy(
    loop: asyncio.AbstractEventLoop,
    proxy_url: str,
    host: str,
    port: int,
    protocol_factory: Callable[[], asyncio.Protocol],
    *,
    ssl: ssl_module.SSLContext | None,
    server_hostname: str | None,
    proxy_ssl: ssl_module.SSLContext | None = None,
) -> tuple[asyncio.Transport, Any]:
    """Open a transport to ``host:port`` through the proxy, TLS to the server on top.

    Returns ``(transport, protocol)`` like ``loop.create_connection``; the caller's
    timeout bounds the whole exchange.
    """
    scheme, phost, pport, user, password = _parse_proxy(proxy_url)
    if scheme in _SOCKS_SCHEMES:
        sock = await _socks_connect(scheme, phost, pport, user, password, host, port)
        try:
            return await loop.create_connection(
                protocol_factory, sock=sock, ssl=ssl, server_hostname=server_hostname
            )
        except BaseException:
            sock.close()
            raise
    context = None
    if scheme == "https":
        context = proxy_ssl if proxy_ssl is not None else ssl_module.create_default_context()
    try:
        transport, reply = await loop.create_connection(
            lambda: _ConnectReply(loop),
            phost,
            pport,
            ssl=context,
            server_hostname=phost if context else None,
        )
    except ssl_module.SSLError:
        raise
    except OSError as exc:
        # Keep the type (a down proxy is as transient as a down server) but say which
        # hop failed: "connect call failed" alone reads as if the server were down.
        message = f"proxy {_redact(proxy_url)} unreachable: {exc.strerror or exc}"
        if exc.errno is None:
            raise type(exc)(message) from exc
        raise type(exc)(exc.errno, message) from exc
    try:
        transport.write(_connect_request(host, port, user, password))
        response = await reply.response
        if not 200 <= response.status < 300:
            raise _refusal(response, proxy_url)
        if reply.rest:
            raise ProxyError("proxy sent data behind its answer to CONNECT", 502)
        protocol = protocol_factory()
        if ssl is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return transport, protocol
        tls = await loop.start_tls(transport, protocol, ssl, server_hostname=server_hostname)
        if tls is None:  # the loop's typing allows it; asyncio and uvloop never do it
            raise ProxyError("TLS through the proxy tunnel failed", 502)
        return tls, protocol
    except BaseException:
        transport.abort()
        raise


def _connect_request(host: str, port: int, user: str | None, password: str | None) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _refusal(response: Response, proxy_url: str) -> ProxyError:
    where = _redact(proxy_url)
    if response.status in (401, 407):  # 407 by RFC 9110 §15.5.8; tinyproxy says 401
        return ProxyError(
            f"proxy {where} wants authentication ({response.status} {response.reason}): "
            "give user:password in the proxy URL, or check them",
            407,
            headers=list(response.headers),
        )
    return ProxyError(
        f"proxy {where} answered {response.status} {response.reason} to CONNECT",
        response.status,
        headers=list(response.headers),
    )


def _redact(url: str) -> str:
    """The proxy URL without its password, for error messages and logs."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


# SOCKS reply codes (RFC 1928 §6; SOCKS4's 91-93) as the HTTP status a proxy would give.
_SOCKS_STATUS = {1: 502, 2: 403, 3: 502, 4: 502, 5: 502, 6: 504, 7: 501, 8: 501}
_SOCKS_STATUS |= {0x5B: 502, 0x5C: 407, 0x5D: 407}


async def _socks_connect(
    scheme: str,
    phost: str,
    pport: int,
    user: str | None,
    password: str | None,
    host: str,
    port: int,
) -> Any:
    try:
        from python_socks import ProxyError as SocksError, ProxyType
        from python_socks.async_.asyncio import Proxy
    except ImportError:
        raise ImportError(
            f"{scheme}:// proxies need python-socks: pip install 'epws[socks]'"
        ) from None
    kind = ProxyType.SOCKS5 if scheme.startswith("socks5") else ProxyType.SOCKS4
    proxy = Proxy(
        kind, phost, pport, username=user, password=password, rdns=scheme.endswith(("h", "a"))
    )
    try:
        # No timeout of its own: the caller's handshake_timeout bounds the whole dial.
        return await proxy.connect(host, port, timeout=1e9)
    except SocksError as exc:
        raise socks_refusal(exc, phost, pport) from None


def socks_refusal(exc: Any, phost: str, pport: int) -> ProxyError:
    """The ProxyError for a refusal from python-socks (asyncio and sync clients alike),
    with an HTTP-like status: 407 for authentication, the SOCKS reply code's mapping,
    else 502."""
    code = exc.error_code
    if code is None:
        status = 407 if "authentication" in str(exc).lower() else 502
    else:
        status = _SOCKS_STATUS.get(code, 502)
    return ProxyError(f"SOCKS proxy {phost}:{pport} refused: {exc}", status)


# A proxy's answer to CONNECT is a status line and a few headers; anything longer is
# not a proxy worth waiting for.
_MAX_REPLY = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?")


class _ConnectReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: a response head, HTTP/1.0 or 1.1.

    Not the handshake's ResponseParser: that one rightly refuses HTTP/1.0, which
    tinyproxy and others answer CONNECT with. The body of a refusal is never read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.response: asyncio.Future[Response] = loop.create_future()
        self._buf = bytearray()
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        if self.response.done():
            self.rest += data
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_REPLY:
                self._fail(f"proxy answer to CONNECT longer than {_MAX_REPLY} bytes")
            return
        head = bytes(self._buf[:end])
        self.rest = bytes(self._buf[end + 4 :])
        lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            self._fail(f"proxy answered CONNECT with {lines[0][:60]!r}")
            return
        headers = Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if colon and name and not name[-1:].isspace():
                headers.add(name.decode("latin-1"), value.strip().decode("latin-1"))
        reason = (match.group(2) or b"").decode("latin-1")
        self.response.set_result(Response(int(match.group(1)), reason, headers))

    def eof_received(self) -> bool | None:
        self._fail("proxy closed the connection before answering CONNECT")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"proxy connection lost before its answer to CONNECT: {exc}")

    def _fail(self, message: str) -> None:
        if not self.response.done():
            self.response.set_exception(ProxyError(message, 502))
