"""Tests for epws.protocol.handshake: the opening handshake of RFC 6455 §4."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, strategies as st

from epws.exceptions import HandshakeError, InvalidURI, NegotiationError
from epws.protocol.handshake import (
    GUID,
    accept_key,
    build_request,
    build_response,
    check_origin_same,
    check_request,
    check_response,
    generate_key,
    is_upgrade_request,
    origin_allowed,
    select_subprotocol,
)
from epws.protocol.headers import parse_extensions, parse_token_list, serialize_extensions
from epws.protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_http_response,
)
from epws.protocol.uri import parse_uri

# RFC 6455 §1.3.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

REQUEST_BYTES = (
    b"GET /chat?room=1&flag= HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
FRAMES = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7 masked "Hello"

RESPONSE_BYTES = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)


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


def feed_chunks(parser: RequestParser | ResponseParser, data: bytes, cuts: list[int]) -> object:
    """Feed ``data`` split at ``cuts``; return the first non-None result."""
    result = None
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in itertools.pairwise(bounds):
        got = parser.feed(data[start:end])
        if got is not None:
            assert result is None
            result = got
    return result


# ------------------------------------------------------------------ keys


def test_accept_key_rfc6455_example() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(KEY) == ACCEPT


def test_generate_key_is_16_random_bytes() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 16


# ------------------------------------------------------------------ Headers


def test_headers_multidict() -> None:
    headers = Headers([("Host", "a"), ("X-Foo", "1"), ("x-foo", "2")])
    assert headers.get("HOST") == "a"
    assert headers.get("x-FOO") == "1"
    assert headers.get_all("X-Foo") == ["1", "2"]
    assert headers.get("missing") is None
    assert headers.get("missing", "d") == "d"
    assert headers.get_all("missing") == []
    assert "host" in headers
    assert "nope" not in headers
    assert 42 not in headers
    assert list(headers) == [("Host", "a"), ("X-Foo", "1"), ("x-foo", "2")]
    assert len(headers) == 3
    headers.add("Host", "b")
    assert headers.get_all("host") == ["a", "b"]
    assert headers == Headers([("Host", "a"), ("X-Foo", "1"), ("x-foo", "2"), ("Host", "b")])
    assert headers != Headers()
    assert headers != list(headers)
    assert "Host" in repr(headers)


def test_headers_fold_ascii_only() -> None:
    # The Kelvin sign lowers to "k" with str.lower(); header names must not match it.
    headers = Headers([("key", "v")])
    assert "\u212aey" not in headers
    assert headers.get("\u212aey") is None


def test_request_path_and_query() -> None:
    request = Request("GET", "/chat?room=1&room=2&flag=", "HTTP/1.1", Headers())
    assert request.path == "/chat"
    assert request.query == {"room": ["1", "2"], "flag": [""]}
    assert Request("GET", "/", "HTTP/1.1", Headers()).query == {}


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


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"status": 404, "body": b"nope"},
            b"HTTP/1.1 404 Not Found\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 4\r\n"
            b"Connection: close\r\n"
            b"\r\n"
            b"nope",
        ),
        (
            {
                "status": 426,
                "headers": [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                "close": False,
                "content_type": "text/html",
            },
            b"HTTP/1.1 426 Upgrade Required\r\n"
            b"Content-Type: text/html\r\n"
            b"Content-Length: 0\r\n"
            b"Upgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"\r\n",
        ),
        (
            {"status": 204},
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        ),
        (
            {"status": 599, "body": b"x"},
            b"HTTP/1.1 599 \r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 1\r\n"
            b"Connection: close\r\n"
            b"\r\n"
            b"x",
        ),
    ],
)
def test_build_http_response_vectors(kwargs: dict[str, object], expected: bytes) -> None:
    assert build_http_response(**kwargs) == expected  # type: ignore[arg-type]


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


# ------------------------------------------------------------------ RequestParser


def test_request_parser_whole() -> None:
    parser = RequestParser()
    request = parser.feed(REQUEST_BYTES + FRAMES)
    assert request is not None
    assert request.method == "GET"
    assert request.target == "/chat?room=1&flag="
    assert request.path == "/chat"
    assert request.query == {"room": ["1"], "flag": [""]}
    assert request.version == "HTTP/1.1"
    assert request.headers.get("sec-websocket-key") == KEY
    assert request.headers.get_all("Sec-WebSocket-Protocol") == ["chat, superchat"]
    assert len(request.headers) == 7
    assert parser.rest == FRAMES
    # Later data joins rest rather than being parsed.
    assert parser.feed(b"more") is None
    assert parser.rest == FRAMES + b"more"
    assert check_request(request) == KEY


def test_request_parser_one_byte_at_a_time() -> None:
    data = REQUEST_BYTES + FRAMES
    parser = RequestParser()
    results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert results.count(None) == len(data) - 1
    assert results[len(REQUEST_BYTES) - 1] == RequestParser().feed(REQUEST_BYTES)
    assert parser.rest == FRAMES


@given(st.lists(st.integers(min_value=1, max_value=len(REQUEST_BYTES + FRAMES) - 1)))
def test_request_parser_any_split(cuts: list[int]) -> None:
    expected = RequestParser().feed(REQUEST_BYTES + FRAMES)
    parser = RequestParser()
    assert feed_chunks(parser, REQUEST_BYTES + FRAMES, cuts) == expected
    assert parser.rest == FRAMES


def test_request_parser_value_whitespace_and_obs_text() -> None:
    request = RequestParser().feed(
        b"GET / HTTP/1.2\r\nHost:example.com\r\nX-A: \t v a l \t\r\nX-B:\r\nX-C: caf\xe9\r\n\r\n"
    )
    assert request is not None
    assert request.version == "HTTP/1.2"
    assert list(request.headers) == [
        ("Host", "example.com"),
        ("X-A", "v a l"),
        ("X-B", ""),
        ("X-C", "caf\u00e9"),
    ]


BAD_REQUESTS = [
    # (input, status, message fragment)
    (b"\r\n", 400, "empty start line"),
    (b"GET / HTTP/1.1\n\n", 400, "bare LF"),
    (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, "bare LF"),
    (b"GET /  HTTP/1.1\r\n\r\n", 400, "malformed request line"),
    (b"GET /\r\n\r\n", 400, "malformed request line"),
    (b"G(T / HTTP/1.1\r\n\r\n", 400, "invalid method"),
    (b"GET /\x7f HTTP/1.1\r\n\r\n", 400, "invalid request-target"),
    (b"GET / HTTP/1.1\x00\r\n\r\n", 400, "malformed HTTP version"),
    (b"GET / HTTP/1.10\r\n\r\n", 400, "malformed HTTP version"),
    (b"GET / http/1.1\r\n\r\n", 400, "malformed HTTP version"),
    (b"GET / HTTP/1.0\r\n\r\n", 505, "HTTP/1.0"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
    (b"GET / HTTP/0.9\r\n\r\n", 505, "HTTP/0.9"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n  folded\r\n\r\n", 400, "obs-fold"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", 400, "obs-fold"),
    (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400, "without a colon"),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "invalid header name"),
    (b"GET / HTTP/1.1\r\n: a\r\n\r\n", 400, "invalid header name"),
    (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "control character in the value of Host"),
    (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400, "control character"),
]


@pytest.mark.parametrize(("data", "status", "fragment"), BAD_REQUESTS)
def test_request_parser_errors(data: bytes, status: int, fragment: str) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser().feed(data)
    assert exc_info.value.status == status
    assert fragment in str(exc_info.value)


@pytest.mark.parametrize(("data", "status", "fragment"), BAD_REQUESTS)
@given(cuts=st.lists(st.integers(min_value=1, max_value=64)))
def test_request_parser_errors_any_split(
    data: bytes, status: int, fragment: str, cuts: list[int]
) -> None:
    parser = RequestParser()
    with pytest.raises(HandshakeError) as exc_info:
        feed_chunks(parser, data, [c for c in cuts if c < len(data)])
    assert exc_info.value.status == status
    # A failed parser stays failed.
    with pytest.raises(HandshakeError):
        parser.feed(b"\r\n\r\n")


# ------------------------------------------------------------------ limits


def test_request_line_limit_boundary() -> None:
    target = b"/" + b"a" * 90
    line = b"GET " + target + b" HTTP/1.1"
    assert len(line) == 104
    assert RequestParser(max_line=104).feed(line + b"\r\nHost: a\r\n\r\n") is not None
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_line=103).feed(line + b"\r\nHost: a\r\n\r\n")
    assert exc_info.value.status == 414


def test_request_line_limit_without_crlf_fails_early() -> None:
    parser = RequestParser(max_line=1000)
    # max_line + 1 bytes may still be a full line plus its CR: no verdict yet.
    assert parser.feed(b"GET /" + b"a" * 996) is None
    with pytest.raises(HandshakeError) as exc_info:
        parser.feed(b"a")
    assert exc_info.value.status == 414


def test_megabyte_request_line_fails_before_being_buffered() -> None:
    parser = RequestParser(max_line=8192)
    chunk = b"a" * 1024
    fed = 0
    with pytest.raises(HandshakeError) as exc_info:
        parser.feed(b"GET /")
        for _ in range(1024):
            parser.feed(chunk)
            fed += len(chunk)
    assert exc_info.value.status == 414
    assert fed <= 8192 + 1024


def test_megabyte_header_line_fails_before_being_buffered() -> None:
    parser = RequestParser(max_line=8192)
    parser.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    fed = 0
    with pytest.raises(HandshakeError) as exc_info:
        for _ in range(1024):
            parser.feed(b"a" * 1024)
            fed += 1024
    assert exc_info.value.status == 431
    assert "header line longer than 8192" in str(exc_info.value)
    assert fed <= 8192 + 1024


def test_header_line_limit_boundary() -> None:
    field = b"X-A: " + b"a" * 45
    data = b"GET / HTTP/1.1\r\n" + field + b"\r\n\r\n"
    assert RequestParser(max_line=50).feed(data) is not None
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_line=49).feed(data)
    assert exc_info.value.status == 431


def test_max_headers() -> None:
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(5))
    data = b"GET / HTTP/1.1\r\n" + fields + b"\r\n"
    request = RequestParser(max_headers=5).feed(data)
    assert request is not None
    assert len(request.headers) == 5
    parser = RequestParser(max_headers=4)
    with pytest.raises(HandshakeError) as exc_info:
        # The fifth field alone is enough; the blank line never has to arrive.
        parser.feed(data[:-2])
    assert exc_info.value.status == 431
    assert "more than 4 header fields" in str(exc_info.value)


def test_max_header_bytes_boundary() -> None:
    # Header section: 4 lines of 10 bytes plus the final CRLF = 42 bytes.
    fields = b"".join(b"X-%d: abc\r\n" % i for i in range(4))
    data = b"GET / HTTP/1.1\r\n" + fields + b"\r\n"
    assert RequestParser(max_header_bytes=42).feed(data) is not None
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_header_bytes=41).feed(data)
    assert exc_info.value.status == 431


def test_max_header_bytes_fails_before_being_buffered() -> None:
    parser = RequestParser(max_line=100, max_header_bytes=1000)
    parser.feed(b"GET / HTTP/1.1\r\n")
    fed = 0
    with pytest.raises(HandshakeError) as exc_info:
        for i in range(100_000):
            line = b"X-%05d: %s\r\n" % (i, b"v" * 40)
            parser.feed(line)
            fed += len(line)
    assert exc_info.value.status == 431
    assert "header section larger than 1000 bytes" in str(exc_info.value)
    assert fed <= 1000 + 51
    # A partial line counts too: 52 bytes of complete field plus 8 pending bytes is
    # within 60, one more byte is not, whether or not its line is ever finished.
    parser = RequestParser(max_line=100, max_header_bytes=60)
    assert parser.feed(b"GET / HTTP/1.1\r\n" + b"X-A: " + b"a" * 45 + b"\r\n") is None
    assert parser.feed(b"X-B: bbb") is None
    with pytest.raises(HandshakeError) as exc_info:
        parser.feed(b"b")
    assert exc_info.value.status == 431


def test_parser_limits_validated() -> None:
    with pytest.raises(ValueError):
        RequestParser(max_line=0)
    with pytest.raises(ValueError):
        ResponseParser(max_headers=0)


# ------------------------------------------------------------------ ResponseParser


def test_response_parser_whole_and_rest() -> None:
    parser = ResponseParser()
    response = parser.feed(RESPONSE_BYTES + FRAMES)
    assert response is not None
    assert response.status == 101
    assert response.reason == "Switching Protocols"
    assert response.body == b""
    assert response.headers.get("sec-websocket-accept") == ACCEPT
    assert parser.rest == FRAMES
    assert check_response(response, KEY, ["chat", "superchat"]) == "chat"


@given(st.lists(st.integers(min_value=1, max_value=len(RESPONSE_BYTES + FRAMES) - 1)))
def test_response_parser_any_split(cuts: list[int]) -> None:
    expected = ResponseParser().feed(RESPONSE_BYTES + FRAMES)
    parser = ResponseParser()
    assert feed_chunks(parser, RESPONSE_BYTES + FRAMES, cuts) == expected
    assert parser.rest == FRAMES


def test_response_parser_one_byte_at_a_time() -> None:
    parser = ResponseParser()
    results = [parser.feed(bytes([b])) for b in RESPONSE_BYTES]
    assert results[:-1] == [None] * (len(RESPONSE_BYTES) - 1)
    assert results[-1] == ResponseParser().feed(RESPONSE_BYTES)
    assert parser.rest == b""


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        (b"HTTP/1.1 101 Switching Protocols", 101, "Switching Protocols"),
        (b"HTTP/1.1 403 ", 403, ""),
        (b"HTTP/1.1 403", 403, ""),
        (b"HTTP/1.1 400 Bad  Request\tnow", 400, "Bad  Request\tnow"),
    ],
)
def test_response_parser_status_lines(status_line: bytes, status: int, reason: str) -> None:
    response = ResponseParser().feed(status_line + b"\r\n\r\n")
    assert response is not None
    assert (response.status, response.reason) == (status, reason)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 1O1 Switching\r\n\r\n",
        b"HTTP/1.1 1010 Switching\r\n\r\n",
        b"HTTP/1.0 101 Switching\r\n\r\n",
        b"HTTP/1.1 101 Bad\x00\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n",
        b"HTTP/1.1 101 OK\n\n",
        b"HTTP/1.1 101 " + b"x" * 200 + b"\r\n\r\n",
    ],
)
def test_response_parser_errors_have_status_0(data: bytes) -> None:
    with pytest.raises(HandshakeError) as exc_info:
        ResponseParser(max_line=100).feed(data)
    assert exc_info.value.status == 0


def test_response_parser_limits_status_0() -> None:
    parser = ResponseParser(max_line=100, max_headers=2)
    with pytest.raises(HandshakeError) as exc_info:
        parser.feed(b"HTTP/1.1 101 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n")
    assert exc_info.value.status == 0
    parser = ResponseParser(max_line=100)
    with pytest.raises(HandshakeError) as exc_info:
        parser.feed(b"HTTP/1.1 101 " + b"x" * 200)
    assert exc_info.value.status == 0


# ------------------------------------------------------------------ token lists


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        (["Upgrade"], ["Upgrade"]),
        (["keep-alive, Upgrade"], ["keep-alive", "Upgrade"]),
        (["a,,b", " , c ,", "\td\t"], ["a", "b", "c", "d"]),
        ([""], []),
    ],
)
def test_parse_token_list(values: list[str], expected: list[str]) -> None:
    assert parse_token_list(values) == expected


# ------------------------------------------------------------------ extensions


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            ['permessage-deflate; client_max_window_bits, x-foo; a="1"'],
            [("permessage-deflate", [("client_max_window_bits", None)]), ("x-foo", [("a", "1")])],
        ),
        ([], []),
        ([""], []),
        ([" , ,"], []),
        (["a", "b;c=d"], [("a", []), ("b", [("c", "d")])]),
        (['a ; b = 1 ;c= "x\\y" ; d'], [("a", [("b", "1"), ("c", "xy"), ("d", None)])]),
        (
            ["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"],
            [
                (
                    "permessage-deflate",
                    [("server_no_context_takeover", None), ("client_max_window_bits", "10")],
                )
            ],
        ),
        (["a,a"], [("a", []), ("a", [])]),
    ],
)
def test_parse_extensions(
    values: list[str], expected: list[tuple[str, list[tuple[str, str | None]]]]
) -> None:
    assert parse_extensions(values) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("; a=1", "expected an extension name"),
        ("=x", "expected an extension name"),
        ('"quoted"', "expected an extension name"),
        ("foo; =1", "expected a parameter name"),
        ("foo;", "expected a parameter name"),
        ("foo; ;", "expected a parameter name"),
        ("foo; a=", "expected a value for a"),
        ("foo; a= ,bar", "expected a value for a"),
        ('foo; a="1', "unterminated quoted-string"),
        ('foo; a="1\\', "unterminated quoted-string"),
        ('foo; a="a b"', "is not a token"),
        ('foo; a=""', "is not a token"),
        ('foo; a="x,y"', "is not a token"),
        ('foo; a="\x01"', "control character"),
        ("foo bar", "unexpected 'b'"),
        ("foo; a=1 2", "unexpected '2'"),
        ('foo; a="1"x', "unexpected 'x'"),
        ("foo; a b", "unexpected 'b'"),
    ],
)
def test_parse_extensions_malformed(value: str, fragment: str) -> None:
    with pytest.raises(NegotiationError) as exc_info:
        parse_extensions([value])
    assert fragment in str(exc_info.value)


def test_serialize_extensions_round_trip() -> None:
    exts: list[tuple[str, list[tuple[str, str | None]]]] = [
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("server_max_window_bits", "10")],
        ),
        ("x-foo", []),
    ]
    text = serialize_extensions(exts)
    assert text == ("permessage-deflate; client_max_window_bits; server_max_window_bits=10, x-foo")
    assert parse_extensions([text]) == exts
    assert serialize_extensions([]) == ""


@pytest.mark.parametrize(
    "exts",
    [
        [("bad name", [])],
        [("x", [("bad param", None)])],
        [("x", [("p", "a b")])],
        [("x", [("p", "")])],
    ],
)
def test_serialize_extensions_refuses_non_tokens(
    exts: list[tuple[str, list[tuple[str, str | None]]]],
) -> None:
    with pytest.raises(ValueError):
        serialize_extensions(exts)


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


def test_http_response_parses_back() -> None:
    parser = ResponseParser()
    response = parser.feed(build_http_response(403, body=b"forbidden"))
    assert response is not None
    assert (response.status, response.reason) == (403, "Forbidden")
    assert response.headers.get("Content-Length") == "9"
    assert parser.rest == b"forbidden"


# ------------------------------------------------------------------ parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ws://example.com", (False, "example.com", 80, "/", "example.com")),
        ("ws://example.com/", (False, "example.com", 80, "/", "example.com")),
        ("wss://example.com", (True, "example.com", 443, "/", "example.com")),
        ("ws://example.com:80/a", (False, "example.com", 80, "/a", "example.com")),
        ("wss://example.com:443/a", (True, "example.com", 443, "/a", "example.com")),
        ("ws://example.com:443/a", (False, "example.com", 443, "/a", "example.com:443")),
        ("wss://example.com:80/a", (True, "example.com", 80, "/a", "example.com:80")),
        ("ws://[::1]:9000/x?y=1", (False, "::1", 9000, "/x?y=1", "[::1]:9000")),
        ("wss://[::1]/", (True, "::1", 443, "/", "[::1]")),
        ("ws://127.0.0.1:8765", (False, "127.0.0.1", 8765, "/", "127.0.0.1:8765")),
        ("WS://Example.COM/Path", (False, "example.com", 80, "/Path", "example.com")),
        ("ws://example.com?q", (False, "example.com", 80, "/?q", "example.com")),
        ("ws://example.com/a%20b?c=%2F", (False, "example.com", 80, "/a%20b?c=%2F", "example.com")),
        ("ws://example.com/caf\u00e9", (False, "example.com", 80, "/caf%C3%A9", "example.com")),
        (
            "ws://b\u00fccher.example/",
            (False, "xn--bcher-kva.example", 80, "/", "xn--bcher-kva.example"),
        ),
    ],
)
def test_parse_uri(uri: str, expected: tuple[bool, str, int, str, str]) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/",
        "https://example.com/",
        "example.com",
        "//example.com/",
        "ws:/path",
        "ws://",
        "ws://:80/",
        "ws://user:pass@example.com/",
        "ws://user@example.com/",
        "ws://example.com/#frag",
        "ws://example.com/#",
        "ws://example.com:99999/",
        "ws://example.com:0/",
        "ws://example.com:port/",
        "ws://[::1/",
        "ws://exa mple.com/",
        "ws://example.com/\r\nX: y",
        "ws://example.com/\t",
        "ws://" + "\u00e9" * 70 + ".example/",
    ],
)
def test_parse_uri_invalid(uri: str) -> None:
    with pytest.raises(InvalidURI):
        parse_uri(uri)


def test_headers_compact_keeps_every_field_and_lookup() -> None:
    headers = Headers(
        [("Host", "a:1"), ("X-Many", "1"), ("x-many", "2"), ("Empty", ""), ("Odd", "a: b")]
    )
    before = (list(headers), len(headers), headers.get_all("X-MANY"), headers.get("odd"))
    headers.compact()
    assert headers._items is None  # really folded
    after = (list(headers), len(headers), headers.get_all("X-MANY"), headers.get("odd"))
    assert before == after
    assert after[0][3] == ("Empty", "")
    headers.compact()
    headers.add("Late", "x")
    assert headers.get("late") == "x" and len(headers) == 6
