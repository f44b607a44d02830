"""Identity: JWT connection tokens, checked before the upgrade and at expiry.

Real server, real handshakes: a refused token must be an HTTP status (401, 403)
before any WebSocket exists; a token that expires closes the open connection with
4401 at its ``exp``, not before and not long after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import epws
from epws_chat.auth import EXPIRED_CODE, Identity, TokenAuth, mint, parse_duration
from epws_chat.client import PROTOCOL, clean_room
from epws_chat.server import Chat

from .test_http import http
from .test_rooms import json_lines

SECRET = "s3cret-for-tests-only-0123456789abcdef"
EPWS_CHAT = Path(sys.executable).parent / "epws-chat"


def url(chat: Chat, **query: str) -> str:
    qs = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    return f"ws://127.0.0.1:{chat.port}/ws" + (f"?{qs}" if qs else "")


async def refused_status(chat: Chat, **query: str) -> tuple[int, str]:
    """The HTTP status and body of a refused handshake (the client must see both:
    the page shows the body)."""
    with pytest.raises(epws.HandshakeError) as info:
        async with asyncio.timeout(5):
            await epws.connect(url(chat, **query), subprotocols=[PROTOCOL])
    qs = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    status, _, body = await http(
        chat.port,
        f"GET /ws?{qs} HTTP/1.1\nHost: 127.0.0.1:{chat.port}\nUpgrade: websocket\n"
        "Connection: Upgrade\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
        "Sec-WebSocket-Version: 13\n\n",
    )
    assert status == info.value.status
    return status, body.decode()


async def test_without_a_token_401_with_a_bad_one_401(start) -> None:
    chat = await start(auth=TokenAuth.from_secret(SECRET))
    assert (await refused_status(chat))[0] == 401
    assert (await refused_status(chat, token="not.a.jwt"))[0] == 401
    forged = mint("another-secret-of-the-same-length-0123", "mallory")
    assert (await refused_status(chat, token=forged))[0] == 401
    expired = mint(SECRET, "alice", ttl=60, now=time.time() - 120)
    status, text = await refused_status(chat, token=expired)
    assert status == 401
    assert "expired" in text
    unsigned = jwt.encode({"sub": "eve"}, None, algorithm="none")  # type: ignore[arg-type]
    assert (await refused_status(chat, token=unsigned))[0] == 401
    assert len(chat.hub) == 0


async def test_a_valid_token_names_the_holder_and_rooms_are_checked(start) -> None:
    chat = await start(auth=TokenAuth.from_secret(SECRET))
    token = mint(SECRET, "alice", rooms="dev,ops/*", ttl=3600)
    status, text = await refused_status(chat, token=token, room="sales")
    assert status == 403
    assert "sales" in text
    assert (await refused_status(chat, token=token))[0] == 403  # the default room, "main"
    for room in ("dev", "ops/alerts", "ops/a.b"):
        conn = await epws.connect(
            url(chat, token=token, room=room, name="mallory"), subprotocols=[PROTOCOL]
        )
        try:
            (hello,) = await json_lines(conn, 1)
            assert hello == {"type": "hello", "room": room, "name": "alice"}
            await conn.send(json.dumps({"type": "name", "name": "bob"}))
            await conn.send(json.dumps({"type": "message", "text": "hi"}))
            lines = await json_lines(conn, 2)
            assert lines[0]["type"] == "error"
            assert "token" in lines[0]["text"]
            assert (lines[1]["type"], lines[1]["name"], lines[1]["text"]) == (
                "message",
                "alice",
                "hi",
            )
        finally:
            await conn.close()


async def test_rs256_with_a_public_key_file(start, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(public)
    (tmp_path / "key.pem").write_bytes(private)
    with pytest.raises(ValueError, match="private"):
        TokenAuth.from_public_key(tmp_path / "key.pem")
    chat = await start(auth=TokenAuth.from_public_key(tmp_path / "pub.pem"))
    good = mint(private, "carol", algorithm="RS256")
    conn = await epws.connect(url(chat, token=good), subprotocols=[PROTOCOL])
    (hello,) = await json_lines(conn, 1)
    assert hello["name"] == "carol"
    await conn.close()
    # The public key is public: an HS256 token "signed" with it must not pass.
    confused = jwt.encode(
        {"sub": "mallory", "exp": int(time.time()) + 60},
        "any-secret-at-all-the-server-does-not-have",
        algorithm="HS256",
    )
    assert (await refused_status(chat, token=confused))[0] == 401


async def test_an_open_connection_is_closed_at_its_tokens_expiry(start) -> None:
    chat = await start(auth=TokenAuth.from_secret(SECRET))
    now = time.time()
    exp = int(now) + 2  # exp is whole seconds: between 1 and 2 s from now
    short = jwt.encode({"sub": "dana", "exp": exp}, SECRET, algorithm="HS256")
    long = mint(SECRET, "erin", ttl=3600)
    conns = [
        await epws.connect(url(chat, token=t), subprotocols=[PROTOCOL])
        for t in (short, short, long)
    ]
    assert len(chat.expiry) == 3  # one heap entry each, one loop timer for all
    for conn in conns:
        await json_lines(conn, 1)
    for conn in conns[:2]:
        with pytest.raises(epws.ConnectionClosed) as info:
            async with asyncio.timeout(4):
                while True:
                    await conn.recv()
        closed_at = time.time()
        assert info.value.code == EXPIRED_CODE
        assert info.value.reason == "token expired"
        assert exp - 0.05 <= closed_at <= exp + 0.5
    # The long-lived one is still served.
    await conns[2].send("still here")
    (line,) = await json_lines(conns[2], 1)
    assert line["text"] == "still here"
    assert len(chat.hub) == 1
    await conns[2].close()


async def check(chat: Chat, target: str, method: str = "GET") -> tuple[int, dict[str, str], Any]:
    status, headers, body = await http(chat.port, f"{method} {target} HTTP/1.1\nHost: x\n\n")
    return status, headers, json.loads(body) if status != 405 else body.decode()


async def test_ws_check_says_why_ws_would_be_refused(start) -> None:
    """The page's WebSocket cannot read a refused handshake's status, so it asks here:
    the same check, the same status and text, as JSON."""
    chat = await start(auth=TokenAuth.from_secret(SECRET))
    token = mint(SECRET, "alice", rooms="dev", ttl=3600)
    ws_status, text = await refused_status(chat, token=token, room="ops")
    assert chat.stats is not None
    handshakes = chat.stats.snapshot()["handshakes"]
    status, headers, answer = await check(chat, f"/ws/check?room=dev&token={token}")
    assert (status, answer) == (200, {"ok": True})
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in headers  # same origin only
    status, _, answer = await check(chat, f"/ws/check?room=ops&token={token}")
    assert (status, answer) == (403, {"ok": False, "status": 403, "error": text.strip()})
    assert ws_status == 403 and answer["error"] == "this token does not allow room 'ops'"
    status, _, answer = await check(chat, "/ws/check?room=dev")
    assert status == 401 and answer["error"] == "a token is required: connect with ?token=..."
    expired = mint(SECRET, "alice", ttl=60, now=time.time() - 120)
    status, _, answer = await check(chat, f"/ws/check?token={expired}")
    assert (status, answer["error"]) == (401, "token expired")
    status, headers, _ = await check(chat, "/ws/check", method="POST")
    assert status == 405 and headers["allow"] == "GET"
    # Asking counted no handshake and nobody joined.
    assert chat.stats.snapshot()["handshakes"] == handshakes
    assert len(chat.hub) == 0
    # Without --auth-* every query passes.
    anonymous = await start()
    assert (await check(anonymous, "/ws/check?room=dev"))[::2] == (200, {"ok": True})


async def test_the_logged_page_url_hides_the_token(start, caplog) -> None:
    chat = await start(auth=TokenAuth.from_secret(SECRET))
    token = mint(SECRET, "alice", ttl=3600)
    with caplog.at_level(logging.INFO, logger="epws_chat"):
        status, _, _ = await http(
            chat.port, f"GET /r/dev?x=1&token={token}&y=2 HTTP/1.1\nHost: x\n\n"
        )
        await check(chat, f"/ws/check?token={token}")
    assert status == 200
    assert token not in caplog.text
    assert "GET /r/dev?x=1&token=(hidden)&y=2" in caplog.text


async def test_without_auth_the_chat_stays_anonymous(start) -> None:
    chat = await start()
    conn = await epws.connect(url(chat, name="zoe", token="ignored"), subprotocols=[PROTOCOL])
    (hello,) = await json_lines(conn, 1)
    assert hello["name"] == "zoe"
    await conn.close()


def test_identity_patterns_and_durations() -> None:
    who = Identity("a", rooms=("dev", "ops/*"))
    assert who.allows("dev") and who.allows("ops/x") and who.allows("ops/x/y")
    assert not who.allows("dev2") and not who.allows("ops")
    assert Identity("a").allows("anything")
    with pytest.raises(ValueError, match="32"):
        TokenAuth.from_secret("short")
    assert [parse_duration(t) for t in ("90", "90s", "15m", "1h", "2d")] == [
        90,
        90,
        900,
        3600,
        172800,
    ]
    for bad in ("", "1w", "h", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert clean_room("ops/alerts") == "ops/alerts"
    for bad in ("ops/", "/ops", "a//b", "a/../b", "a/./b"):
        with pytest.raises(ValueError):
            clean_room(bad)


def test_the_token_command_prints_a_token_on_its_last_line() -> None:
    out = subprocess.run(
        [str(EPWS_CHAT), "token", "--sub", "alice", "--rooms", "dev,ops/*", "--ttl", "1h"],
        env={"EPWS_CHAT_AUTH_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    token = out.stdout.strip().splitlines()[-1]
    identity = TokenAuth.from_secret(SECRET).verify(token)
    assert identity.name == "alice"
    assert identity.rooms == ("dev", "ops/*")
    assert identity.expires is not None
    assert 3590 <= identity.expires - time.time() <= 3601
    bad = subprocess.run(
        [str(EPWS_CHAT), "token", "--sub", "alice"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert "--secret" in bad.stderr
