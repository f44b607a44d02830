"""Tests for epws.protocol.handshake: the opening handshake rules of RFC 6455 §4.

The HTTP/1.1 parsers and builders are tested in ``test_http11``, the header grammar in
``test_headers``, URIs in ``test_uri`` (one test module per module of the handshake).
"""

from __future__ import annotations

import base64

import pytest

from epws.exceptions import HandshakeError, NegotiationError
from epws.protocol.handshake import (
    GUID,
    SWITCHING_PROTOCOLS,
    accept_key,
    build_request,
    build_response,
    check_origin_same,
    check_request,
    check_response,
    generate_key,
    is_upgrade_request,
    origin_allowed,
    response_fields,
    select_subprotocol,
)
from epws.protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_http_response,
    render_head,
)

from .samples import ACCEPT, KEY, RESPONSE_BYTES


def make_request(
    *, method: str = "GET", drop: tuple[str, ...] = (), **overrides: str | list[str]
) -> Request:
    """A valid upgrade request, with some fields dropped or replaced (``_`` for ``-``)."""
    base: dict[str, str | list[str]] = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        base[name.replace("_", "-")] = value
    headers = Headers()
    for name, value in base.items():
        if name in drop:
            continue
        for item in [value] if isinstance(value, str) else value:
            headers.add(name, item)
    return Request(method, "/chat", "HTTP/1.1", headers)


def make_response(
    status: int = 101, reason: str = "Switching Protocols", **overrides: str | list[str] | None
) -> Response:
    base: dict[str, str | list[str] | None] = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": ACCEPT,
    }
    for name, value in overrides.items():
        base[name.replace("_", "-")] = value
    headers = Headers()
    for name, value in base.items():
        if value is None:
            continue
        for item in [value] if isinstance(value, str) else value:
            headers.add(name, item)
    return Response(status, reason, headers)


# ------------------------------------------------------------------ keys


def test_accept_key_rfc6455_example() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(KEY) == ACCEPT


def test_generate_key_is_16_random_bytes() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16


# ------------------------------------------------------------------ builders


def test_build_request_vector() -> None:
    data = build_request(
        "server.example.com",
        "/chat?room=1&flag=",
        KEY,
        origin="http://example.com",
        subprotocols=["chat", "superchat"],
    )
    assert data == (
        b"GET /chat?room=1&flag= HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: http://example.com\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"\r\n"
    )


def test_build_request_minimal_with_extensions_and_extras() -> None:
    data = build_request(
        "[::1]:9000",
        "/",
        KEY,
        extensions="permessage-deflate; client_max_window_bits",
        extra_headers=[("User-Agent", "epws"), ("X-Token", "a b")],
    )
    assert data == (
        b"GET / HTTP/1.1\r\n"
        b"Host: [::1]:9000\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"User-Agent: epws\r\n"
        b"X-Token: a b\r\n"
        b"\r\n"
    )


def test_build_response_vector() -> None:
    assert build_response(KEY, subprotocol="chat") == RESPONSE_BYTES
    assert build_response(
        KEY,
        extensions="permessage-deflate",
        extra_headers=[("Server", "epws")],
    ) == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Server: epws\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize("subprotocol", [None, "chat"])
@pytest.mark.parametrize("extensions", [None, "permessage-deflate; server_no_context_takeover"])
@pytest.mark.parametrize("extra", [(), [("Server", "epws"), ("X-Empty", "")]])
def test_build_response_is_the_rendered_fields(
    subprotocol: str | None, extensions: str | None, extra: list[tuple[str, str]]
) -> None:
    # build_response skips checking the fixed fields: the bytes must still be those of
    # the one rendering that checks everything (which process_response's path uses).
    fields = response_fields(
        KEY, subprotocol=subprotocol, extensions=extensions, extra_headers=extra
    )
    built = build_response(KEY, subprotocol=subprotocol, extensions=extensions, extra_headers=extra)
    assert built == render_head(SWITCHING_PROTOCOLS, fields)


