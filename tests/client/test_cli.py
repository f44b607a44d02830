"""``python -m epws``, run as a real subprocess against real servers: through pipes
and through a pseudo-terminal (interactive, with readline's line editing).
"""

from __future__ import annotations

import asyncio
import os
import pty
import ssl
import sys
from pathlib import Path

import pytest
import trustme

import epws
from epws import Request
from epws.asyncio.keepalive import KEEPALIVE_PAYLOAD
from epws.cli import render

from . import proxies
from .servers import echo, epws_server, raw_server, read_client_frame, server_frame, switching

CLI = [sys.executable, "-m", "epws"]


async def run_cli(*args: str, stdin: bytes = b"", timeout: float = 20) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------- through pipes


async def test_piped_lines_are_messages_and_answers_are_printed() -> None:
    async with epws_server(echo) as server:
        rc, out, err = await run_cli(
            f"ws://127.0.0.1:{server.port}/", "--linger", "0.5", stdin=b"a\nb\n\xffc\n"
        )
    assert (rc, out, err) == (0, "a\nb\n\ufffdc\n", "")


async def test_last_line_without_newline_is_sent() -> None:
    async with epws_server(echo) as server:
        rc, out, _ = await run_cli(f"ws://127.0.0.1:{server.port}/", stdin=b"one\ntwo")
    assert (rc, out) == (0, "one\ntwo\n")


async def test_server_messages_arrive_without_input_and_binary_is_hex() -> None:
    async def talk(conn: epws.Conn) -> None:
        await conn.send("hello")
        await conn.send(b"\x00\xffA")
        await conn.send("\x1b[31mred")  # not a terminal: passed through as is
        await conn.close()

    async with epws_server(talk) as server:
        rc, out, _ = await run_cli(f"ws://127.0.0.1:{server.port}/")
    assert rc == 0
    assert out == "hello\n[binary 3 bytes] 00ff41\n\x1b[31mred\n"


def test_render_escapes_controls_for_a_terminal_only() -> None:
    shown = render("a\x1b]0;pwned\x07b\tc\nd\x9b", terminal=True)
    assert shown == "a\\x1b]0;pwned\\x07b\tc\nd\\x9b"
    assert render("a\x1bb", terminal=False) == "a\x1bb"
    assert render(b"", terminal=True) == "[binary 0 bytes] "


async def test_headers_subprotocol_and_origin_are_sent() -> None:
    seen: list[Request] = []
    chosen: list[str | None] = []

    async def handler(conn: epws.Conn) -> None:
        chosen.append(conn.subprotocol)
        await conn.send(conn.subprotocol or "")

    async with epws_server(
        handler, subprotocols=["chat"], process_request=seen.append, check_origin=lambda r: True
    ) as server:
        rc, out, err = await run_cli(
            f"ws://127.0.0.1:{server.port}/",
            "--header",
            "Authorization: Bearer t0k",
            "-H",
            "X-Two:2",
            "--subprotocol",
            "superchat",
            "-s",
            "chat",
            "--origin",
            "https://example.test",
        )
    assert rc == 0, err
    assert out == "chat\n"
    headers = seen[0].headers
    assert headers.get("Authorization") == "Bearer t0k"
    assert headers.get("X-Two") == "2"
    assert headers.get("Origin") == "https://example.test"
    assert headers.get("Sec-WebSocket-Protocol") == "superchat, chat"


async def test_exit_status_follows_the_close_code() -> None:
    async def close_4000(conn: epws.Conn) -> None:
        await conn.close(4000, "go away")

    async def drop(conn: epws.Conn) -> None:
        conn.abort()

    async with epws_server(close_4000) as server:
        rc, _, err = await run_cli(f"ws://127.0.0.1:{server.port}/")
    assert rc == 4
    assert "4000 go away" in err
    async with epws_server(drop) as server:
        rc, _, err = await run_cli(f"ws://127.0.0.1:{server.port}/")
    assert rc == 3
    assert "1006" in err


async def test_cannot_connect_and_bad_arguments() -> None:
    rc, _, err = await run_cli("ws://127.0.0.1:9/")
    assert rc == 1
    assert "cannot connect" in err
    rc, _, err = await run_cli("http://example.test/")
    assert rc == 1
    assert "ws://" in err
    rc, _, err = await run_cli("ws://127.0.0.1:9/", "--header", "nocolon")
    assert rc == 2
    assert "Name: value" in err


