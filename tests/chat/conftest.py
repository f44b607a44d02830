"""Fixtures for the chat tests: in-process chat servers and real server-side conns."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import epws
from epws_chat.server import Chat, start_chat

from .rawws import RawClient

StartChat = Callable[..., Awaitable[Chat]]


@pytest.fixture
async def start() -> AsyncIterator[StartChat]:
    """``await start(settings, **kw)``: a chat server on 127.0.0.1, closed after the test."""
    chats: list[Chat] = []

    async def _start(settings: Any = None, **kw: Any) -> Chat:
        chat = await start_chat(settings, "127.0.0.1", 0, **kw)
        chats.append(chat)
        return chat

    yield _start
    for chat in chats:
        await chat.close(timeout=2)


@pytest.fixture
async def conn_pairs() -> AsyncIterator[
    Callable[[int], Awaitable[list[tuple[epws.Conn, epws.Conn]]]]
]:
    """``await conn_pairs(n)``: n live (server side, client side) connection pairs."""
    queue: asyncio.Queue[epws.Conn] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        await queue.put(conn)
        await done.wait()

    server = await epws.serve(handler, "127.0.0.1", 0)
    clients: list[epws.Conn] = []

    async def make(n: int) -> list[tuple[epws.Conn, epws.Conn]]:
        out = []
        for _ in range(n):
            client = await epws.connect(f"ws://127.0.0.1:{server.port}/")
            clients.append(client)
            async with asyncio.timeout(5):
                out.append((await queue.get(), client))
        return out

    yield make
    done.set()
    for client in clients:
        client.abort()
    await server.close(timeout=2)


def small_send_buffer_listener() -> socket.socket:
    """A listening socket whose accepted sockets have a small kernel send buffer.

    Accepted sockets inherit SO_SNDBUF from the listener on Linux; a small one makes
    a client that never reads back up into the server's own buffers after kilobytes
    instead of megabytes, which keeps the eviction tests fast.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    return sock


@pytest.fixture
async def stuck_pairs() -> AsyncIterator[
    Callable[[int], Awaitable[list[tuple[epws.Conn, RawClient]]]]
]:
    """``await stuck_pairs(n)``: n (server side, raw client that never reads) pairs.

    Both kernel buffers are small, so what the server writes backs up into the
    connection's own outgoing buffer (``buffered_amount``) after a few kilobytes.
    """
    queue: asyncio.Queue[epws.Conn] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(conn: epws.Conn) -> None:
        await queue.put(conn)
        await done.wait()

    server = await epws.serve(handler, sock=small_send_buffer_listener())
    clients: list[RawClient] = []

    async def make(n: int) -> list[tuple[epws.Conn, RawClient]]:
        out = []
        for _ in range(n):
            client = await RawClient.connect(server.port, rcvbuf=4096, path="/")
            clients.append(client)
            async with asyncio.timeout(5):
                out.append((await queue.get(), client))
        return out

    yield make
    done.set()
    for client in clients:
        client.close()
    await server.close(timeout=2)


def ws_url(chat: Chat, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{chat.port}{path}"
