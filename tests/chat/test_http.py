"""The home handler: the page, 404, 405, conditional GET, the request log."""

from __future__ import annotations

import asyncio
import email.utils
import logging
from pathlib import Path

import pytest

from epws_chat.options import parse_addr
from epws_chat.routes import STATIC_DIR


async def http(port: int, request: str) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange (the server closes the connection after answering)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.replace("\n", "\r\n").encode())
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(path: str, method: str = "GET", extra: str = "") -> str:
    return f"{method} {path} HTTP/1.1\nHost: localhost\n{extra}\n"


async def test_root_serves_the_page(start) -> None:
    chat = await start()
    status, headers, body = await http(chat.port, get("/"))
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert body == (STATIC_DIR / "home.html").read_bytes()
    assert b"<title>Chat Example</title>" in body
    assert "last-modified" in headers


async def test_other_paths_get_404(start) -> None:
    chat = await start()
    for path in ("/index.html", "/ws/", "/home.html", "/?x=1/.."):
        status, _, body = await http(chat.port, get(path))
        if path.startswith("/?"):
            assert status == 200  # the query is not part of the path
        else:
            assert (status, body) == (404, b"Not found\n"), path


async def test_room_pages_serve_the_same_page(start) -> None:
    chat = await start()
    page = (STATIC_DIR / "home.html").read_bytes()
    for path in ("/r/dev", "/r/a.b_c-9", "/r/ops/alerts", "/?room=dev"):
        status, _, body = await http(chat.port, get(path))
        assert (status, body) == (200, page), path
    for path in ("/r/no%20space", "/r/a/", "/r/a//b", "/r/" + "x" * 65, "/room/dev"):
        status, _, body = await http(chat.port, get(path))
        assert (status, body) == (404, b"Not found\n"), path
    status, _, _ = await http(chat.port, get("/r/dev", "POST", "Content-Length: 0\n"))
    assert status == 405


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
async def test_other_methods_get_405(start, method: str) -> None:
    chat = await start()
    status, headers, body = await http(chat.port, get("/", method, "Content-Length: 0\n"))
    assert status == 405
    assert headers["allow"] == "GET"
    if method != "HEAD":
        assert body == b"Method not allowed\n"


async def test_conditional_get_answers_304(start) -> None:
    chat = await start()
    _, headers, _ = await http(chat.port, get("/"))
    since = f"If-Modified-Since: {headers['last-modified']}\n"
    status, _, body = await http(chat.port, get("/", extra=since))
    assert (status, body) == (304, b"")
    old = email.utils.formatdate(0, usegmt=True)
    status, _, _ = await http(chat.port, get("/", extra=f"If-Modified-Since: {old}\n"))
    assert status == 200


async def test_ws_path_without_upgrade_is_refused(start) -> None:
    chat = await start()
    status, _, _ = await http(chat.port, get("/ws"))
    assert status == 426


async def test_static_dir_override(start, tmp_path: Path) -> None:
    (tmp_path / "home.html").write_text("<p>custom</p>")
    chat = await start(static_dir=tmp_path)
    status, _, body = await http(chat.port, get("/"))
    assert (status, body) == (200, b"<p>custom</p>")


async def test_each_home_request_is_logged(start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epws_chat")
    chat = await start()
    await http(chat.port, get("/nope?q=1"))
    await http(chat.port, get("/", "POST", "Content-Length: 0\n"))
    messages = [r.getMessage() for r in caplog.records if r.name == "epws_chat"]
    assert "GET /nope?q=1" in messages
    assert "POST /" in messages


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        (":8080", (None, 8080)),
        ("localhost:9000", ("localhost", 9000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8080", ("::1", 8080)),
    ],
)
def test_parse_addr(addr: str, expected: tuple[str | None, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["8080", "host:", ":http", ":70000"])
def test_parse_addr_refuses(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(addr)
