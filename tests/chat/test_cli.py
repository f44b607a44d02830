"""The ``epws-chat`` command as a real process: signals, TLS, flags, logs."""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

import epws
from epws_chat.options import build_parser, make_settings

from .rawws import RawClient

EPWS_CHAT = Path(sys.executable).parent / "epws-chat"


class ChatProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self.port = 0
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def wait_for_line(self, pattern: str, timeout: float = 5) -> re.Match[str]:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                seen = len(self.lines)
                if self._reader.done():
                    raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
                self._changed.clear()
                await self._changed.wait()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


def running_loop_name() -> str:
    """The test's loop ("asyncio" or "uvloop"): the server process runs on the same kind."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@asynccontextmanager
async def chat_process(*args: str, loop_name: str = "asyncio") -> AsyncIterator[ChatProcess]:
    assert EPWS_CHAT.exists(), f"{EPWS_CHAT} is missing: pip install -e . first"
    proc = await asyncio.create_subprocess_exec(
        str(EPWS_CHAT),
        *(args or ("--addr", "127.0.0.1:0")),
        "--loop",
        loop_name,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    chat = ChatProcess(proc)
    try:
        match = await chat.wait_for_line(r"listening on \w+://[^:]+:(\d+)/", timeout=15)
        chat.port = int(match.group(1))
        yield chat
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await chat._reader


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_closes_every_client_with_1001_and_exits_0(signum) -> None:
    async with chat_process(loop_name=running_loop_name()) as chat:
        url = f"ws://127.0.0.1:{chat.port}/ws"
        a = await epws.connect(url)
        b = await epws.connect(url)
        await a.send("before")
        async with asyncio.timeout(5):
            assert await a.recv() == "before"
            assert await b.recv() == "before"
        loop = asyncio.get_running_loop()
        started = loop.time()
        chat.proc.send_signal(signum)
        async with asyncio.timeout(5):
            for conn in (a, b):
                with pytest.raises(epws.ConnectionClosedOK) as info:
                    await conn.recv()
                assert info.value.rcvd_code == 1001
            assert await chat.proc.wait() == 0
        assert loop.time() - started < 5
        await chat._reader
    assert chat.log.count("disconnected (close code 1001)") == 2
    assert chat.log.count(" connected") == 2
    assert "shutting down" in chat.log


async def test_shutdown_is_bounded_even_with_a_client_that_never_answers() -> None:
    async with chat_process(
        "--addr", "127.0.0.1:0", "--shutdown-timeout", "0.5", loop_name=running_loop_name()
    ) as chat:
        deaf = await RawClient.connect(chat.port)  # reads nothing, answers nothing
        try:
            await chat.wait_for_line(r"connected")
            loop = asyncio.get_running_loop()
            started = loop.time()
            chat.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                assert await chat.proc.wait() == 0
            assert loop.time() - started < 3
        finally:
            deaf.close()


async def test_tls_serves_https_and_wss(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with chat_process(
        "--addr",
        "127.0.0.1:0",
        "--certfile",
        str(certfile),
        "--keyfile",
        str(keyfile),
        loop_name=running_loop_name(),
    ) as chat:
        assert f"https://127.0.0.1:{chat.port}/" in chat.log
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", chat.port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(5):
            page = await reader.read()
        writer.close()
        assert page.startswith(b"HTTP/1.1 200 ")
        assert b"wss://" in page  # the page picks wss: when served over https
        async with epws.connect(f"wss://127.0.0.1:{chat.port}/ws", ssl=client_ctx) as conn:
            await conn.send("secure")
            async with asyncio.timeout(5):
                assert await conn.recv() == "secure"


async def test_go_style_addr_flag_and_constant_flags() -> None:
    async with chat_process(
        "-addr", "127.0.0.1:0", "--read-limit", "16", loop_name=running_loop_name()
    ) as chat:
        async with epws.connect(f"ws://127.0.0.1:{chat.port}/ws") as conn:
            await conn.send("y" * 16)
            async with asyncio.timeout(5):
                assert await conn.recv() == "y" * 16
                await conn.send("y" * 17)
                with pytest.raises(epws.ConnectionClosed) as info:
                    await conn.recv()
        assert info.value.rcvd_code == 1009


def test_help_explains_the_flags() -> None:
    out = subprocess.run(
        [str(EPWS_CHAT), "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag in (
        "--addr",
        "-addr",
        "--send-buffer",
        "--read-limit",
        "--pong-wait",
        "--ping-period",
        "--write-wait",
        "--certfile",
        "--keyfile",
        "--static",
    ):
        assert flag in out
    for default in (":8080", "256", "512", "60.0", "54", "10.0"):
        assert default in out


def test_bad_flags_are_refused() -> None:
    result = subprocess.run(
        [str(EPWS_CHAT), "--pong-wait", "5", "--ping-period", "5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "ping_period" in result.stderr


def test_flags_map_to_settings() -> None:
    parser = build_parser()
    s = make_settings(parser, parser.parse_args([]))
    assert (s.send_buffer, s.read_limit, s.pong_wait, s.ping_period, s.write_wait) == (
        256,
        512,
        60.0,
        54.0,
        10.0,
    )
    args = parser.parse_args(
        ["-addr=:9000", "--pong-wait", "10", "--send-buffer", "8", "--write-wait", "2"]
    )
    s = make_settings(parser, args)
    assert args.addr == ":9000"
    assert (s.send_buffer, s.pong_wait, s.ping_period, s.write_wait) == (8, 10.0, 9.0, 2.0)
