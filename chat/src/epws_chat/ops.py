"""The operator's port (``--ops-addr``): the server API, ``/metrics``, health.

Why a port of its own: these routes are for a backend and for Prometheus, not for
browsers, so they belong on an address the public cannot reach (a private
interface, a pod-local port), as Centrifugo's internal port; and the API takes JSON
bodies, which the WebSocket port's request hook (heads only) never reads.

Routes (JSON in and out; every error is ``{"error": text}`` with its status):

* ``POST /api/rooms/{room}/messages`` ``{"text": ..., "name": ...}``: publish (202);
* ``GET /api/rooms/{room}/history?after=ID&limit=N``: the room's history;
* ``GET /api/rooms/{room}/presence``: its members, with connection counts;
* ``GET /api/stats``: the server's figures;
* ``GET /metrics``: Prometheus' text format (no key: scrapers are configured with
  the address, and the address is private);
* ``GET /healthz`` (the process answers) and ``GET /readyz`` (the broker is
  connected and the server accepts connections), also on the public port.

The ``/api`` routes need ``Authorization: Bearer KEY`` (``--api-key``; 401 without
it, 404 for every ``/api`` route when no key is configured).

The HTTP here is the smallest that curl, Prometheus and load balancers need: one
request per connection (``Connection: close``), a head of at most 16 KiB, a body of
at most 64 KiB given by ``Content-Length``, 10 s to send it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .brokers import BrokerError, message_id_key

__all__ = ["MAX_BODY", "OpsResponse", "Request", "read_request", "serve_ops"]

logger = logging.getLogger("epws_chat.ops")

#: Largest request body accepted, in bytes.
MAX_BODY = 64 * 1024
_MAX_HEAD = 16 * 1024
_TIMEOUT = 10.0

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    """One request to the ops port."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class OpsResponse:
    """An answer: status, body, content type, extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls, status: int, value: Any, headers: list[tuple[str, str]] | None = None
    ) -> OpsResponse:
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"
        return cls(status, data.encode(), headers=headers or [])

    def serialize(self) -> bytes:
        head = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


def error(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> OpsResponse:
    return OpsResponse.json(status, {"error": text}, headers)


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


async def read_request(reader: asyncio.StreamReader) -> Request:
    """One request's head and body; _BadRequest for what this server does not take."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _BadRequest(400, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise _BadRequest(400, "chunked bodies are not accepted: send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _BadRequest(400, "bad Content-Length") from None
    if length < 0:
        raise _BadRequest(400, "bad Content-Length")
    if length > MAX_BODY:
        raise _BadRequest(413, f"the body is limited to {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    path, _, query = target.partition("?")
    return Request(
        method,
        urllib.parse.unquote(path),
        urllib.parse.parse_qs(query, keep_blank_values=True),
        headers,
        body,
    )


Handler = Callable[[Request], Awaitable[OpsResponse]]


async def serve_ops(handler: Handler, host: str | None, port: int) -> asyncio.Server:
    """Listen for ops requests; each is answered by ``handler`` and the connection closed."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_TIMEOUT):
                    request = await read_request(reader)
                response = await handler(request)
            except _BadRequest as exc:
                response = error(exc.status, str(exc))
            except TimeoutError:
                response = error(408, "the request took too long")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception:
                logger.exception("ops request failed")
                response = error(500, "internal error")
            writer.write(response.serialize())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_connection, host, port, limit=_MAX_HEAD)


# ------------------------------------------------------------------ the routes


@dataclass(slots=True)
class Routes:
    """The ops routes of one chat process.

    Attributes:
        api_key: the ``/api`` key (None: the API is off).
        publish: ``(room, name, text) -> awaitable error text or None``.
        history: ``(room, after, limit) -> (messages, complete)``.
        presence: ``room -> awaitable {name: connections}``.
        stats: the figures of ``GET /api/stats``.
        metrics: the exposition of ``GET /metrics`` (None: ``--metrics off``).
        ready: why the process is not ready ("" when it is).
        clean_room: the room rule (ValueError for a bad name).
    """

    api_key: str | None
    publish: Callable[[str, str, str], Awaitable[str | None]]
    history: Callable[[str, str | None, int], Awaitable[tuple[list[dict[str, Any]], bool]]]
    presence: Callable[[str], Awaitable[dict[str, int]]]
    stats: Callable[[], Awaitable[dict[str, Any]]]
    metrics: Callable[[], Awaitable[bytes]] | None
    ready: Callable[[], str]
    clean_room: Callable[[str], str]

    async def __call__(self, request: Request) -> OpsResponse:
        path = request.path
        if path == "/healthz":
            return OpsResponse.json(200, {"status": "ok"})
        if path == "/readyz":
            why = self.ready()
            return (
                OpsResponse.json(503, {"status": why})
                if why
                else OpsResponse.json(200, {"status": "ready"})
            )
        if path == "/metrics":
            if self.metrics is None:
                return error(404, "metrics are off (--metrics off)")
            return OpsResponse(
                200, await self.metrics(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if path == "/api" or path.startswith("/api/"):
            return await self._api(request)
        return error(404, "not found")

    async def _api(self, request: Request) -> OpsResponse:
        if self.api_key is None:
            return error(404, "the server API is off: start the chat with --api-key")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self.api_key.encode()
        ):
            return error(
                401,
                "send Authorization: Bearer <the --api-key>",
                [("WWW-Authenticate", 'Bearer realm="epws-chat api"')],
            )
        path = request.path
        if path == "/api/stats":
            return _only(request, "GET") or OpsResponse.json(200, await self.stats())
        prefix = "/api/rooms/"
        if not path.startswith(prefix) or "/" not in path[len(prefix) :]:
            return error(404, "not found")
        room, _, action = path[len(prefix) :].rpartition("/")
        try:
            room = self.clean_room(room)
        except ValueError as exc:
            return error(400, str(exc))
        if action == "messages":
            return _only(request, "POST") or await self._post(request, room)
        if action == "history":
            return _only(request, "GET") or await self._history(request, room)
        if action == "presence":
            if refused := _only(request, "GET"):
                return refused
            try:
                members = await self.presence(room)
            except BrokerError as exc:
                return error(503, f"presence unavailable: {exc}")
            return OpsResponse.json(200, {"room": room, "members": members})
        return error(404, "not found")

    async def _post(self, request: Request, room: str) -> OpsResponse:
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind != "application/json":
            return error(415, "send the message as application/json")
        try:
            value = json.loads(request.body)
        except ValueError:
            return error(400, 'the body is not JSON: want {"text": "...", "name": "..."}')
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return error(400, 'want {"text": "...", "name": "..."} ("text" a string)')
        name = value.get("name", "")
        if not isinstance(name, str):
            return error(400, '"name" must be a string')
        failure = await self.publish(room, name, value["text"])
        if failure is not None:
            return error(503, failure)
        return OpsResponse.json(202, {"room": room, "status": "accepted"})

    async def _history(self, request: Request, room: str) -> OpsResponse:
        after = (request.query.get("after") or [""])[0] or None
        if after is not None:
            try:
                message_id_key(after)
            except ValueError as exc:
                return error(400, str(exc))
        try:
            limit = int((request.query.get("limit") or ["100"])[0])
        except ValueError:
            return error(400, "limit must be a number")
        if not 1 <= limit <= 1000:
            return error(400, "limit must be between 1 and 1000")
        try:
            messages, complete = await self.history(room, after, limit)
        except BrokerError as exc:
            return error(503, f"history unavailable: {exc}")
        return OpsResponse.json(200, {"room": room, "messages": messages, "complete": complete})


def _only(request: Request, method: str) -> OpsResponse | None:
    if request.method == method:
        return None
    return error(405, f"use {method}", [("Allow", method)])