@pytest.mark.parametrize(
    "bad", ["a\r\nSet-Cookie: x", "a\nb", "a\rb", "a\x00b", "a\x7fb", "\u20ac"]
)
def test_builders_refuse_header_injection(bad: str) -> None:
    with pytest.raises(ValueError):
        build_response(KEY, subprotocol=bad)
    with pytest.raises(ValueError):
        build_response(KEY, extra_headers=[("X", bad)])
    with pytest.raises(ValueError):
        build_http_response(400, headers=[("X", bad)])
    with pytest.raises(ValueError):
        build_http_response(400, content_type=bad)
    with pytest.raises(ValueError):
        build_request("example.com", "/", KEY, origin=bad)
    with pytest.raises(ValueError):
        build_request(bad, "/", KEY)


def test_builders_refuse_bad_names_and_arguments() -> None:
    with pytest.raises(ValueError):
        build_response(KEY, extra_headers=[("Bad Name", "v")])
    with pytest.raises(ValueError):
        build_response(KEY, extra_headers=[("X:Y", "v")])
    with pytest.raises(ValueError):
        build_request("example.com", "/a b", KEY)
    with pytest.raises(ValueError):
        build_request("example.com", "", KEY)
    with pytest.raises(ValueError):
        build_request("example.com", "/\u00e9", KEY)
    with pytest.raises(ValueError):
        build_request("example.com", "/", KEY, subprotocols=["a b"])
    with pytest.raises(ValueError):
        build_http_response(204, body=b"x")
    with pytest.raises(ValueError):
        build_http_response(42)


# ------------------------------------------------------------------ check_request

UPGRADE_REQUIRED = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
VERSION_ONLY = [("Sec-WebSocket-Version", "13")]


