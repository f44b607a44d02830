"""HTTP/1.1 messages for the opening handshake, without I/O: heads, parsers, builders.

A WebSocket connection starts life as one HTTP/1.1 exchange. This module holds the
messages of that exchange (:class:`Headers`, :class:`Request`, :class:`Response`), the
parsers that read them from bytes and the builders that write them; what a valid
upgrade is lives in :mod:`epws.protocol.handshake`, the header grammar in
:mod:`epws.protocol.headers`. It never touches a socket, so the asyncio layer, the
tests and a fuzzer can all drive it with plain bytes.

The parsers are incremental (any split of the input gives the same result) and bounded:
every limit is enforced while bytes arrive, so a peer that streams an endless header line
is refused once it passes the limit instead of once it has exhausted memory. They are
deliberately strict: bare LF line endings, obs-fold continuation lines, whitespace before
the colon and control characters in values are refused, because lenient HTTP parsing is
where request smuggling and header injection live.

The builders refuse header values carrying CR, LF, NUL or any other control character,
so an application that passes user data into a header cannot split the response.
"""

from __future__ import annotations

import http
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from epws.exceptions import HandshakeError

from .headers import (
    FIELD_LINES_BYTES_RE,
    FIELD_VALUE_BYTES_RE,
    FIELD_VALUE_RE,
    TOKEN_BYTES_RE,
    ascii_lower,
    require_token,
)
from .speedups import pick

__all__ = [
    "Headers",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "build_http_response",
    "is_request_target",
    "render_head",
]

# A request-target is visible ASCII only; anything else is percent-encoded by clients.
_TARGET_BYTES_RE = re.compile(b"[\x21-\x7e]+")
_HTTP_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")
_STATUS_CODE_RE = re.compile(rb"[0-9]{3}")


def is_request_target(resource: str) -> bool:
    """Whether ``resource`` can be sent as a request-target: non-empty visible ASCII."""
    return resource.isascii() and _TARGET_BYTES_RE.fullmatch(resource.encode("ascii")) is not None


def _pack_fields(items: list[tuple[str, str]]) -> bytes:
    """The fields as one block: ``name: value`` lines joined by CRLF, none after the last.

    A name holds no colon and a value no CR or LF, so the lines split back exactly
    (:meth:`Headers.compact` keeps a server's requests this way).
    """
    return "\r\n".join(map(": ".join, items)).encode("latin-1")


