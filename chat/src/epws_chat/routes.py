"""The public port's plain HTTP routes: the home page, health, and the gate before ``/ws``.

Routes, as in the Go original's ``main.go``: ``/ws`` upgrades to a WebSocket (with the
same-origin check, so a page from another site cannot connect); every other request
is logged and answered by the home handler: ``/`` with GET serves ``home.html``, other
paths get 404 and other methods 405. Rooms add one route: ``/r/<room>`` serves the
same page, which then joins that room (``/?room=<room>`` works too).

Before a ``/ws`` request is upgraded, :func:`make_process_request` asks the connection
gate and the token check, so a refused client gets a plain HTTP status it can read.
A browser cannot: a WebSocket that fails to open tells the page nothing (no status,
no body), so ``GET /ws/check`` answers the token check for the same query as JSON,
which the page reads to say why it is refused instead of retrying forever.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import epws

from .auth import AuthError, Identity, TokenAuth
from .client import clean_room
from .limits import Gate
from .metrics import Counters

__all__ = ["STATIC_DIR", "identify", "make_process_request"]

# The per-request logger that --log-rate bounds (limits.FLOODABLE): a filter sits on
# this exact name, so the lines of this module must be logged on it.
logger = logging.getLogger("epws_chat")

#: Where ``home.html`` is installed with the package.
STATIC_DIR = Path(__file__).resolve().parent / "static"

_NOSNIFF = ("X-Content-Type-Options", "nosniff")

#: A ``token=`` value in a request target: the page's URL carries the user's token
#: (``/r/dev?token=...``), and a token in a log file is a credential anyone reading
#: the logs could use until it expires, so the logged URL hides it.
_TOKEN_VALUE = re.compile(r"([?&]token=)[^&#]*")


def make_process_request(
    static_dir: Path = STATIC_DIR,
    gate: Gate | None = None,
    auth: TokenAuth | None = None,
    stats: Counters | None = None,
    ready: Callable[[], str] | None = None,
) -> Callable[[epws.Request], epws.HTTPResponse | None]:
    """The home handler: answers every plain HTTP request; ``/ws`` goes on to the upgrade
    unless the ``gate`` refuses it (503: full; 429: too many from that address) or
    ``auth`` does (401: no valid token; 403: the token does not allow the room).
    ``/healthz`` and ``/readyz`` answer load balancers (``ready``: why not, or "");
    ``/ws/check`` tells a page why its ``/ws`` is refused (:func:`_explain`)."""
    page = static_dir / "home.html"

    def process_request(request: epws.Request) -> epws.HTTPResponse | None:
        if request.path == "/ws":
            refusal = gate.check_request(request) if gate is not None else None
            if refusal is None and auth is not None:
                refusal = _check_token(auth, request)
            if refusal is not None:
                logger.info("refused %s: HTTP %d", request.path, refusal.status)
                if stats is not None:
                    stats.handshake(refusal.status)
            return refusal
        if request.path == "/ws/check":
            return _explain(auth, request)
        if request.path == "/healthz":
            return epws.HTTPResponse(200, "ok\n", headers=[_NOSNIFF])
        if request.path == "/readyz":
            why = ready() if ready is not None else ""
            return epws.HTTPResponse(
                503 if why else 200, (why or "ready") + "\n", headers=[_NOSNIFF]
            )
        logger.info("%s %s", request.method, _TOKEN_VALUE.sub(r"\1(hidden)", request.target))
        if request.path != "/" and not _is_room_page(request.path):
            return epws.HTTPResponse(404, "Not found\n", headers=[_NOSNIFF])
        if request.method != "GET":
            return epws.HTTPResponse(
                405, "Method not allowed\n", headers=[("Allow", "GET"), _NOSNIFF]
            )
        return _serve_file(request, page)

    return process_request


def identify(auth: TokenAuth, request: epws.Request | None) -> Identity:
    """The identity of a ``/ws`` request's ``?token=`` for the room it asks for;
    AuthError when refused. A malformed room name passes here: the handler refuses it
    (1008) with the room rule's own message."""
    query = request.query if request is not None else {}
    token = (query.get("token") or [""])[0] or None
    try:
        room = clean_room((query.get("room") or [""])[0])
    except ValueError:
        return auth.verify(token)
    return auth.check(token, room)


def _check_token(auth: TokenAuth, request: epws.Request) -> epws.HTTPResponse | None:
    try:
        identify(auth, request)
    except AuthError as exc:
        headers = [_NOSNIFF]
        if exc.status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="epws-chat"'))
        return epws.HTTPResponse(exc.status, exc.text + "\n", headers=headers)
    return None


def _explain(auth: TokenAuth | None, request: epws.Request) -> epws.HTTPResponse:
    """``GET /ws/check?room=R&token=T``: what the token check says about ``/ws`` with the
    same query, as JSON: 200 ``{"ok": true}``, or the refusal's status (401, 403) with
    ``{"ok": false, "status": N, "error": text}``, the text ``/ws`` itself answers.

    It tells the caller nothing ``/ws`` does not already tell any non-browser client,
    and it is same-origin only (no CORS header: another site's page cannot read it).
    The connection gate is not asked: a full server is worth retrying, not explaining,
    and asking it here would count refusals that never happened. The target is not
    logged, since it holds the token.
    """
    headers = [_NOSNIFF, ("Cache-Control", "no-store")]
    if request.method != "GET":
        return epws.HTTPResponse(405, "Method not allowed\n", headers=[("Allow", "GET"), *headers])
    answer: dict[str, object] = {"ok": True}
    status = 200
    if auth is not None:
        try:
            identify(auth, request)
        except AuthError as exc:
            status, answer = exc.status, {"ok": False, "status": exc.status, "error": exc.text}
    return epws.HTTPResponse(
        status,
        json.dumps(answer) + "\n",
        content_type="application/json",
        headers=headers,
    )


def _is_room_page(path: str) -> bool:
    if not path.startswith("/r/"):
        return False
    try:
        clean_room(path[3:])
    except ValueError:
        return False
    return True


def _serve_file(request: epws.Request, path: Path) -> epws.HTTPResponse:
    """Serve ``path`` read afresh (edits show on reload), with conditional GET.

    The page is a few kilobytes, so reading it on the loop costs less than a thread
    hand-off would.
    """
    try:
        mtime = int(path.stat().st_mtime)
        body = path.read_bytes()
    except OSError as exc:
        logger.error("cannot read %s: %s", path, exc)
        return epws.HTTPResponse(500, "Internal Server Error\n", headers=[_NOSNIFF])
    last_modified = email.utils.formatdate(mtime, usegmt=True)
    since = request.headers.get("If-Modified-Since")
    if since:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            if mtime <= email.utils.parsedate_to_datetime(since).timestamp():
                return epws.HTTPResponse(304, headers=[("Last-Modified", last_modified)])
    return epws.HTTPResponse(
        200,
        body,
        content_type="text/html; charset=utf-8",
        headers=[("Last-Modified", last_modified)],
    )