@pytest.mark.parametrize(
    ("request_", "status", "headers", "message"),
    [
        (make_request(method="POST"), 405, [("Allow", "GET")], "must use GET, got POST"),
        (make_request(drop=("Host",)), 400, [], "missing Host header"),
        (make_request(Host=["a", "b"]), 400, [], "2 Host headers, expected one"),
        (
            make_request(drop=("Upgrade",)),
            426,
            UPGRADE_REQUIRED,
            "Upgrade header must include 'websocket', got missing",
        ),
        (
            make_request(Upgrade="h2c"),
            426,
            UPGRADE_REQUIRED,
            "Upgrade header must include 'websocket', got 'h2c'",
        ),
        (
            make_request(Upgrade="websocketx"),
            426,
            UPGRADE_REQUIRED,
            "got 'websocketx'",
        ),
        (
            make_request(drop=("Connection",)),
            426,
            UPGRADE_REQUIRED,
            "Connection header must include 'upgrade', got missing",
        ),
        (
            make_request(Connection="keep-alive"),
            426,
            UPGRADE_REQUIRED,
            "Connection header must include 'upgrade', got 'keep-alive'",
        ),
        (
            make_request(drop=("Sec-WebSocket-Version",)),
            426,
            VERSION_ONLY,
            "Sec-WebSocket-Version must be 13, got missing",
        ),
        (
            make_request(Sec_WebSocket_Version="8"),
            426,
            VERSION_ONLY,
            "Sec-WebSocket-Version must be 13, got '8'",
        ),
        (
            make_request(Sec_WebSocket_Version="13, 8"),
            426,
            VERSION_ONLY,
            "got '13, 8'",
        ),
        (
            make_request(Sec_WebSocket_Version=["13", "13"]),
            426,
            VERSION_ONLY,
            "got '13, 13'",
        ),
        (
            make_request(drop=("Sec-WebSocket-Key",)),
            400,
            [],
            "missing Sec-WebSocket-Key header",
        ),
        (
            make_request(Sec_WebSocket_Key=[KEY, KEY]),
            400,
            [],
            "2 Sec-WebSocket-Key headers, expected one",
        ),
        (
            make_request(Sec_WebSocket_Key="abc"),
            400,
            [],
            "Sec-WebSocket-Key must be base64 of 16 bytes, got 'abc'",
        ),
        (
            # 15 bytes of valid base64.
            make_request(Sec_WebSocket_Key="AAAAAAAAAAAAAAAAAAAA"),
            400,
            [],
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ),
        (
            # Non-alphabet characters are refused, not skipped (validate=True).
            make_request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25j!ZQ=="),
            400,
            [],
            "got 'dGhlIHNhbXBsZSBub25j!ZQ=='",
        ),
        (
            make_request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ"),
            400,
            [],
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ),
        (
            make_request(Sec_WebSocket_Key="dGhlIHNhbXBsZSBub25jZQ==\u00e9"),
            400,
            [],
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        ),
    ],
)
def test_check_request_errors(
    request_: Request, status: int, headers: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        check_request(request_)
    assert exc_info.value.status == status
    assert exc_info.value.headers == headers
    assert message in str(exc_info.value)


@pytest.mark.parametrize(
    "request_",
    [
        make_request(),
        make_request(Upgrade="WebSocket", Connection="keep-alive, UPGRADE"),
        make_request(Upgrade=["h2c", "websocket"], Connection=["keep-alive", "Upgrade"]),
    ],
)
def test_check_request_ok(request_: Request) -> None:
    assert check_request(request_) == KEY
    assert is_upgrade_request(request_)


def test_is_upgrade_request() -> None:
    assert not is_upgrade_request(make_request(drop=("Upgrade",)))
    assert not is_upgrade_request(make_request(Upgrade="h2c"))
    assert is_upgrade_request(make_request(Upgrade="h2c, websocket", drop=("Connection",)))
    assert is_upgrade_request(make_request(Upgrade=" WebSocket\t"))


@pytest.mark.parametrize("upgrade", ["WEBSOC\u212aET", "h2c, websoc\u212aet"])
def test_tokens_fold_ascii_only(upgrade: str) -> None:
    # The Kelvin sign lowers to "k" with str.lower(): it must not pass for "websocket".
    request = make_request(Upgrade=upgrade)
    assert not is_upgrade_request(request)
    with pytest.raises(HandshakeError) as info:
        check_request(request)
    assert info.value.status == 426


# ------------------------------------------------------------------ origins


@pytest.mark.parametrize(
    ("host", "origin", "expected"),
    [
        ("example.com", None, True),
        ("example.com", "http://example.com", True),
        ("example.com", "https://example.com", True),
        ("Example.COM", "http://EXAMPLE.com", True),
        ("example.com:8080", "http://example.com:8080", True),
        ("example.com", "http://example.com:8080", False),
        ("example.com:8080", "http://example.com", False),
        ("example.com:8080", "http://example.com:9090", False),
        ("example.com", "http://example.com:80", False),
        ("example.com", "http://evil.com", False),
        ("example.com", "http://example.com.evil.com", False),
        ("example.com", "null", False),
        ("example.com", "example.com", False),
        ("example.com", "http://user@example.com", False),
        ("example.com", "http://[::1", False),
        ("example.com", "http://example.com:99999", False),
        ("[::1]:9000", "http://[::1]:9000", True),
    ],
)
def test_check_origin_same(host: str, origin: str | None, expected: bool) -> None:
    request = make_request(Host=host) if origin is None else make_request(Host=host, Origin=origin)
    assert check_origin_same(request) is expected


def test_check_origin_same_edge_cases() -> None:
    assert not check_origin_same(make_request(drop=("Host",), Origin="http://example.com"))
    assert check_origin_same(make_request(drop=("Host",)))
    two = make_request(Host="example.com", Origin=["http://example.com", "http://evil.com"])
    assert not check_origin_same(two)


@pytest.mark.parametrize(
    ("origin", "allowed", "expected"),
    [
        (None, ["https://example.com"], True),
        (None, [], True),
        ("https://example.com", ["https://example.com"], True),
        ("HTTPS://Example.com", ["https://EXAMPLE.com"], True),
        ("http://localhost:8080", ["https://example.com", "http://localhost:8080"], True),
        ("http://localhost:8081", ["http://localhost:8080"], False),
        ("http://example.com", ["https://example.com"], False),
        ("https://example.com", [], False),
        ("null", ["https://example.com"], False),
        ("null", ["*"], True),
        ("https://anything.test", ["*"], True),
        (["https://example.com", "https://evil.com"], ["https://example.com"], False),
        (["https://example.com", "https://evil.com"], ["*"], True),
    ],
)
def test_origin_allowed(origin: str | list[str] | None, allowed: list[str], expected: bool) -> None:
    request = make_request() if origin is None else make_request(Origin=origin)
    assert origin_allowed(request, allowed) is expected
    assert origin_allowed(request, iter(allowed)) is expected


# ------------------------------------------------------------------ subprotocols


@pytest.mark.parametrize(
    ("offered", "supported", "expected"),
    [
        (None, ["chat"], None),
        ("chat, superchat", ["superchat", "chat"], "chat"),
        ("superchat, chat", ["chat", "superchat"], "superchat"),
        (["v1.a", "v2.a, v3.a"], ["v3.a", "v2.a"], "v2.a"),
        ("chat", [], None),
        ("chat", ["Chat"], None),
        ("a, b", ["c"], None),
    ],
)
def test_select_subprotocol(
    offered: str | list[str] | None, supported: list[str], expected: str | None
) -> None:
    request = make_request() if offered is None else make_request(Sec_WebSocket_Protocol=offered)
    assert select_subprotocol(request, supported) == expected


# ------------------------------------------------------------------ check_response


def test_check_response_ok() -> None:
    assert check_response(make_response(), KEY, []) is None
    assert check_response(make_response(), KEY, ["chat"]) is None
    ok = make_response(Upgrade="WebSocket", Connection="keep-alive, upgrade")
    assert check_response(ok, KEY, []) is None
    chosen = make_response(Sec_WebSocket_Protocol="superchat")
    assert check_response(chosen, KEY, ["chat", "superchat"]) == "superchat"


@pytest.mark.parametrize(
    ("response", "status", "message"),
    [
        (make_response(403, "Forbidden"), 403, "server answered 403 Forbidden"),
        (make_response(200, "OK"), 200, "server answered 200 OK"),
        (make_response(Upgrade=None), 101, "Upgrade header must be 'websocket', got missing"),
        (make_response(Upgrade="h2c"), 101, "got 'h2c'"),
        (make_response(Upgrade="websocket, h2c"), 101, "got 'websocket, h2c'"),
        (make_response(Connection=None), 101, "Connection header must include 'upgrade'"),
        (make_response(Connection="close"), 101, "got 'close'"),
        (make_response(Sec_WebSocket_Accept=None), 101, "Sec-WebSocket-Accept must be"),
        (make_response(Sec_WebSocket_Accept="x" + ACCEPT[1:]), 101, "Sec-WebSocket-Accept"),
        (make_response(Sec_WebSocket_Accept=[ACCEPT, ACCEPT]), 101, "Sec-WebSocket-Accept"),
    ],
)
def test_check_response_handshake_errors(response: Response, status: int, message: str) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        check_response(response, KEY, ["chat"])
    assert not isinstance(exc_info.value, NegotiationError)
    assert exc_info.value.status == status
    assert message in str(exc_info.value)


@pytest.mark.parametrize(
    ("chosen", "offered", "message"),
    [
        ("superchat", ["chat"], "which was not offered"),
        ("chat", [], "but none was offered"),
        ("chat, superchat", ["chat", "superchat"], "several subprotocols"),
        (["chat", "superchat"], ["chat", "superchat"], "several subprotocols"),
        ("Chat", ["chat"], "which was not offered"),
    ],
)
def test_check_response_negotiation_errors(
    chosen: str | list[str], offered: list[str], message: str
) -> None:
    with pytest.raises(NegotiationError) as exc_info:
        check_response(make_response(Sec_WebSocket_Protocol=chosen), KEY, offered)
    assert message in str(exc_info.value)


def test_round_trip_client_server() -> None:
    key = generate_key()
    request = RequestParser().feed(
        build_request("example.com:8080", "/ws", key, subprotocols=["b", "a"])
    )
    assert request is not None
    assert check_request(request) == key
    subprotocol = select_subprotocol(request, ["a", "b"])
    assert subprotocol == "b"
    response = ResponseParser().feed(build_response(key, subprotocol=subprotocol))
    assert response is not None
    assert check_response(response, key, ["b", "a"]) == "b"
