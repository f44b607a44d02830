"""The HTTP side of the ASGI WebSocket spec: the scope of a request, a denial response.

What :class:`~epws.asgi.WebSocketProtocol` needs before there is a WebSocket: the
``websocket`` scope built from the parsed request head and the transport, ASGI's
byte-pair headers as the str pairs epws's builders take, uvicorn's default headers,
and the bytes of a denial response (the ``websocket.http.response`` extension):
its head once the first body message says how the body is framed, then the body,
chunked when more follows and no ``Content-Length`` was given. None of it runs
per WebSocket message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from ..protocol.headers import parse_token_list
from ..protocol.http11 import Request, build_http_response
from .interface import Scope

__all__ = ["denial_bytes", "merge_default", "str_headers", "websocket_scope"]


def _address(transport: asyncio.BaseTransport, name: str) -> tuple[str, int | None] | None:
    info = transport.get_extra_info(name)
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    if isinstance(info, str) and name == "sockname":
        return (info, None)  # a unix socket's path (ASGI: [path, None])
    return None


def str_headers(items: Iterable[tuple[bytes, bytes]], what: str) -> list[tuple[str, str]]:
    """ASGI headers (byte pairs) as the str pairs epws's builders take, checked."""
    out: list[tuple[str, str]] = []
    for item in items:
        name, value = item
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"{what} headers must be pairs of bytes, got {item!r}")
        out.append((name.decode("latin-1"), value.decode("latin-1")))
    return out


def merge_default(
    defaults: list[tuple[bytes, bytes]], given: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """uvicorn's ``server``/``date`` headers first, unless the app gives its own."""
    names = {name.lower() for name, _ in given}
    out = [
        (n.decode("latin-1"), v.decode("latin-1"))
        for n, v in defaults
        if n.decode("latin-1").lower() not in names
    ]
    return out + given


def websocket_scope(
    request: Request,
    transport: asyncio.BaseTransport,
    *,
    root_path: str,
    asgi_version: str,
    app_state: dict[str, Any],
) -> Scope:
    """The ``websocket`` connection scope (ASGI spec 2.5) of an upgrade request."""
    raw_path, _, query = request.target.partition("?")
    headers = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in request.headers]
    return {
        "type": "websocket",
        "asgi": {"version": asgi_version, "spec_version": "2.5"},
        "http_version": "1.1",
        "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
        "server": _address(transport, "sockname"),
        "client": _address(transport, "peername"),
        "root_path": root_path,
        "path": root_path + unquote(raw_path),
        "raw_path": root_path.encode("ascii") + raw_path.encode("ascii"),
        "query_string": query.encode("ascii"),
        "headers": headers,
        "subprotocols": parse_token_list(request.headers.get_all("Sec-WebSocket-Protocol")),
        "state": app_state.copy(),
        "extensions": {"websocket.http.response": {}},
    }


def denial_bytes(
    head: tuple[int, list[tuple[str, str]]] | None,
    chunked: bool,
    body: bytes,
    more: bool,
    defaults: list[tuple[bytes, bytes]],
) -> tuple[list[bytes], bool]:
    """The bytes to write for one ``websocket.http.response.body`` message.

    ``head`` is the status and headers of ``websocket.http.response.start`` until
    they are written (the first body message), then None; ``chunked`` says whether
    the body goes chunked. Returns the bytes and the new ``chunked``.
    """
    out: list[bytes] = []
    if head is not None:
        status, given = head
        framing = {"content-length", "transfer-encoding", "connection"}
        has_length = any(n.lower() == "content-length" for n, _ in given)
        content_type = next(
            (v for n, v in given if n.lower() == "content-type"), "text/plain; charset=utf-8"
        )
        kept = [(n, v) for n, v in given if n.lower() not in framing | {"content-type"}]
        if more and not has_length:
            chunked = True
            kept.append(("Transfer-Encoding", "chunked"))
        elif more:
            kept += [(n, v) for n, v in given if n.lower() == "content-length"]
        data = build_http_response(
            status,
            body=b"" if more else body,
            content_type=content_type,
            headers=merge_default(defaults, kept),
        )
        if more:
            # build_http_response framed an empty body; the real framing is kept.
            data = data.replace(b"Content-Length: 0\r\n", b"", 1)
        out.append(data)
        if not more:
            body = b""
    if chunked:
        if body:
            out.append(b"%x\r\n%s\r\n" % (len(body), body))
        if not more:
            out.append(b"0\r\n\r\n")
    elif body:
        out.append(body)
    return out, chunked