class Headers:
    """HTTP header fields: ordered, repeatable, looked up case-insensitively.

    A plain dict would lose both the order and the repeats, and repeats matter here:
    two ``Host`` or two ``Sec-WebSocket-Key`` fields must be detected to be refused.

    A server keeps every connection's request, so after the handshake it calls
    :meth:`compact`: the fields are folded into one bytes block (a few hundred bytes
    instead of a few thousand in tuples, strings and an index) and parsed again only
    if the application looks at them.
    """

    __slots__ = ("_index", "_items", "_packed")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] | None = list(items)
        self._index: dict[str, list[str]] | None = None
        self._packed: bytes | None = None

    @classmethod
    def _parsed(
        cls, items: list[tuple[str, str]], index: dict[str, list[str]], packed: bytes
    ) -> Headers:
        """Headers whose index and packed form the parser made along with the fields.

        While the fields are not changed, :meth:`compact` keeps ``packed`` rather than
        making it again; every change drops it.
        """
        headers = cls.__new__(cls)
        headers._items = items
        headers._index = index
        headers._packed = packed or None
        return headers

    def _fields(self) -> list[tuple[str, str]]:
        items = self._items
        if items is None:
            packed = self._packed
            assert packed is not None  # compact() keeps one of the two
            items = self._items = [
                (name, value)
                for name, _, value in (
                    line.partition(": ") for line in packed.decode("latin-1").split("\r\n")
                )
            ]
        return items

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = self._index = {}
            for name, value in self._fields():
                index.setdefault(ascii_lower(name), []).append(value)
        return index

    def compact(self) -> None:
        """Keep the fields as one bytes block until they are looked at again."""
        items = self._items
        if items:  # (no fields: the empty list is as small as it gets)
            if self._packed is None:
                self._packed = _pack_fields(items)
            self._items = None
        self._index = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default`` when it is absent."""
        values = self._lookup().get(ascii_lower(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order received (empty when absent)."""
        return list(self._lookup().get(ascii_lower(name), ()))

    def field_values(self, key: str) -> Sequence[str]:
        """Every value of the field named ``key``, which must be lowercase ASCII.

        :meth:`get_all` without its case folding and its copy, for the checks a server
        runs on every handshake: the sequence is the stored one, for reading only.
        """
        return self._lookup().get(key, ())

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any earlier ones with the same name."""
        self._fields().append((name, value))
        self._packed = None
        if self._index is not None:
            self._index.setdefault(ascii_lower(name), []).append(value)

    def set(self, name: str, value: str) -> None:
        """Make ``value`` the only value of ``name``: the first such field keeps its
        place, later ones go; appended when there was none."""
        key = ascii_lower(name)
        fields = self._fields()
        out: list[tuple[str, str]] = []
        placed = False
        for field in fields:
            if ascii_lower(field[0]) != key:
                out.append(field)
            elif not placed:
                out.append((name, value))
                placed = True
        if not placed:
            out.append((name, value))
        fields[:] = out
        self._index = None
        self._packed = None

    def remove(self, name: str) -> None:
        """Remove every field named ``name`` (nothing happens when there is none)."""
        key = ascii_lower(name)
        fields = self._fields()
        fields[:] = [field for field in fields if ascii_lower(field[0]) != key]
        self._index = None
        self._packed = None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and ascii_lower(name) in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._fields()!r})"


@dataclass(slots=True)
class Request:
    """An HTTP request head, as received by the server or built by the client."""

    method: str
    target: str
    version: str
    headers: Headers

    @property
    def path(self) -> str:
        """The request-target without its query string."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string, decoded; blank values are kept (``?flag=`` means something)."""
        return urllib.parse.parse_qs(self.target.partition("?")[2], keep_blank_values=True)


@dataclass(slots=True)
class Response:
    """An HTTP response head (and body, for plain HTTP responses built by the server)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""


# --------------------------------------------------------------------------- parsing

_T = TypeVar("_T")

#: What :func:`split_head` returns: the start line, the fields, their index by lowercase
#: name, their packed form (:func:`_pack_fields`) and the offset just past the blank line.
SplitHead = tuple[bytes, list[tuple[str, str]], dict[str, list[str]], bytes, int]


def _split_head_py(
    data: bytes | bytearray, max_line: int, max_headers: int, max_header_bytes: int
) -> SplitHead | None:
    """A whole head, split into its start line and fields, when it breaks no rule.

    None unless ``data`` holds a whole head (up to the first blank line) whose start
    line is not empty, holds no bare LF and is at most ``max_line`` bytes, whose field
    lines all match :data:`~epws.protocol.headers.FIELD_LINES_BYTES_RE`, are at most
    ``max_line`` bytes each and at most ``max_headers`` in all, in a section of at most
    ``max_header_bytes``. The start line itself is left to the caller. The pure-Python
    twin of the C accelerator's ``split_head`` (see speedups.py), which must return
    the same for every input.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    first = data.find(b"\r\n")  # the end of the start line
    if first == 0 or first > max_line:
        return None
    block = data[first + 2 : end + 2]  # the field lines, each with its CRLF
    if (
        len(block) + 2 > max_header_bytes
        or FIELD_LINES_BYTES_RE.fullmatch(block) is None
        or b"\n" in data[:first]  # a bare LF in the start line
    ):
        return None
    lines = bytes(block).decode("latin-1").split("\r\n")
    lines.pop()  # what follows the last CRLF: nothing
    if len(lines) > max_headers or (lines and max(map(len, lines)) > max_line):
        return None
    items: list[tuple[str, str]] = []
    index: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        value = value.strip(" \t")
        items.append((name, value))
        values = index.get(key := name.lower())  # the match made names ASCII
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    return bytes(data[:first]), items, index, _pack_fields(items), end + 4


