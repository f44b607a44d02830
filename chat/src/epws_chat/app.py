"""The chat server's HTTP side and command line: ``epws-chat [--addr :8080] ...``.

Routes, as in the Go original's ``main.go``: ``/ws`` upgrades to a WebSocket (with the
same-origin check, so a page from another site cannot connect); every other request
is logged and answered by the home handler: ``/`` with GET serves ``home.html``, other
paths get 404 and other methods 405. Rooms add one route: ``/r/<room>`` serves the
same page, which then joins that room (``/?room=<room>`` works too).

Unlike the original, which has no shutdown path, SIGINT and SIGTERM close every
connection with 1001 (going away) and the process exits 0 within a bounded time.

Scaling out (docs/deployment.md): ``--broker redis://host:port/db`` (or the environment
variable ``EPWS_CHAT_BROKER``) shares the rooms of every process that names the same
Redis; ``--workers N`` runs N such processes on one port (:mod:`epws_chat.workers`).
Only :func:`make_broker` knows which broker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import epws

from .auth import (
    EXPIRED_CODE,
    AuthError,
    ExpiryQueue,
    Identity,
    TokenAuth,
    mint,
    parse_duration,
)
from .brokers import Broker, MemoryBroker, clean_text
from .client import PROTOCOL, Client, Settings, accept, clean_name, clean_room, normalize
from .hub import Hub
from .limits import FLOODABLE, Gate, RateLimitedLog, install_log_limits
from .logs import JsonFormatter
from .metrics import ChatCollector, Counters, render
from .ops import Routes, serve_ops

__all__ = [
    "API_KEY_ENV",
    "BROKER_ENV",
    "METRICS_ENV",
    "SECRET_ENV",
    "Chat",
    "build_parser",
    "main",
    "make_broker",
    "make_auth",
    "make_process_request",
    "identify",
    "parse_addr",
    "start_chat",
    "token_main",
]

logger = logging.getLogger("epws_chat")

#: Where ``home.html`` is installed with the package.
STATIC_DIR = Path(__file__).resolve().parent / "static"

_NOSNIFF = ("X-Content-Type-Options", "nosniff")

#: The environment variable that chooses the broker when ``--broker`` is not given.
BROKER_ENV = "EPWS_CHAT_BROKER"
#: The environment variable holding the HS256 secret when ``--auth-secret`` is not
#: given (a secret on a command line is visible to every user of the machine).
SECRET_ENV = "EPWS_CHAT_AUTH_SECRET"
#: The environment variable holding the server API's key when ``--api-key`` is not given.
API_KEY_ENV = "EPWS_CHAT_API_KEY"
#: ``off`` counts nothing (``--metrics``'s default when set).
METRICS_ENV = "EPWS_CHAT_METRICS"

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_broker(spec: str) -> str:
    """``"memory"`` or ``"redis"`` for a ``--broker`` value; ValueError if it is neither."""
    if spec == "memory":
        return "memory"
    scheme, sep, _ = spec.partition("://")
    if sep and scheme in _REDIS_SCHEMES:
        return "redis"
    raise ValueError(
        f"--broker {spec!r}: want 'memory' or a Redis URL "
        "(redis://host:port/db, rediss://..., unix:///path)"
    )


def make_broker(spec: str, history: int, retention: float = 86400.0) -> Broker:
    """The broker a ``--broker`` value names; the only place that knows the kinds."""
    if check_broker(spec) == "memory":
        return MemoryBroker(history, retention=retention)
    try:
        from .brokers.redis import RedisBroker
    except ImportError as exc:
        raise ValueError(
            f"--broker {spec!r} needs the redis package: pip install 'epws[redis]' ({exc})"
        ) from None
    return RedisBroker(spec, history=history, retention=retention)


def parse_addr(addr: str) -> tuple[str | None, int]:
    """Split a Go-style listen address: ``":8080"`` (every interface), ``"host:port"``,
    ``"[::1]:8080"``."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"address {addr!r} has no port (want host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"address {addr!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"address {addr!r}: port out of range")
    return (host or None), number


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
    ``/healthz`` and ``/readyz`` answer load balancers (``ready``: why not, or "")."""
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
        if request.path == "/healthz":
            return epws.HTTPResponse(200, "ok\n", headers=[_NOSNIFF])
        if request.path == "/readyz":
            why = ready() if ready is not None else ""
            return epws.HTTPResponse(
                503 if why else 200, (why or "ready") + "\n", headers=[_NOSNIFF]
            )
        logger.info("%s %s", request.method, request.target)
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


@dataclass(slots=True)
class Chat:
    """A running chat server: the WebSocket server and its hub."""

    server: epws.Server
    hub: Hub
    settings: Settings
    scheme: str
    pinger: asyncio.Task[None]
    gate: Gate
    log_filters: list[RateLimitedLog]
    expiry: ExpiryQueue
    stats: Counters | None
    ops: asyncio.Server | None = None
    closing: bool = False

    @property
    def ops_port(self) -> int:
        """The port of the ops listener (``--ops-addr``); 0 when there is none."""
        if self.ops is None or not self.ops.sockets:
            return 0
        return int(self.ops.sockets[0].getsockname()[1])

    def not_ready(self) -> str:
        """Why this process should get no new connections ("" when it should)."""
        if self.closing:
            return "shutting down"
        if not getattr(self.hub.broker, "connected", True):
            return "the broker is not connected"
        return ""

    def gauges(self) -> dict[str, float]:
        """The live figures of ``/metrics`` and ``/api/stats``."""
        return {
            "connections": len(self.hub),
            "rooms": len(self.hub.rooms),
            "broker_connected": 0 if self.not_ready() == "the broker is not connected" else 1,
        }

    @property
    def port(self) -> int:
        return self.server.port

    async def close(self, *, timeout: float = 10.0) -> None:
        """Close every connection with 1001 (going away), within about ``timeout`` seconds.

        Clients that do not answer the close frame in time are dropped, so this
        always ends: a stuck client cannot hold the process.
        """
        loop = asyncio.get_running_loop()
        server = self.server
        self.closing = True
        if self.ops is not None:
            self.ops.close()

        def drop_all() -> None:
            for conn in list(server.connections):
                conn.abort()

        timer = loop.call_later(timeout, drop_all)
        self.pinger.cancel()
        self.expiry.close()
        for log_filter, name in zip(self.log_filters, FLOODABLE, strict=False):
            logging.getLogger(name).removeFilter(log_filter)
        try:
            await server.close(1001, "going away", timeout=timeout)
        finally:
            timer.cancel()
            await self.hub.close()


async def start_chat(
    settings: Settings | None = None,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl.SSLContext | None = None,
    static_dir: Path = STATIC_DIR,
    sock: socket.socket | None = None,
    broker: Broker | None = None,
    reuse_port: bool = False,
    gate: Gate | None = None,
    log_rate: float = 20.0,
    auth: TokenAuth | None = None,
    metrics: bool = True,
    api_key: str | None = None,
    ops_addr: tuple[str | None, int] | None = None,
) -> Chat:
    """Start a chat server on the running loop (port 0: any free port).

    ``gate`` caps connections (default: :class:`~epws_chat.limits.Gate`'s caps);
    ``log_rate`` bounds the per-request and per-connection log lines per second;
    ``auth`` requires a connection token (None: anonymous, as the Go original);
    ``metrics`` False counts nothing (``--metrics off``); ``ops_addr`` (host, port)
    opens the ops listener (:mod:`epws_chat.ops`), whose ``/api`` routes need
    ``api_key``.
    """
    settings = settings or Settings()
    gate = gate if gate is not None else Gate()
    stats = Counters() if metrics else None
    hub = Hub(broker, send_limit=settings.send_limit, write_wait=settings.write_wait, stats=stats)
    await hub.start()

    def expired(client: Client) -> None:
        logger.info("%s: token expired", client)
        if stats is not None:
            stats.evicted("token_expired")
        hub.unregister(client)
        client.conn.close_nowait(EXPIRED_CODE, "token expired")

    expiry = ExpiryQueue(expired, hub.__contains__)

    def handler(conn: epws.Conn) -> None:
        identity: Identity | None = None
        if auth is not None:
            try:  # checked before the upgrade; again here, as it may expire meanwhile
                identity = identify(auth, conn.request)
            except AuthError as exc:
                conn.close_nowait(EXPIRED_CODE if exc.status == 401 else 1008, exc.text)
                return
        if stats is not None:
            stats.handshake(101)
        address = gate.admit(conn)
        if address is None:
            logger.info("refused %s: too many connections", conn.remote_address)
            if stats is not None:
                stats.evicted("address_cap")
            conn.close_nowait(1013, "too many connections; try again later")
            return
        client = accept(hub, settings, conn, identity)
        if client is not None and identity is not None and identity.expires is not None:
            expiry.add(client, identity.expires)
        on_close = conn.on_close

        def closed(exc: epws.ConnectionClosed) -> None:
            gate.release(address)
            if on_close is not None:
                on_close(exc)

        conn.on_close = closed

    upgrader = epws.Upgrader(
        check_origin=None,  # the same-origin check, as gorilla's nil CheckOrigin
        subprotocols=[PROTOCOL],
        read_limit=settings.read_limit,
        close_timeout=settings.write_wait,
        compression=None,  # as the Go original: lines are short, CPU is the budget
        # The chat keeps the seed's keepalive (_keepalive below: an empty ping every
        # ping_period, a read deadline pong_wait ahead), not the library's.
        ping_interval=None,
    )
    server = await epws.serve(
        handler,
        host,
        None if sock is not None else port,
        upgrader=upgrader,
        process_request=make_process_request(
            static_dir, gate, auth, stats, lambda: chat.not_ready()
        ),
        ssl=ssl_context,
        sock=sock,
        reuse_port=reuse_port,
    )
    pinger = asyncio.get_running_loop().create_task(_keepalive(hub, settings))
    filters = install_log_limits(log_rate) if log_rate > 0 else []
    scheme = "https" if ssl_context is not None else "http"
    chat = Chat(server, hub, settings, scheme, pinger, gate, filters, expiry, stats)
    if ops_addr is not None:
        chat.ops = await serve_ops(make_routes(chat, api_key), *ops_addr)
    return chat


def make_routes(chat: Chat, api_key: str | None) -> Routes:
    """The ops routes of one chat process (:mod:`epws_chat.ops`)."""
    hub = chat.hub
    stats = chat.stats

    async def publish(room: str, name: str, text: str) -> str | None:
        failed: list[str] = []
        hub.broadcast(
            clean_text(normalize(text)),
            room=room,
            name=clean_name(name),
            on_error=lambda exc: failed.append(str(exc)),
        )
        await asyncio.sleep(0)  # a broker that fails at once has said so now
        return failed[0] if failed else None

    async def history(room: str, after: str | None, limit: int) -> tuple[list[Any], bool]:
        page = await hub.broker.page(room, after=after, limit=limit)
        return [json.loads(m.json()) for m in page.messages], page.complete

    async def presence(room: str) -> dict[str, int]:
        return hub.local_members(room)

    async def figures() -> dict[str, Any]:
        out: dict[str, Any] = dict(chat.gauges())
        if stats is not None:
            out.update(stats.snapshot())
        return out

    async def metrics() -> bytes:
        assert stats is not None
        return render(ChatCollector(stats, chat.gauges))

    return Routes(
        api_key=api_key,
        publish=publish,
        history=history,
        presence=presence,
        stats=figures,
        metrics=metrics if stats is not None else None,
        ready=chat.not_ready,
        clean_room=clean_room,
    )


async def _keepalive(hub: Hub, settings: Settings) -> None:
    """Go's per-client ticker and write deadline, as one timer for every client.

    Every ping period each client gets an empty ping (clients that joined since the
    last one get theirs within a period, as in Go; the pong wait is longer either way).
    Between pings, the hub's sweep drops clients whose outgoing data has waited longer
    than ``write_wait`` (Go's write deadline), even in a room that fell silent.
    """
    loop = asyncio.get_running_loop()
    step = min(settings.ping_period, settings.write_wait / 2)
    next_ping = loop.time() + settings.ping_period
    failures = 0
    while True:
        await asyncio.sleep(step)
        # Supervised: an unexpected error is logged and the next round runs anyway.
        # Without this one bug would stop every ping and sweep, silently, forever.
        try:
            hub.sweep()
            if loop.time() < next_ping:
                continue
            next_ping += settings.ping_period
            for client in list(hub.clients):
                conn = client.conn
                if not conn.closed:
                    with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
                        await conn.ping(b"")
            failures = 0
        except Exception:
            failures += 1
            logger.exception("keepalive round failed (%d in a row); going on", failures)
            if loop.time() >= next_ping:
                next_ping = loop.time() + settings.ping_period


def make_auth(args: argparse.Namespace) -> TokenAuth | None:
    """The token check the ``--auth-*`` options ask for (None: anonymous)."""
    if args.auth_public_key:
        return TokenAuth.from_public_key(args.auth_public_key)
    secret = args.auth_secret or os.environ.get(SECRET_ENV)
    return TokenAuth.from_secret(secret) if secret else None


def _ssl_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM, then shut down gracefully; the exit status."""
    host, port = parse_addr(args.addr)
    context = _ssl_context(args.certfile, args.keyfile) if args.certfile else None
    static_dir = Path(args.static) if args.static else STATIC_DIR
    worker = args.worker_index is not None
    chat = await start_chat(
        settings,
        host,
        port,
        ssl_context=context,
        static_dir=static_dir,
        broker=make_broker(args.broker, args.history, args.history_ttl),
        reuse_port=worker,
        gate=Gate(
            max_connections=args.max_connections,
            max_per_address=args.max_connections_per_address,
            trust_forwarded=args.trust_forwarded_for,
        ),
        log_rate=args.log_rate,
        auth=make_auth(args),
        metrics=args.metrics == "on",
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        ops_addr=parse_addr(args.ops_addr) if args.ops_addr else None,
    )
    shown = host if host is not None else "localhost"
    if ":" in shown:
        shown = f"[{shown}]"
    logger.info("chat server listening on %s://%s:%d/", chat.scheme, shown, chat.port)
    if chat.ops is not None:
        logger.info("ops routes served at http://%s:%d/", shown, chat.ops_port)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if worker:
        _report_to_supervisor(loop, stop, chat.ops_port)
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("second %s: dropping every connection now", signal.Signals(signum).name)
            for conn in list(chat.server.connections):
                conn.abort()
            return
        logger.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        await chat.close(timeout=args.shutdown_timeout)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
    logger.info("stopped")
    return 0


def _report_to_supervisor(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, ops_port: int = 0
) -> None:
    """A worker tells its parent it listens (a line on stdout) and stops by itself
    when the parent's end of its stdin closes (the parent died without stopping it)."""
    sys.stdout.write(f"ready ops={ops_port}\n" if ops_port else "ready\n")
    sys.stdout.flush()
    fd = sys.stdin.fileno()

    def on_stdin() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if not stop.is_set():
                logger.warning("the supervisor is gone: shutting down")
                stop.set()

    loop.add_reader(fd, on_stdin)


def build_parser() -> argparse.ArgumentParser:
    """The command line; the defaults are the Go original's constants."""
    parser = argparse.ArgumentParser(
        prog="epws-chat",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "A web chat: open http://localhost:8080/ in several browser tabs.\n"
            "Every message goes to every client in the same room (/r/<room>), on every "
            "process that shares the broker.\nThe connection defaults match "
            "gorilla/websocket's chat example."
        ),
    )
    parser.add_argument(
        "--addr",
        "-addr",
        default=":8080",
        help="listen address, host:port; ':8080' (the default) listens on every interface",
    )
    limits = parser.add_argument_group("connection constants")
    limits.add_argument(
        "--send-buffer",
        type=int,
        default=256,
        metavar="N",
        help="messages queued per client; a client whose queue is full is evicted "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--read-limit",
        type=int,
        default=512,
        metavar="BYTES",
        help="largest message accepted; a larger one closes the connection with 1009 "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--pong-wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for a pong before dropping a client; only pongs extend it "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--ping-period",
        type=float,
        default=None,
        metavar="S",
        help="seconds between pings; must be less than --pong-wait "
        "(default: 9/10 of --pong-wait, 54)",
    )
    limits.add_argument(
        "--write-wait",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds each write (messages, ping, close) may take before the client is "
        "dropped (default: %(default)s)",
    )
    scale = parser.add_argument_group("history and scaling out (docs/deployment.md)")
    scale.add_argument(
        "--broker",
        default=os.environ.get(BROKER_ENV) or "memory",
        metavar="URL",
        help="where messages and history go: 'memory' (one process) or a Redis URL such "
        f"as redis://127.0.0.1:6379/0 shared by every process; also ${BROKER_ENV} "
        "(default: %(default)s)",
    )
    scale.add_argument(
        "--history",
        type=int,
        default=100,
        metavar="N",
        help="messages kept per room and sent to a joining epws.chat.v1 client "
        "(default: %(default)s)",
    )
    scale.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes serving the same port (SO_REUSEPORT), supervised; N > 1 needs "
        "a Redis --broker (default: %(default)s)",
    )
    scale.add_argument(
        "--history-ttl",
        type=float,
        default=86400.0,
        metavar="S",
        help="seconds a room's history is kept after its last message (Redis: an "
        "EXPIRE refreshed by each message; memory: rooms without members); 0 keeps it "
        "(default: %(default)s)",
    )
    abuse = parser.add_argument_group("abuse controls (0 turns a limit off)")
    abuse.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="N",
        help="messages per second one connection may send on average; the excess is "
        "dropped and the sender told (default: %(default)s)",
    )
    abuse.add_argument(
        "--burst",
        type=int,
        default=60,
        metavar="N",
        help="messages one connection may send at once above --rate (default: %(default)s)",
    )
    abuse.add_argument(
        "--abuse-limit",
        type=int,
        default=200,
        metavar="N",
        help="dropped messages (decaying at --rate) after which a flooder is closed "
        "with 1008 (default: %(default)s)",
    )
    abuse.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="open connections per process; more are refused with HTTP 503 (default: %(default)s)",
    )
    abuse.add_argument(
        "--max-connections-per-address",
        type=int,
        default=256,
        metavar="N",
        help="open connections per client address; more are refused (HTTP 429 with "
        "--trust-forwarded-for, else closed with 1013) (default: %(default)s)",
    )
    abuse.add_argument(
        "--trust-forwarded-for",
        action="store_true",
        help="take the client address from X-Forwarded-For (only behind a proxy that "
        "sets it: clients can send any value)",
    )
    abuse.add_argument(
        "--socket-send-buffer",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="kernel send buffer per connection (SO_SNDBUF; Linux doubles it); bounds "
        "what a stuck client holds in the kernel; 0: the kernel's default "
        "(default: %(default)s)",
    )
    abuse.add_argument(
        "--log-rate",
        type=float,
        default=20.0,
        metavar="N",
        help="per-request and per-connection log lines per second; the rest are "
        "counted, not written (default: %(default)s)",
    )
    # Set by the supervisor on the command line of each worker it starts.
    scale.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    who = parser.add_argument_group("identity (docs/chat-in-public.md)")
    keys = who.add_mutually_exclusive_group()
    keys.add_argument(
        "--auth-secret",
        metavar="SECRET",
        help="require an HS256 connection token (?token=) signed with SECRET; also "
        f"${SECRET_ENV}; without --auth-* the chat is anonymous",
    )
    keys.add_argument(
        "--auth-public-key",
        metavar="PEM",
        help="require an RS256 connection token verified with this public key file",
    )
    opsg = parser.add_argument_group("server API, metrics, health (docs/chat-in-public.md)")
    opsg.add_argument(
        "--ops-addr",
        metavar="HOST:PORT",
        help="serve /api/*, /metrics, /healthz, /readyz on this (private) address, "
        "e.g. 127.0.0.1:9090 (default: none; /healthz and /readyz are on --addr too)",
    )
    opsg.add_argument(
        "--api-key",
        metavar="KEY",
        help="enable the server API on --ops-addr for Authorization: Bearer KEY; "
        f"also ${API_KEY_ENV}",
    )
    opsg.add_argument(
        "--metrics",
        choices=["on", "off"],
        default=os.environ.get(METRICS_ENV) or "on",
        help=f"count the figures of /metrics; off removes even the counting "
        f"(${METRICS_ENV}) (default: %(default)s)",
    )
    opsg.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one object per line, with 'conn' on every line about a connection",
    )
    ops = parser.add_argument_group("operation")
    ops.add_argument("--certfile", help="serve HTTPS/WSS with this PEM certificate (chain)")
    ops.add_argument("--keyfile", help="private key for --certfile (if not inside it)")
    ops.add_argument(
        "--static",
        metavar="DIR",
        help="serve home.html from DIR instead of the installed copy "
        "(the Go original serves it from the current directory)",
    )
    ops.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds clients get to answer the 1001 close "
        "before they are dropped (default: %(default)s)",
    )
    ops.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: %(default)s)",
    )
    ops.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop; auto (the default) uses uvloop when it is installed",
    )
    return parser


