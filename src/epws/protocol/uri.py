"""WebSocket URIs (RFC 6455 §3): what a client may connect to, and what it then sends.

Parsing only, without I/O: :func:`parse_uri` turns ``ws://`` and ``wss://`` URLs into
what the client needs to open TCP (host, port, TLS or not) and to write its request
(the resource and the Host header), and refuses what RFC 6455 or safety forbid.
"""

from __future__ import annotations

import urllib.parse

from epws.exceptions import InvalidURI

__all__ = ["parse_uri"]

_DEFAULT_PORTS = {"ws": 80, "wss": 443}
# Percent-encode non-ASCII in path and query as UTF-8, leaving what is already legal.
_URI_SAFE = "!$%&'()*+,/:;=?@~[]-._"


def parse_uri(uri: str) -> tuple[bool, str, int, str, str]:
    """Split a ws:// or wss:// URI into (secure, host, port, resource, host_header).

    ``host`` is bare (IPv6 without brackets, ready for connecting); ``host_header`` is
    the Host value to send: brackets around IPv6, port only when not the default.
    ``resource`` is the path ("/" when empty) plus "?query". Raises
    :class:`~epws.exceptions.InvalidURI` for another scheme, a missing host, user-info
    (credentials in a URL leak into logs) or a fragment (RFC 6455 §3 forbids it).
    """
    # urlsplit silently drops tabs and newlines; refuse them instead of guessing.
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in uri):
        raise InvalidURI(f"{uri!r} contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURI(f"{uri!r} is not a ws:// or wss:// URI")
    if "#" in uri:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs cannot have")
    if "@" in parts.netloc:
        raise InvalidURI(f"{uri!r} has user-info, which is not supported")
    host = parts.hostname
    if not host:
        raise InvalidURI(f"{uri!r} has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURI(f"{uri!r} has an invalid host: {exc}") from None
    if port == 0:
        raise InvalidURI(f"{uri!r} has port 0")
    default = _DEFAULT_PORTS[scheme]
    port = default if port is None else port
    resource = urllib.parse.quote(parts.path or "/", safe=_URI_SAFE)
    if parts.query:
        resource += "?" + urllib.parse.quote(parts.query, safe=_URI_SAFE)
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header += f":{port}"
    return scheme == "wss", host, port, resource, host_header