split_head = pick("split_head", _split_head_py)


def _snippet(data: bytes, limit: int = 60) -> str:
    """A short printable rendering of offending bytes, for error messages."""
    text = repr(data[:limit])
    return text + "..." if len(data) > limit else text


class _HeadParser(Generic[_T]):
    """Shared machinery of the request and response parsers: lines, headers, limits.

    The start line is bounded by ``max_line``; each header line by ``max_line`` too; the
    header section (every field line and the blank line ending it, CRLFs included) by
    ``max_header_bytes``; the number of fields by ``max_headers``. Once the head is
    complete, later bytes belong to the WebSocket stream and are kept in :attr:`rest`.
    """

    #: Client-side parsers report status 0: the server did not give a usable answer.
    _client: ClassVar[bool] = False
    _start_line_too_long: ClassVar[int] = 400

    def __init__(
        self, *, max_line: int = 8192, max_headers: int = 128, max_header_bytes: int = 65536
    ) -> None:
        if max_line < 1 or max_headers < 1 or max_header_bytes < 2:
            raise ValueError("parser limits must be positive (max_header_bytes at least 2)")
        self._max_line = max_line
        self._max_headers = max_headers
        self._max_header_bytes = max_header_bytes
        self._buf = bytearray()
        # Where the next search for LF starts: bytes before it are known to hold none,
        # so byte-at-a-time feeding stays linear rather than quadratic.
        self._scan = 0
        self._start: tuple[str, str, str] | None = None
        self._headers = Headers()
        self._header_bytes = 0
        self._done = False
        self._rest = bytearray()
        self._error: HandshakeError | None = None

    @property
    def rest(self) -> bytes:
        """Bytes received after the blank line ending the head (maybe WebSocket frames)."""
        return bytes(self._rest)

    def feed(self, data: bytes) -> _T | None:
        """Consume ``data``; return the parsed head once complete, else None.

        After the head is complete, further data is appended to :attr:`rest` and None is
        returned. After an error, the parser stays failed and raises the same error again.
        """
        if self._error is not None:
            raise self._error
        if self._done:
            self._rest += data
            return None
        try:
            if self._start is None and not self._buf:
                head = self._parse_whole(data)
                if head is not None:
                    return head
            self._buf += data
            return self._parse()
        except HandshakeError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _parse_whole(self, data: bytes) -> _T | None:
        """The fast path: a whole, well-formed head arriving as the first chunk.

        Nearly every head comes in one read and breaks no rule: :func:`split_head`
        checks all its field lines at once and builds the lookup index on the way,
        instead of line by line. For anything else (a partial head, any line it refuses,
        any limit exceeded) this returns None, having consumed nothing, and
        :meth:`_parse` reads the same bytes and raises the precise error. So the result
        never differs from the line-by-line parser's (tests/protocol/test_http11.py
        holds them, and the C and Python split_head, to that).
        """
        found = split_head(data, self._max_line, self._max_headers, self._max_header_bytes)
        if found is None:
            return None
        start_line, items, index, packed, end = found
        # Checked after the fields: the line-by-line parser raises the same error for it.
        start = self._parse_start(start_line)
        self._start = start
        self._done = True
        self._rest += data[end:]
        return self._build(start, Headers._parsed(items, index, packed))

    def _fail(self, message: str, status: int) -> HandshakeError:
        return HandshakeError(message, 0 if self._client else status)

    def _parse(self) -> _T | None:
        while True:
            lf = self._buf.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(self._buf)
                self._check_pending(len(self._buf))
                return None
            # The limits a pending line is held to apply first, to the bytes before
            # the LF: fed byte by byte they fire before the LF arrives, so they must
            # win over whatever the LF would reveal (a bare LF), for any split.
            self._check_pending(lf)
            line = bytes(self._buf[: lf + 1])
            del self._buf[: lf + 1]
            self._scan = 0
            if not line.endswith(b"\r\n"):
                raise self._fail(f"line ending in a bare LF: {_snippet(line)}", 400)
            content = line[:-2]
            if self._start is None:
                if len(content) > self._max_line:
                    raise self._fail(self._too_long("start line"), self._start_line_too_long)
                if not content:
                    raise self._fail("empty start line", 400)
                self._start = self._parse_start(content)
                continue
            self._header_bytes += len(line)
            if len(content) > self._max_line:
                raise self._fail(self._too_long("header line"), 431)
            if self._header_bytes > self._max_header_bytes:
                raise self._fail(self._too_big(), 431)
            if not content:
                self._done = True
                self._rest += self._buf
                self._buf.clear()
                return self._build(self._start, self._headers)
            if len(self._headers) >= self._max_headers:
                raise self._fail(f"more than {self._max_headers} header fields", 431)
            self._parse_field(content)

    def _check_pending(self, pending: int) -> None:
        """Enforce the limits on a line of which ``pending`` bytes came before its LF.

        A pending line of ``max_line + 2`` bytes is over the limit whatever comes next
        (at best its last byte is the CR), so waiting for more would only buffer more.
        """
        if self._start is None:
            if pending > self._max_line + 1:
                raise self._fail(self._too_long("start line"), self._start_line_too_long)
            return
        # Of the two limits a header line is held to, the one its bytes break first
        # decides: fed byte by byte, that is the one that fires, whatever the split.
        line_at = self._max_line + 2
        section_at = self._max_header_bytes - self._header_bytes + 1
        if pending >= min(line_at, section_at):
            if line_at <= section_at:
                raise self._fail(self._too_long("header line"), 431)
            raise self._fail(self._too_big(), 431)

    def _too_long(self, what: str) -> str:
        return f"{what} longer than {self._max_line} bytes"

    def _too_big(self) -> str:
        return f"header section larger than {self._max_header_bytes} bytes"

    def _parse_field(self, content: bytes) -> None:
        # RFC 7230 §3.2.4: obs-fold is obsolete and a server must refuse it (or rewrite
        # it); refusing is the only choice that cannot be misread by a proxy in front.
        if content[0] in b" \t":
            raise self._fail(f"obsolete line folding (obs-fold): {_snippet(content)}", 400)
        name, colon, value = content.partition(b":")
        if not colon:
            raise self._fail(f"header line without a colon: {_snippet(content)}", 400)
        # Whitespace between name and colon is refused too (RFC 7230 §3.2.4): this catches
        # it, since SP is not a tchar.
        if not TOKEN_BYTES_RE.fullmatch(name):
            raise self._fail(f"invalid header name {_snippet(name)}", 400)
        value = value.strip(b" \t")
        if not FIELD_VALUE_BYTES_RE.fullmatch(value):
            raise self._fail(
                f"control character in the value of {name.decode('ascii')}: {_snippet(value)}",
                400,
            )
        # obs-text is legal in values; latin-1 maps every byte so nothing is lost.
        self._headers.add(name.decode("ascii"), value.decode("latin-1"))

    def _parse_version(self, version: bytes, line: bytes) -> str:
        match = _HTTP_VERSION_RE.fullmatch(version)
        if match is None:
            raise self._fail(f"malformed HTTP version in {_snippet(line)}", 400)
        # RFC 6455 §4.1 requires HTTP/1.1 or higher; later 1.x minors stay compatible,
        # while HTTP/1.0 has no Upgrade and HTTP/2+ never looks like this on the wire.
        if match.group(1) != b"1" or match.group(2) == b"0":
            raise self._fail(f"unsupported HTTP version {version.decode('ascii')}", 505)
        # Every request of a connection's life is kept (Conn.request): the usual
        # spelling costs no string of its own.
        return _HTTP11 if version == b"HTTP/1.1" else version.decode("ascii")

    def _parse_start(self, line: bytes) -> tuple[str, str, str]:
        raise NotImplementedError

    def _build(self, start: tuple[str, str, str], headers: Headers) -> _T:
        raise NotImplementedError


