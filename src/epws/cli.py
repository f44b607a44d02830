"""``python -m epws URL``: talk to a WebSocket server from a terminal or a pipe.

On a terminal it is interactive: a prompt with line editing and history (readline),
each line sent as a text message, incoming messages printed above the prompt as they
come. With stdin not a terminal, each line of stdin is one text message. Either way,
when stdin ends the client keeps printing what arrives until the server has been
quiet for ``--linger`` seconds (1 by default, 10 at most), then runs the closing
handshake, so ``printf 'a\\nb\\n' | python -m epws URL`` shows the server's answers.

Binary messages are printed as ``[binary N bytes] <hex>``; text bound for a terminal
has its control characters escaped, so a server cannot move the cursor or retitle the
window. The exit status tells how the connection ended: 0 for a normal close
(1000 or 1001), 1 when it could not be opened, 2 for bad arguments, 3 when it was
lost without a close frame (1006), 4 for any other close code (shown on stderr):
the one received, or the one we sent when the connection failed on our side and no
close frame came back (1011 for a keepalive timeout), 130 after Ctrl-C.

``--ping-interval N`` is the library's keepalive (``ping_interval=N,
ping_timeout=N``): a ping every N seconds, the connection failed with 1011 when a pong
is more than N seconds late. Without it ``connect()``'s defaults apply (20 s / 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

from .asyncio.client import connect
from .asyncio.conn import Conn
from .exceptions import ConnectionClosed, EpwsError

__all__ = ["main"]

EXIT_OK = 0
EXIT_CONNECT = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_CLOSE_CODE = 4
EXIT_INTERRUPTED = 130

PROMPT = "> "
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
_CONTROL |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m epws",
        description="Connect to a WebSocket server; send stdin lines, print messages.",
    )
    p.add_argument("url", help="ws:// or wss:// URL")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    p.add_argument(
        "-s",
        "--subprotocol",
        action="append",
        default=[],
        metavar="NAME",
        help="subprotocol to offer (repeatable, in order of preference)",
    )
    p.add_argument("--origin", help="Origin header to send")
    p.add_argument(
        "-k", "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    p.add_argument(
        "--ping-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keepalive: ping every SECONDS, fail with 1011 when a pong is that late (default 20)",
    )
    p.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="proxy URL (http, https, socks5, socks4); 'none' for none; default: environment",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="once stdin ends, close after the server has been quiet this long (default 1)",
    )
    p.add_argument(
        "--max-size", type=int, default=1 << 20, help="largest message accepted, in bytes"
    )
    return p


def _headers(values: Sequence[str], parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            parser.error(f"--header wants 'Name: value', got {value!r}")
        headers.append((name.strip(), rest.strip()))
    return headers


def render(message: str | bytes, terminal: bool) -> str:
    """How a message is printed: binary as hex, controls escaped on a terminal."""
    if isinstance(message, bytes):
        return f"[binary {len(message)} bytes] {message.hex()}"
    if terminal:
        return message.translate(_CONTROL)
    return message


class _Output:
    """Prints incoming messages; on a terminal, above the line being edited."""

    def __init__(self, out: TextIO, interactive: bool) -> None:
        self.out = out
        self.interactive = interactive
        self.terminal = out.isatty()
        self._readline: Any = None
        if interactive:
            with contextlib.suppress(ImportError):
                import readline

                self._readline = readline

    def message(self, message: str | bytes) -> None:
        text = render(message, self.terminal)
        if self.interactive:
            self.line(f"< {text}")
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def line(self, text: str) -> None:
        """A line of output; while the prompt shows, clear it, print, show it again."""
        if not self.interactive:
            self.out.write(text + "\n")
            self.out.flush()
            return
        typed = self._readline.get_line_buffer() if self._readline is not None else ""
        self.out.write(f"\r\x1b[K{text}\n{PROMPT}{typed}")
        self.out.flush()


def _lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None], prompt: bool) -> None:
    """Reads stdin in a daemon thread (never keeps the process alive); None is EOF.

    On a terminal ``input()`` gives readline's editing and history. Otherwise the
    file descriptor is read directly: a daemon thread blocked inside sys.stdin's
    buffered reader holds its lock, and CPython aborts at exit when it finds it taken.
    Bytes are decoded leniently: a line that is not UTF-8 is sent with U+FFFD in
    place of the bad bytes rather than ending the input.
    """

    def put(line: str | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, line)

    try:
        if prompt:
            while True:
                try:
                    put(input(PROMPT))
                except EOFError:
                    put(None)
                    return
        fd = sys.stdin.fileno()
        pending = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                if pending:
                    put(pending.decode("utf-8", "replace"))
                put(None)
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                put(line.decode("utf-8", "replace"))
    except (OSError, ValueError, RuntimeError):  # stdin closed, or the loop is gone
        with contextlib.suppress(RuntimeError):
            put(None)


async def _send_lines(conn: Conn, queue: asyncio.Queue[str | None]) -> None:
    while True:
        line = await queue.get()
        if line is None:
            return
        await conn.send(line)


async def _receive(conn: Conn, output: _Output, activity: asyncio.Event) -> ConnectionClosed:
    """Print messages until the connection closes; return how it closed."""
    while True:
        try:
            message = await conn.recv()
        except ConnectionClosed as closed:
            return closed
        output.message(message)
        activity.set()


async def _linger(receiver: asyncio.Task[Any], activity: asyncio.Event, quiet: float) -> None:
    """Wait until the server has sent nothing for ``quiet`` seconds (10 s at most).

    epws's protocol core drops data frames that arrive after our close frame (RFC
    6455 lets either way be), so answers still on their way when stdin ends would be
    lost if the close went out at once.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10.0):
            while not receiver.done():
                activity.clear()
                waiter = asyncio.ensure_future(activity.wait())
                done, _ = await asyncio.wait([waiter, receiver], timeout=quiet)
                waiter.cancel()
                if not done:
                    return


