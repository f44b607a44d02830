"""The opening handshake rules of RFC 6455 §4, both sides, without I/O.

What makes an HTTP/1.1 exchange (:mod:`epws.protocol.http11`) a WebSocket upgrade: the
key and its accept value, the checks of the client's request and of the server's
answer, the origin checks, subprotocol selection, and the two handshake messages. The
header grammar these rules read with is in :mod:`epws.protocol.headers`; extension
negotiation is in :mod:`epws.protocol.deflate`; URIs in :mod:`epws.protocol.uri`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import urllib.parse
from collections.abc import Iterable, Sequence

from epws.exceptions import HandshakeError, NegotiationError

from .headers import ascii_lower, list_has_token, parse_token_list, require_token
from .http11 import Headers, Request, Response, is_request_target, render_head

__all__ = [
    "GUID",
    "SWITCHING_PROTOCOLS",
    "accept_key",
    "build_request",
    "build_response",
    "check_origin_same",
    "check_request",
    "check_response",
    "generate_key",
    "is_upgrade_request",
    "origin_allowed",
    "response_fields",
    "select_subprotocol",
    "upgrade_required",
]

#: The magic string of RFC 6455 §1.3, appended to the key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2).

    SHA-1 proves only that the server read the key, it secures nothing; it is requested
    with ``usedforsecurity=False`` so FIPS-restricted interpreters still allow it.
    """
    digest = hashlib.sha1((key + GUID).encode("utf-8"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64-encoded (RFC 6455 §4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


# --------------------------------------------------------------------------- server side


def upgrade_required(message: str) -> HandshakeError:
    """The 426 Upgrade Required answer to a request that is not a usable upgrade.

    Its ``Upgrade`` and ``Sec-WebSocket-Version`` headers say what to ask for instead
    (RFC 7231 §6.5.15, RFC 6455 §4.2.2): the one copy of this rule, for the server's
    plain-HTTP requests and for upgrades that lack ``Upgrade`` or ``Connection``.
    """
    return HandshakeError(message, 426, [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])


def _has_token(headers: Headers, key: str, token: str) -> bool:
    return list_has_token(headers.field_values(key), token)


def _describe(values: Sequence[str]) -> str:
    return "missing" if not values else repr(", ".join(values))


def _connection_problem(headers: Headers) -> str | None:
    """Why ``Connection`` does not ask for the upgrade (RFC 6455 §4.1, §4.2.1), or None.

    Both sides need the ``upgrade`` token; they differ only in how they fail.
    """
    if _has_token(headers, "connection", "upgrade"):
        return None
    return (
        f"Connection header must include 'upgrade', got {_describe(headers.get_all('Connection'))}"
    )


def check_request(request: Request) -> str:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); return its key.

    Raises :class:`~epws.exceptions.HandshakeError` whose ``status`` and ``headers``
    form the HTTP answer: 405 (with ``Allow: GET``) for another method; 400 for a
    missing or repeated Host; 426 (with ``Upgrade`` and ``Sec-WebSocket-Version``) when
    Upgrade lacks ``websocket`` or Connection lacks ``upgrade``; 426 (with
    ``Sec-WebSocket-Version: 13``, §4.4) for another version; 400 for a missing,
    repeated or malformed Sec-WebSocket-Key.
    """
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError(
            f"WebSocket handshake must use GET, got {request.method}", 405, [("Allow", "GET")]
        )
    hosts = headers.field_values("host")
    if len(hosts) != 1:
        raise HandshakeError(
            "missing Host header" if not hosts else f"{len(hosts)} Host headers, expected one",
            400,
        )
    if not _has_token(headers, "upgrade", "websocket"):
        raise upgrade_required(
            f"Upgrade header must include 'websocket', got {_describe(headers.get_all('Upgrade'))}"
        )
    problem = _connection_problem(headers)
    if problem is not None:
        raise upgrade_required(problem)
    versions = headers.field_values("sec-websocket-version")
    if len(versions) != 1 or versions[0] != "13":
        raise HandshakeError(
            f"Sec-WebSocket-Version must be 13, got {_describe(versions)}",
            426,
            [("Sec-WebSocket-Version", "13")],
        )
    keys = headers.field_values("sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(
            "missing Sec-WebSocket-Key header"
            if not keys
            else f"{len(keys)} Sec-WebSocket-Key headers, expected one",
            400,
        )
    key = keys[0]
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(f"Sec-WebSocket-Key must be base64 of 16 bytes, got {key!r}", 400)
    return key


def is_upgrade_request(request: Request) -> bool:
    """Whether ``request`` asks for a WebSocket upgrade at all.

    This only looks at Upgrade, so a server can serve plain HTTP to other requests and
    still give a precise error (via :func:`check_request`) to a broken WebSocket one.
    """
    return _has_token(request.headers, "upgrade", "websocket")


def _single_origin(request: Request) -> tuple[bool, str | None]:
    """(ok, origin): ok is False when several Origin fields make the request ambiguous."""
    origins = request.headers.field_values("origin")
    if len(origins) > 1:
        return False, None
    return True, origins[0] if origins else None


def check_origin_same(request: Request) -> bool:
    """gorilla's default origin check: the Origin's host[:port] must equal Host.

    No Origin means a non-browser client, which cross-site protection does not concern,
    so it passes. ``null``, unparsable origins and several Origin fields fail. Ports are
    compared as written, like gorilla: ``http://a:80`` does not match ``Host: a``.
    """
    ok, origin = _single_origin(request)
    if not ok:
        return False
    if origin is None:
        return True
    host = request.headers.get("Host")
    if host is None or origin == "null":
        return False
    try:
        parts = urllib.parse.urlsplit(origin)
        _ = parts.port  # validates the port, raising ValueError when bad
    except ValueError:
        return False
    if not parts.scheme or not parts.netloc or "@" in parts.netloc:
        return False
    return ascii_lower(parts.netloc) == ascii_lower(host)


def origin_allowed(request: Request, allowed: Iterable[str]) -> bool:
    """Whether the Origin is absent or one of ``allowed`` (ASCII case-insensitive).

    Entries are full origins (``"https://example.com"``, ``"http://localhost:8080"``);
    ``"*"`` allows everything. Several Origin fields fail unless ``"*"`` is allowed.
    """
    allowed_set = {ascii_lower(entry) for entry in allowed}
    if "*" in allowed_set:
        return True
    ok, origin = _single_origin(request)
    if not ok:
        return False
    return origin is None or ascii_lower(origin) in allowed_set


def select_subprotocol(request: Request, supported: Sequence[str]) -> str | None:
    """The first subprotocol, in the client's order of preference, the server supports.

    The client lists its offers by preference (RFC 6455 §4.1), so its order wins.
    Names are compared exactly: subprotocol names are case-sensitive.
    """
    for offered in parse_token_list(request.headers.get_all("Sec-WebSocket-Protocol")):
        if offered in supported:
            return offered
    return None


#: The status line of every successful opening handshake.
SWITCHING_PROTOCOLS = "HTTP/1.1 101 Switching Protocols"


#: The 101 up to the accept value: the same for every handshake.
_101_HEAD = (
    f"{SWITCHING_PROTOCOLS}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
).encode("ascii")


def response_fields(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The header fields of the ``101`` answer to a request carrying ``key`` (§4.2.2),
    for a server that lets the application see or extend them before they are sent."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return headers


def build_response(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The ``101 Switching Protocols`` answer to a request carrying ``key`` (§4.2.2).

    Raises ValueError if any header value holds CR, LF, NUL or another control character.
    """
    # The same bytes as render_head(SWITCHING_PROTOCOLS, response_fields(...)), built
    # without checking the fixed fields and the accept value (base64) on every handshake:
    # only the optional ones can hold what must be refused.
    head = _101_HEAD + accept_key(key).encode("ascii")
    more: list[tuple[str, str]] = []
    if subprotocol is not None:
        more.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions is not None:
        more.append(("Sec-WebSocket-Extensions", extensions))
    more.extend(extra_headers)
    if not more:
        return head + b"\r\n\r\n"
    return head + render_head("", more)  # with no start line: CRLF, the fields, CRLF CRLF


# --------------------------------------------------------------------------- client side


def build_request(
    host: str,
    resource: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The client's upgrade request (RFC 6455 §4.1).

    ``host`` is the Host value as sent (port included when not the default, IPv6 in
    brackets; see :func:`~epws.protocol.uri.parse_uri`). Raises ValueError for a
    resource that is not visible ASCII, a subprotocol that is not a token, or a header
    value holding CR, LF, NUL or another control character.
    """
    if not is_request_target(resource):
        raise ValueError(f"resource must be non-empty visible ASCII, got {resource!r}")
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    if subprotocols:
        for subprotocol in subprotocols:
            require_token(subprotocol, "subprotocol")
        headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return render_head(f"GET {resource} HTTP/1.1", headers)


def check_response(response: Response, key: str, subprotocols: Sequence[str]) -> str | None:
    """Validate the server's answer (RFC 6455 §4.1); return the accepted subprotocol.

    Raises :class:`~epws.exceptions.HandshakeError` (``status`` = the response's) for a
    status other than 101, an Upgrade other than ``websocket`` (§4.1 wants exactly that
    value, case-insensitively), a Connection without ``upgrade``, or a missing, repeated
    or wrong Sec-WebSocket-Accept; :class:`~epws.exceptions.NegotiationError` for a
    subprotocol that was not offered, several of them, or one when none was offered.
    Extensions are left to the extension negotiation.
    """
    status = response.status
    headers = response.headers
    if status != 101:
        raise HandshakeError(
            f"server answered {status} {response.reason}, expected 101 Switching Protocols",
            status,
        )
    upgrades = parse_token_list(headers.get_all("Upgrade"))
    if [ascii_lower(u) for u in upgrades] != ["websocket"]:
        raise HandshakeError(
            f"Upgrade header must be 'websocket', got {_describe(headers.get_all('Upgrade'))}",
            status,
        )
    problem = _connection_problem(headers)
    if problem is not None:
        raise HandshakeError(problem, status)
    accepts = headers.get_all("Sec-WebSocket-Accept")
    expected = accept_key(key)
    if accepts != [expected]:
        raise HandshakeError(
            f"Sec-WebSocket-Accept must be {expected!r}, got {_describe(accepts)}", status
        )
    chosen = parse_token_list(headers.get_all("Sec-WebSocket-Protocol"))
    if not chosen:
        return None
    if len(chosen) > 1:
        raise NegotiationError(f"server selected several subprotocols: {chosen!r}", status)
    if not subprotocols:
        raise NegotiationError(
            f"server selected subprotocol {chosen[0]!r} but none was offered", status
        )
    if chosen[0] not in subprotocols:
        raise NegotiationError(
            f"server selected subprotocol {chosen[0]!r}, which was not offered "
            f"(offered: {list(subprotocols)!r})",
            status,
        )
    return chosen[0]