#: The spellings nearly every upgrade request uses, shared by every Request.
_GET = "GET"
_HTTP11 = "HTTP/1.1"


class RequestParser(_HeadParser[Request]):
    """Incremental, bounded parser of the client's request head (server side).

    Errors are :class:`~epws.exceptions.HandshakeError` whose ``status`` is the HTTP
    answer to send: 400 malformed (bare LF is refused), 414 request line over
    ``max_line``, 431 header line over ``max_line``, header section over
    ``max_header_bytes`` or more than ``max_headers`` fields, 505 a version other than
    HTTP/1.x with x >= 1. Every limit fires as soon as the buffered bytes prove it is
    exceeded, never after the oversize input was buffered in full.
    """

    _start_line_too_long = 414

    def _parse_start(self, line: bytes) -> tuple[str, str, str]:
        parts = line.split(b" ")
        if len(parts) != 3:
            raise self._fail(f"malformed request line {_snippet(line)}", 400)
        method, target, version = parts
        if not TOKEN_BYTES_RE.fullmatch(method):
            raise self._fail(f"invalid method in request line {_snippet(line)}", 400)
        if not _TARGET_BYTES_RE.fullmatch(target):
            raise self._fail(f"invalid request-target in request line {_snippet(line)}", 400)
        name = _GET if method == b"GET" else method.decode("ascii")
        return name, target.decode("ascii"), self._parse_version(version, line)

    def _build(self, start: tuple[str, str, str], headers: Headers) -> Request:
        return Request(start[0], start[1], start[2], headers)