async def run(args: argparse.Namespace, headers: list[tuple[str, str]]) -> int:
    """Connect, pump both ways, return the exit status."""
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    output = _Output(sys.stdout, interactive)
    options: dict[str, Any] = {
        "headers": headers,
        "subprotocols": args.subprotocol,
        "origin": args.origin,
        "read_limit": args.max_size,
    }
    if args.ping_interval is not None:
        options["ping_interval"] = options["ping_timeout"] = args.ping_interval
    if args.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    if args.proxy is not None:
        options["proxy"] = None if args.proxy.lower() == "none" else args.proxy
    try:
        conn = await connect(args.url, **options)
    except (EpwsError, OSError, TimeoutError, ValueError, ImportError) as exc:
        print(f"epws: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    if interactive:
        chosen = f" (subprotocol {conn.subprotocol})" if conn.subprotocol else ""
        output.out.write(f"Connected to {args.url}{chosen}. Ctrl-D or Ctrl-C to close.\n")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_lines, args=(loop, queue, interactive), daemon=True).start()
    interrupted = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    activity = asyncio.Event()
    receiver = asyncio.create_task(_receive(conn, output, activity))
    sender = asyncio.create_task(_send_lines(conn, queue))
    stop = asyncio.create_task(interrupted.wait())
    tasks = [receiver, sender, stop]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not interrupted.is_set() and args.linger > 0:
            await _linger(receiver, activity, args.linger)
        # stdin ended, Ctrl-C, or the server closed: close (a no-op if closed) and
        # wait for the close handshake to finish.
        with contextlib.suppress(ConnectionClosed):
            await conn.close(1001 if interrupted.is_set() else 1000)
        closed = await receiver
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
    code, reason = closed.code, closed.reason
    if closed.rcvd_code is None and closed.sent_code not in (None, 1000, 1001):
        # We failed the connection (a keepalive timeout, a protocol error) and no
        # close frame came back: our code says what happened, 1006 would not.
        code, reason = closed.sent_code, closed.sent_reason
    if interactive:
        output.out.write(f"\r\x1b[KConnection closed: {code}{' ' + reason if reason else ''}.\n")
        output.out.flush()
    if interrupted.is_set():
        return EXIT_INTERRUPTED
    if code in (1000, 1001):
        return EXIT_OK
    print(f"epws: connection closed with {code} {reason}".rstrip(), file=sys.stderr)
    return EXIT_LOST if code == 1006 else EXIT_CLOSE_CODE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m epws``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    headers = _headers(args.header, parser)
    if args.ping_interval is not None and args.ping_interval <= 0:
        parser.error("--ping-interval must be positive")
    try:
        return asyncio.run(run(args, headers))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
