"""The ``epws-chat`` command: ``epws-chat [--addr :8080] ...`` and ``epws-chat token``.

:func:`main` checks the options (:mod:`epws_chat.options`), sets up logging, and either
supervises ``--workers N`` processes (:mod:`epws_chat.workers`) or serves in this one
(:func:`run`) until SIGINT or SIGTERM, which close every connection with 1001 (going
away); the process then exits 0 within a bounded time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .auth import mint, parse_duration
from .limits import Gate
from .logs import JsonFormatter
from .options import (
    API_KEY_ENV,
    BROKER_ENV,
    SECRET_ENV,
    build_parser,
    check_broker,
    make_auth,
    make_broker,
    make_settings,
    parse_addr,
)
from .routes import STATIC_DIR
from .server import start_chat
from .settings import Settings

__all__ = ["main", "run", "token_main"]

# The logger of the chat's own lines (limits.FLOODABLE names it).
logger = logging.getLogger("epws_chat")


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
        broker=make_broker(args.broker, args.history, args.history_ttl, args.presence_interval),
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
    settings = make_settings(parser, args)
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
    if args.presence_interval <= 0:
        parser.error("--presence-interval must be positive")
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