class ResponseParser(_HeadParser[Response]):
    """Incremental, bounded parser of the server's response head (client side).

    The body is not read: a 101 has none, and for any other status the handshake has
    failed anyway. Every error is a :class:`~epws.exceptions.HandshakeError` with
    ``status`` 0, meaning the server did not answer usable HTTP.
    """

    _client = True

    def _parse_start(self, line: bytes) -> tuple[str, str, str]:
        version, sp1, rest = line.partition(b" ")
        # The grammar wants "SP reason-phrase" even when the phrase is empty, but a
        # missing trailing space is harmless and common enough to accept.
        status, _, reason = rest.partition(b" ")
        if not sp1 or not _STATUS_CODE_RE.fullmatch(status):
            raise self._fail(f"malformed status line {_snippet(line)}", 400)
        if not FIELD_VALUE_BYTES_RE.fullmatch(reason):
            raise self._fail(f"control character in status line {_snippet(line)}", 400)
        return self._parse_version(version, line), status.decode("ascii"), reason.decode("latin-1")

    def _build(self, start: tuple[str, str, str], headers: Headers) -> Response:
        return Response(int(start[1]), start[2], headers)


def render_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialize a head, refusing anything that could inject a line or a field."""
    lines = [start_line]
    for name, value in headers:
        require_token(name, "header name")
        if not FIELD_VALUE_RE.fullmatch(value):
            raise ValueError(
                f"value of header {name} contains CR, LF, NUL or another control character "
                f"or a non-latin-1 character: {value!r}"
            )
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def build_http_response(
    status: int,
    *,
    body: bytes = b"",
    content_type: str = "text/plain; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
    close: bool = True,
) -> bytes:
    """A plain HTTP/1.1 response, for errors and for requests that are not upgrades.

    The reason phrase is the standard one (empty for unregistered codes). 1xx, 204 and
    304 responses cannot carry a body (RFC 7230 §3.3), so they get no Content-Type or
    Content-Length and a body raises ValueError, as does a control character in a header.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"HTTP status must have three digits, got {status}")
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    fields: list[tuple[str, str]] = []
    if status < 200 or status in (204, 304):
        if body:
            raise ValueError(f"a {status} response cannot have a body")
    else:
        fields.append(("Content-Type", content_type))
        fields.append(("Content-Length", str(len(body))))
    if close:
        fields.append(("Connection", "close"))
    fields.extend(headers)
    return render_head(f"HTTP/1.1 {status} {reason}", fields) + body