async def test_insecure_skips_certificate_verification() -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with epws_server(echo, ssl=ctx) as server:
        url = f"wss://127.0.0.1:{server.port}/"
        rc, _, err = await run_cli(url, stdin=b"x\n")
        assert rc == 1
        assert "CERTIFICATE_VERIFY_FAILED" in err
        rc, out, err = await run_cli(url, "--insecure", stdin=b"x\n")
        assert (rc, out) == (0, "x\n"), err


async def test_proxy_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with epws_server(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        with proxies.tinyproxy(tmp_path) as pport:
            rc, out, err = await run_cli(url, "--proxy", f"http://127.0.0.1:{pport}", stdin=b"p\n")
            assert (rc, out) == (0, "p\n"), err
        log = next(tmp_path.glob("tinyproxy-*.log")).read_text()
        assert f"127.0.0.1:{server.port}" in log  # the proxy carried it
        monkeypatch.setenv("ws_proxy", f"http://127.0.0.1:{pport}")  # down by now
        rc, _, err = await run_cli(url, stdin=b"p\n")
        assert rc == 1
        assert "proxy" in err
        rc, out, _ = await run_cli(url, "--proxy", "none", stdin=b"p\n")
        assert (rc, out) == (0, "p\n")


async def test_ping_interval_pings_and_closes_a_silent_peer() -> None:
    pings: list[bytes] = []

    async def handler(conn: epws.Conn) -> None:
        conn.ping_handler = pings.append
        await echo(conn)

    async with epws_server(handler) as server:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            f"ws://127.0.0.1:{server.port}/",
            "--ping-interval",
            "0.2",
            "--linger",
            "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            while len(pings) < 3:
                await asyncio.sleep(0.05)
            await proc.communicate(b"")
        assert proc.returncode == 0
    assert len(pings) >= 3
    # The library's keepalive pings, not a loop of the CLI's own (4 random bytes each).
    assert set(pings) == {KEEPALIVE_PAYLOAD}

    # A peer that never answers pings: closed with 1011 after interval + interval.
    async def deaf(reader, writer, req):
        writer.write(switching(req["sec-websocket-key"]))
        while True:
            opcode, payload = await read_client_frame(reader)
            if opcode == 8:
                writer.write(server_frame(8, payload))
                await writer.drain()
                writer.close()
                return

    async with raw_server(deaf) as srv:
        loop = asyncio.get_running_loop()
        started = loop.time()
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            f"ws://127.0.0.1:{srv.port}/",
            "--ping-interval",
            "0.3",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            await proc.wait()  # stdin stays open: only the ping timeout ends it
        elapsed = loop.time() - started
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert proc.stdin is not None
        proc.stdin.close()
    assert proc.returncode == 4
    assert "1011" in err
    assert elapsed < 10  # 0.6 s of pinging plus start-up, well under close_timeout


# ---------------------------------------------------------------- through a pty


class Pty:
    """The CLI on a pseudo-terminal: what it writes is collected as it comes."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.buf = b""
        self.changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> None:
        loop = asyncio.get_running_loop()
        env = dict(os.environ, TERM="xterm", INPUTRC="/dev/null")
        self.proc = await asyncio.create_subprocess_exec(
            *CLI, *args, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env
        )
        os.close(self.slave)
        loop.add_reader(self.master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
        self.buf += data
        self.changed.set()

    async def expect(self, text: bytes, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while text not in self.buf:
                self.changed.clear()
                await self.changed.wait()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def test_interactive_session_on_a_pty() -> None:
    conns: list[epws.Conn] = []

    async def handler(conn: epws.Conn) -> None:
        conns.append(conn)
        await echo(conn)

    async with epws_server(handler) as server:
        term = Pty()
        try:
            await term.start(f"ws://127.0.0.1:{server.port}/", "--linger", "0.2")
            await term.expect(b"Connected to")
            await term.expect(b"> ")
            # readline's editing: Ctrl-A goes to the start of the line.
            term.type(b"world\x01hello \r")
            await term.expect(b"< hello world")
            # A message the server sends on its own shows while a line is half typed,
            # and the typed text is shown again after it.
            term.type(b"half")
            await asyncio.sleep(0.2)
            await conns[0].send("\x1b[2Jnews")
            await term.expect(b"< \\x1b[2Jnews")  # escaped: the screen is not cleared
            await term.expect(b"> half")
            term.type(b"\x15")  # Ctrl-U: erase the half line
            term.type(b"\x04")  # Ctrl-D on an empty line: end of input
            await term.expect(b"Connection closed: 1000")
            assert term.proc is not None
            async with asyncio.timeout(15):
                assert await term.proc.wait() == 0
        finally:
            if term.proc is not None and term.proc.returncode is None:
                term.proc.kill()
                await term.proc.wait()
            term.close()
