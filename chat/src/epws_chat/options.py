"""The ``epws-chat`` command line and what its options turn into.

:func:`build_parser` holds every option (the defaults are the Go original's
constants); the functions below turn the parsed values into the objects the server
runs with: :func:`make_settings`, :func:`make_broker`, :func:`make_auth`,
:func:`parse_addr`. Only :func:`make_broker` knows which brokers exist.

Scaling out (docs/deployment.md): ``--broker redis://host:port/db`` (or the environment
variable ``EPWS_CHAT_BROKER``) shares the rooms of every process that names the same
Redis; ``--workers N`` runs N such processes on one port (:mod:`epws_chat.workers`).
"""

from __future__ import annotations

import argparse
import os

from .auth import TokenAuth
from .brokers import Broker, MemoryBroker
from .settings import Settings

__all__ = [
    "API_KEY_ENV",
    "BROKER_ENV",
    "METRICS_ENV",
    "SECRET_ENV",
    "build_parser",
    "check_broker",
    "make_auth",
    "make_broker",
    "make_settings",
    "parse_addr",
]

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


def make_broker(
    spec: str, history: int, retention: float = 86400.0, presence_interval: float = 5.0
) -> Broker:
    """The broker a ``--broker`` value names; the only place that knows the kinds."""
    if check_broker(spec) == "memory":
        return MemoryBroker(history, retention=retention)
    try:
        from .brokers.redis import RedisBroker
    except ImportError as exc:
        raise ValueError(
            f"--broker {spec!r} needs the redis package: pip install 'epws[redis]' ({exc})"
        ) from None
    return RedisBroker(
        spec, history=history, retention=retention, presence_interval=presence_interval
    )


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


def make_auth(args: argparse.Namespace) -> TokenAuth | None:
    """The token check the ``--auth-*`` options ask for (None: anonymous)."""
    if args.auth_public_key:
        return TokenAuth.from_public_key(args.auth_public_key)
    secret = args.auth_secret or os.environ.get(SECRET_ENV)
    return TokenAuth.from_secret(secret) if secret else None


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
    scale.add_argument(
        "--presence-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between a Redis --broker's presence heartbeats: the members of a "
        "process that dies without a goodbye stop counting on the others within 3 "
        "times this (default: %(default)s)",
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


def make_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
    """The connection settings the options ask for; a bad combination is a usage
    error (exit 2), as for any other option."""
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
