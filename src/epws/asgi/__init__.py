"""epws as uvicorn's WebSocket implementation: ``uvicorn app:app --ws epws.asgi:WebSocketProtocol``.

uvicorn takes the class of its WebSocket protocol from ``--ws`` (or ``ws=`` of
``uvicorn.run`` / ``uvicorn.Config``), and any import string works there. Its HTTP
protocol parses a request, sees an upgrade, builds the class with
``(config=..., server_state=..., app_state=...)``, calls ``connection_made(transport)``,
makes it the transport's protocol and feeds it the request head with
``data_received``. :class:`WebSocketProtocol` is that class, so a FastAPI or Starlette app (any ASGI
app) runs on epws unchanged: the ASGI HTTP & WebSocket spec 2.5 with the
``websocket.http.response`` (denial response) extension.

Nothing here is a second WebSocket implementation. The request head is parsed by
:class:`~epws.protocol.http11.RequestParser` and checked by
:func:`~epws.protocol.handshake.check_request`, compression is negotiated by
:meth:`~epws.PerMessageDeflate.server_negotiate`, the 101 is built by
:func:`~epws.protocol.handshake.build_response`, and after the 101 the transport
belongs to an :class:`~epws.asyncio.conn.Conn`, exactly as under :func:`epws.serve`:
the same read limit (1009 before an oversize message is buffered), the same
strictness (1002/1007 for protocol errors), the same flow control both ways (reading
pauses when ``ws_max_queue`` messages wait unread or the peer does not read our
output; the app's ``send`` waits while the write buffer is over its high-water mark).
The class only translates between ASGI events and the Conn.

uvicorn is never imported: ``config`` and ``server_state`` are used through the
attributes listed in :class:`UvicornConfig` and :class:`UvicornServerState`, so
``import epws`` and ``import epws.asgi`` cost nothing without uvicorn.

Where uvicorn's own implementations (``websockets``, ``websockets-sansio``,
``wsproto``) differ from each other or from the spec, this one follows the spec;
docs/asgi.md lists the differences.

The package, in the order a connection meets it: :mod:`epws.asgi.protocol` is the
class, its life from the request head to the end; :mod:`epws.asgi.http` builds the
ASGI scope from the request and the bytes of a denial response;
:mod:`epws.asgi.interface` holds the types of what the class talks to (uvicorn's
config and server state, the app) and :class:`ClientDisconnected`.
"""

from __future__ import annotations

from .interface import ClientDisconnected, UvicornConfig, UvicornServerState
from .protocol import CLOSE_TIMEOUT as CLOSE_TIMEOUT, WebSocketProtocol

__all__ = [
    "ClientDisconnected",
    "UvicornConfig",
    "UvicornServerState",
    "WebSocketProtocol",
]
