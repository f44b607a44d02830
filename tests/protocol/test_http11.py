"""Tests for epws.protocol.http11: HTTP/1.1 heads, their parsers, limits and builders."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings, strategies as st

from epws.exceptions import HandshakeError
from epws.protocol.handshake import check_request, check_response
from epws.protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    ResponseParser,
    _split_head_py,
    build_http_response,
)

from .samples import ACCEPT, FRAMES, KEY, REQUEST_BYTES, RESPONSE_BYTES, head_outcome


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


def test_http_response_parses_back() -> None:
    parser = ResponseParser()
    response = parser.feed(build_http_response(403, body=b"forbidden"))
    assert response is not None
    assert (response.status, response.reason) == (403, "Forbidden")
    assert response.headers.get("Content-Length") == "9"
    assert parser.rest == b"forbidden"


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


# ------------------------------------------------------------------ the one-chunk fast path
#
# A head that arrives whole in the first chunk is parsed by _HeadParser._parse_whole; fed
# a byte at a time, the same bytes take the line-by-line path. The two must agree on
# everything: the head, every lookup, the rest, or the error's status and message.

#: What field lines are made of, mostly valid, with every mistake the parser refuses:
#: names with spaces or none, missing colons, control characters, obs-text, folding,
#: bare CR or LF, and lines long enough to meet the small limits below.
_NAMES = [b"Host", b"HOST", b"X-A", b"x-a", b"Upgrade", b"Bad Name", b"", b" Folded", b"\tFold"]
_SEPARATORS = [b":", b": ", b":\t ", b" :", b""]
_VALUES = [b"v", b"", b"  a b  ", b"a,b", b"caf\xe9", b"a\x00b", b"a\x7fb", b"a\rb", b"x" * 40]
_ENDS = [b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n"]
_STARTS = [
    b"GET /ws HTTP/1.1",
    b"GET /ws HTTP/1.0",
    b"G(T / HTTP/1.1",
    b"GET  / HTTP/1.1",
    b"HTTP/1.1 101 Switching Protocols",
    b"HTTP/1.1 200",
    b"",
    b"GET /" + b"p" * 40 + b" HTTP/1.1",
]
_ANY_LINE = st.tuples(
    st.sampled_from(_NAMES),
    st.sampled_from(_SEPARATORS),
    st.sampled_from(_VALUES),
    st.sampled_from(_ENDS),
).map(b"".join)
_GOOD_LINE = st.tuples(
    st.sampled_from(_NAMES[:5]),
    st.sampled_from(_SEPARATORS[:3]),
    st.sampled_from(_VALUES[:6] + _VALUES[-1:]),
).map(lambda parts: b"".join(parts) + b"\r\n")
#: Mostly well-formed lines, so that many heads reach the fast path and its limits.
_LINE = st.one_of(_GOOD_LINE, _GOOD_LINE, _GOOD_LINE, _ANY_LINE)
#: Heads of those lines: a start line (mostly a valid one), its line ending, the field
#: lines, and how the head ends (a blank line, with frames behind it, or not at all).
_HEADS = st.tuples(
    st.sampled_from(_STARTS[:1] * 3 + _STARTS[4:5] * 2 + _STARTS),
    st.sampled_from(_ENDS),
    st.lists(_LINE, max_size=8).map(b"".join),
    st.sampled_from([b"\r\n", b"\r\n\x81\x05hello", b"", b"\n"]),
).map(b"".join)


@settings(max_examples=500)
@given(
    data=_HEADS,
    limits=st.tuples(
        st.sampled_from([8, 24, 48, 8192]),
        st.sampled_from([1, 3, 128]),
        st.sampled_from([2, 40, 120, 65536]),
    ),
    response=st.booleans(),
)
def test_whole_head_fast_path_agrees_with_line_by_line(
    data: bytes, limits: tuple[int, int, int], response: bool
) -> None:
    make = ResponseParser if response else RequestParser
    max_line, max_headers, max_header_bytes = limits

    def parser() -> RequestParser | ResponseParser:
        return make(max_line=max_line, max_headers=max_headers, max_header_bytes=max_header_bytes)

    whole = head_outcome(parser(), [data])
    bytewise = head_outcome(parser(), [data[i : i + 1] for i in range(len(data))])
    assert whole == bytewise


try:
    from epws import _speedups
except ImportError:  # no compiler at install: the pure-Python pass still runs the rest
    _speedups = None  # type: ignore[assignment]
c_split_head = _speedups.split_head if _speedups is not None else None

needs_accelerator = pytest.mark.skipif(
    c_split_head is None and not os.environ.get("EPWS_EXPECT_EXTENSION"),
    reason="the C accelerator is not built",
)


@needs_accelerator
@settings(max_examples=500)
@given(
    head=_HEADS,
    limits=st.tuples(
        st.sampled_from([0, 8, 24, 48, 8192]),
        st.sampled_from([0, 1, 3, 128]),
        st.sampled_from([2, 40, 120, 65536]),
    ),
    noise=st.binary(max_size=4),
)
def test_c_split_head_is_its_python_twin(
    head: bytes, limits: tuple[int, int, int], noise: bytes
) -> None:
    # The same answer (None, or every part of the split) for every input, bytes or
    # bytearray: the server uses whichever is built.
    assert c_split_head is not None
    data = head + noise
    for given_data in (data, bytearray(data), noise + data):
        assert c_split_head(given_data, *limits) == _split_head_py(given_data, *limits)


@needs_accelerator
def test_c_split_head_vectors() -> None:
    assert c_split_head is not None
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \t b c \t\r\nx-a:\r\nN: caf\xe9\r\n\r\nrest"
    expected = (
        b"GET / HTTP/1.1",
        [("Host", "a"), ("X-A", "b c"), ("x-a", ""), ("N", "caf\u00e9")],
        {"host": ["a"], "x-a": ["b c", ""], "n": ["caf\u00e9"]},
        b"Host: a\r\nX-A: b c\r\nx-a: \r\nN: caf\xe9",
        len(head) - 4,
    )
    assert (
        c_split_head(head, 8192, 128, 65536) == expected == _split_head_py(head, 8192, 128, 65536)
    )
    long_name = b"X-" + b"n" * 100  # past the C code's small buffer for a lowered name
    head = b"GET / HTTP/1.1\r\n" + long_name + b": v\r\n\r\n"
    assert c_split_head(head, 8192, 128, 65536) == _split_head_py(head, 8192, 128, 65536)
    with pytest.raises(TypeError):
        c_split_head("not bytes", 1, 1, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c_split_head(b"", 1, 1)  # type: ignore[call-arg]


def test_whole_head_fast_path_is_taken_and_builds_the_index() -> None:
    # The usual request, whole: parsed in one pass, its index made along the way.
    parser = RequestParser()
    request = parser.feed(REQUEST_BYTES + FRAMES)
    assert request is not None
    assert request.headers._index is not None  # built by the fast path, not on demand
    assert request.headers.field_values("sec-websocket-key") == [KEY]
    assert request.headers.field_values("absent") == ()
    assert parser.rest == FRAMES
    # At each limit exactly, the fast path still takes it; one past, the error is the
    # line-by-line parser's.
    line = b"X-Long: " + b"v" * 32
    head = b"GET / HTTP/1.1\r\n" + line + b"\r\n\r\n"
    assert RequestParser(max_line=len(line), max_header_bytes=len(line) + 4).feed(head)
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_line=len(line) - 1).feed(head)
    assert exc_info.value.status == 431 and "header line longer" in str(exc_info.value)
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_header_bytes=len(line) + 3).feed(head)
    assert exc_info.value.status == 431 and "header section larger" in str(exc_info.value)
    with pytest.raises(HandshakeError) as exc_info:
        RequestParser(max_headers=1).feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n")
    assert exc_info.value.status == 431 and "more than 1 header" in str(exc_info.value)


def test_the_limit_a_header_line_breaks_first_decides_for_every_split() -> None:
    # The section limit (2 bytes) falls before the line limit (24): fed byte by byte, the
    # section's fires first, so it must for the whole head too. Found by the fast path's
    # shadow test: the whole head used to report the line limit.
    head = b"GET /ws HTTP/1.1\r\nHost:" + b"x" * 40 + b"\r\n\r\n"
    for cuts in ([], list(range(1, len(head)))):
        with pytest.raises(HandshakeError) as exc_info:
            feed_chunks(RequestParser(max_line=24, max_header_bytes=2), head, cuts)
        assert "header section larger than 2 bytes" in str(exc_info.value)


def test_compact_keeps_the_parsers_block_until_a_change() -> None:
    # The fast path hands Headers the packed form along with the fields: compact()
    # keeps it instead of making it again, and any change drops it.
    request = RequestParser().feed(b"GET / HTTP/1.1\r\nHost:a\r\nX-A:  b \r\n\r\n")
    assert request is not None
    headers = request.headers
    block = headers._packed
    assert block == b"Host: a\r\nX-A: b"
    headers.compact()
    assert headers._items is None and headers._packed is block
    assert list(headers) == [("Host", "a"), ("X-A", "b")]
    changes: list[Callable[[], None]] = [
        lambda: headers.add("Late", "1"),
        lambda: headers.set("X-A", "c"),
        lambda: headers.remove("Host"),
    ]
    for change in changes:
        before = list(headers)
        change()
        assert headers._packed is None  # dropped by the change
        after = list(headers)
        assert after != before
        headers.compact()
        assert list(headers) == after  # the block made again holds the change