def _settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    ping_period = args.ping_period if args.ping_period is not None else args.pong_wait * 9 / 10
    try:
        return Settings(
            send_buffer=args.send_buffer,
            read_limit=args.read_limit,
            pong_wait=args.pong_wait,
            ping_period=ping_period,
            write_wait=args.write_wait,
            history=args.history,
            rate=args.rate,
            burst=args.burst,
            abuse_limit=args.abuse_limit,
            socket_send_buffer=args.socket_send_buffer,
        )
    except ValueError as exc:
        parser.error(str(exc))


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("epws-chat: --loop uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``epws-chat``; returns the exit status.

    ``epws-chat token ...`` mints a connection token instead (:func:`token_main`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = _settings(parser, args)
    try:
        parse_addr(args.addr)
    except ValueError as exc:
        parser.error(str(exc))
    if args.keyfile and not args.certfile:
        parser.error("--keyfile needs --certfile")
    try:
        make_auth(args)
    except (OSError, ValueError) as exc:
        parser.error(f"--auth-*: {exc}")
    try:
        broker_kind = check_broker(args.broker)
    except ValueError as exc:
        parser.error(str(exc))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and broker_kind == "memory":
        parser.error(
            f"--workers {args.workers} needs a shared broker: with --broker memory each "
            "worker would be a separate chat; add --broker redis://HOST:PORT/DB "
            f"(or set {BROKER_ENV})"
        )
    if args.ops_addr:
        try:
            parse_addr(args.ops_addr)
        except ValueError as exc:
            parser.error(f"--ops-addr: {exc}")
    tag = f" [worker {args.worker_index} pid %(process)d]" if args.worker_index else ""
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )
    if args.log_format == "json":
        for log_handler in logging.getLogger().handlers:
            log_handler.setFormatter(JsonFormatter(args.worker_index))
    if args.workers > 1:
        from .workers import supervise

        host, port = parse_addr(args.addr)
        return supervise(args, argv, host, port)
    with asyncio.Runner(loop_factory=_loop_factory(args.loop)) as runner:
        try:
            return runner.run(run(args, settings))
        except OSError as exc:  # e.g. the port is taken: Go's log.Fatal
            logger.critical("cannot serve on %s: %s", args.addr, exc)
            return 1
        except ValueError as exc:  # e.g. a malformed Redis URL
            logger.critical("%s", exc)
            return 2


def token_main(argv: Sequence[str]) -> int:
    """``epws-chat token --sub alice --rooms 'dev,ops/*' --ttl 1h``: print a token.

    The token is the last line of the output, so ``$(epws-chat token ... | tail -1)``
    works whatever else is printed.
    """
    parser = argparse.ArgumentParser(
        prog="epws-chat token",
        description="Mint a connection token for trying the chat with --auth-*.",
    )
    parser.add_argument("--sub", required=True, help="the name shown (the 'sub' claim)")
    parser.add_argument(
        "--rooms",
        default=None,
        help="comma-separated room patterns the holder may join, e.g. 'dev,ops/*' "
        "(default: every room)",
    )
    parser.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 2d (default: 1h)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--secret", help=f"HS256 secret (default: ${SECRET_ENV})")
    keys.add_argument("--private-key", metavar="PEM", help="sign with RS256 with this key file")
    args = parser.parse_args(argv)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        parser.error(str(exc))
    if ttl <= 0:
        parser.error("--ttl must be positive")
    if args.private_key:
        try:
            key: str | bytes = Path(args.private_key).read_bytes()
        except OSError as exc:
            parser.error(f"--private-key: {exc}")
        algorithm = "RS256"
    else:
        key = args.secret or os.environ.get(SECRET_ENV) or ""
        if not key:
            parser.error(f"give --secret, --private-key or ${SECRET_ENV}")
        algorithm = "HS256"
    try:
        token = mint(key, args.sub, rooms=args.rooms, ttl=ttl, algorithm=algorithm)
    except (ValueError, TypeError) as exc:  # e.g. not a private key
        parser.error(f"cannot sign: {exc}")
    print(token)
    return 0
