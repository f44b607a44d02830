"""The opening handshake of RFC 6455 §4, both sides, without I/O.

A WebSocket connection starts life as one HTTP/1.1 exchange: the client sends a ``GET``
with ``Upgrade: websocket``, the server answers ``101 Switching Protocols``. This module
parses and builds those two messages and validates them, and nothing else: it never
touches a socket, so the asyncio layer, the tests and a fuzzer can all drive it with
plain bytes.

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

import base64
import binascii
import hashlib
import http
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from epws.exceptions import HandshakeError, InvalidURI, NegotiationError

__all__ = [
    "GUID",
    "Headers",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "accept_key",
    "build_http_response",
    "build_request",
    "build_response",
    "check_origin_same",
    "check_request",
    "check_response",
    "generate_key",
    "is_upgrade_request",
    "origin_allowed",
    "parse_extensions",
    "parse_token_list",
    "parse_uri",
    "select_subprotocol",
    "serialize_extensions",
]

#: The magic string of RFC 6455 §1.3, appended to the key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 7230 §3.2.6: token = 1*tchar. Kept as text so the same class serves str and bytes.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN_RE = re.compile(f"[{_TCHAR}]+")
_TOKEN_BYTES_RE = re.compile(f"[{_TCHAR}]+".encode("ascii"))
# RFC 7230 §3.2: field-value is VCHAR, SP, HTAB and obs-text; everything else is a CTL.
_FIELD_VALUE_RE = re.compile("[\t\x20-\x7e\x80-\xff]*")
_FIELD_VALUE_BYTES_RE = re.compile(b"[\t\x20-\x7e\x80-\xff]*")
# A request-target is visible ASCII only; anything else is percent-encoded by clients.
_TARGET_BYTES_RE = re.compile(b"[\x21-\x7e]+")
_HTTP_VERSION_RE = re.compile(rb"HTTP/([0-9])\.([0-9])")
_STATUS_CODE_RE = re.compile(rb"[0-9]{3}")
_OWS = " \t"

# Header names and tokens are ASCII: str.lower() would also fold non-ASCII letters
# (the Kelvin sign lowers to "k"), which would let "\u212aey" match "key".
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(s: str) -> str:
    # str.lower() also folds some non-ASCII letters to ASCII (the Kelvin sign U+212A
    # becomes "k"), which would let "WEBSOC\u212aET" pass for "websocket"; ASCII text,
    # the common case, takes the fast built-in.
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2).

    SHA-1 proves only that the server read the key, it secures nothing; it is requested
    with ``usedforsecurity=False`` so FIPS-restricted interpreters still allow it.
    """
    digest = hashlib.sha1((key + GUID).encode("utf-8"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64-encoded (RFC 6455 §4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


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

    def _fields(self) -> list[tuple[str, str]]:
        items = self._items
        if items is None:
            packed = self._packed or b""
            items = self._items = [
                (name, value)
                for name, _, value in (
                    line.partition(": ") for line in packed.decode("latin-1").split("\r\n") if line
                )
            ]
        return items

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = self._index = {}
            for name, value in self._fields():
                index.setdefault(_lower(name), []).append(value)
        return index

    def compact(self) -> None:
        """Keep the fields as one bytes block until they are looked at again."""
        items = self._items
        if items is not None:
            self._packed = "".join(f"{n}: {v}\r\n" for n, v in items).encode("latin-1")
            self._items = None
        self._index = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default`` when it is absent."""
        values = self._lookup().get(_lower(name))
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order received (empty when absent)."""
        return list(self._lookup().get(_lower(name), ()))

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any earlier ones with the same name."""
        self._fields().append((name, value))
        if self._index is not None:
            self._index.setdefault(_lower(name), []).append(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _lower(name) in self._lookup()

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
        self._buf += data
        try:
            return self._parse()
        except HandshakeError as exc:
            self._error = exc
            self._buf.clear()
            raise

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
        if pending > self._max_line + 1:
            raise self._fail(self._too_long("header line"), 431)
        if self._header_bytes + pending > self._max_header_bytes:
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
        if not _TOKEN_BYTES_RE.fullmatch(name):
            raise self._fail(f"invalid header name {_snippet(name)}", 400)
        value = value.strip(b" \t")
        if not _FIELD_VALUE_BYTES_RE.fullmatch(value):
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
        return version.decode("ascii")

    def _parse_start(self, line: bytes) -> tuple[str, str, str]:
        raise NotImplementedError

    def _build(self, start: tuple[str, str, str], headers: Headers) -> _T:
        raise NotImplementedError


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
        if not _TOKEN_BYTES_RE.fullmatch(method):
            raise self._fail(f"invalid method in request line {_snippet(line)}", 400)
        if not _TARGET_BYTES_RE.fullmatch(target):
            raise self._fail(f"invalid request-target in request line {_snippet(line)}", 400)
        return method.decode("ascii"), target.decode("ascii"), self._parse_version(version, line)

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
        if not _FIELD_VALUE_BYTES_RE.fullmatch(reason):
            raise self._fail(f"control character in status line {_snippet(line)}", 400)
        return self._parse_version(version, line), status.decode("ascii"), reason.decode("latin-1")

    def _build(self, start: tuple[str, str, str], headers: Headers) -> Response:
        return Response(int(start[1]), start[2], headers)


def parse_token_list(values: list[str]) -> list[str]:
    """Split comma-separated list headers (RFC 7230 §7) spread over several fields.

    Empty elements are ignored, as §7 requires of recipients, and whitespace is trimmed.
    Elements are returned as sent (case preserved); callers decide how to compare.
    """
    return [item for value in values for item in (e.strip(_OWS) for e in value.split(",")) if item]


class _Cursor:
    """Left-to-right scanner over one Sec-WebSocket-Extensions value."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ows(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _OWS:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str | None:
        match = _TOKEN_RE.match(self.text, self.pos)
        if match is None:
            return None
        self.pos = match.end()
        return match.group()

    def quoted_string(self) -> str:
        """Read a quoted-string (RFC 7230 §3.2.6) starting at '"'; return it unescaped."""
        out: list[str] = []
        self.pos += 1
        while self.pos < len(self.text):
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.pos >= len(self.text):
                    break
                char = self.text[self.pos]
                self.pos += 1
            if not _FIELD_VALUE_RE.fullmatch(char):
                raise NegotiationError(f"control character in quoted-string in {self.text!r}")
            out.append(char)
        raise NegotiationError(f"unterminated quoted-string in {self.text!r}")


def parse_extensions(values: list[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse ``Sec-WebSocket-Extensions`` values with the grammar of RFC 6455 §9.1.

    ``extension = token *( ";" param )``, ``param = token [ "=" (token | quoted-string) ]``.
    Quoted values are unquoted and must then be tokens (§9.1). Empty list elements are
    ignored (RFC 7230 §7). Anything else raises
    :class:`~epws.exceptions.NegotiationError`, naming what was wrong.
    """
    result: list[tuple[str, list[tuple[str, str | None]]]] = []
    for value in values:
        cur = _Cursor(value)
        while True:
            cur.skip_ows()
            if cur.peek() == ",":
                cur.pos += 1
                continue
            if cur.peek() == "":
                break
            name = cur.token()
            if name is None:
                raise NegotiationError(f"expected an extension name at {cur.pos} in {value!r}")
            params: list[tuple[str, str | None]] = []
            while True:
                cur.skip_ows()
                char = cur.peek()
                if char in (",", ""):
                    break
                if char != ";":
                    raise NegotiationError(f"unexpected {char!r} at {cur.pos} in {value!r}")
                cur.pos += 1
                cur.skip_ows()
                param = cur.token()
                if param is None:
                    raise NegotiationError(f"expected a parameter name at {cur.pos} in {value!r}")
                cur.skip_ows()
                param_value: str | None = None
                if cur.peek() == "=":
                    cur.pos += 1
                    cur.skip_ows()
                    if cur.peek() == '"':
                        param_value = cur.quoted_string()
                        if not _TOKEN_RE.fullmatch(param_value):
                            raise NegotiationError(
                                f"quoted value {param_value!r} of {param} is not a token "
                                f"in {value!r}"
                            )
                    else:
                        param_value = cur.token()
                        if param_value is None:
                            raise NegotiationError(
                                f"expected a value for {param} at {cur.pos} in {value!r}"
                            )
                params.append((param, param_value))
            result.append((name, params))
    return result


def serialize_extensions(exts: list[tuple[str, list[tuple[str, str | None]]]]) -> str:
    """The ``Sec-WebSocket-Extensions`` value for ``exts``, inverse of parse_extensions.

    Names and values must be tokens (§9.1 allows nothing else, even quoted), so they are
    never quoted; anything else raises ValueError.
    """
    items: list[str] = []
    for name, params in exts:
        _require_token(name, "extension name")
        parts = [name]
        for param, value in params:
            _require_token(param, "extension parameter name")
            if value is None:
                parts.append(param)
            else:
                _require_token(value, f"value of extension parameter {param}")
                parts.append(f"{param}={value}")
        items.append("; ".join(parts))
    return ", ".join(items)


def _require_token(text: str, what: str) -> None:
    if not _TOKEN_RE.fullmatch(text):
        raise ValueError(f"{what} must be an RFC 7230 token, got {text!r}")


# --------------------------------------------------------------------------- server side

_UPGRADE_HEADERS = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]


def _has_token(headers: Headers, name: str, token: str) -> bool:
    values = headers.get_all(name)
    if len(values) == 1 and "," not in values[0]:  # the usual "Upgrade: websocket"
        return _lower(values[0].strip(_OWS)) == token
    return token in (_lower(t) for t in parse_token_list(values))


def _describe(values: list[str]) -> str:
    return "missing" if not values else repr(", ".join(values))


def check_request(request: Request) -> str:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); return its key.

    Raises :class:`~epws.exceptions.HandshakeError` whose ``status`` and ``headers``
    form the HTTP answer: 405 (with ``Allow: GET``) for another method; 400 for a
    missing or repeated Host; 426 (with ``Upgrade`` and ``Sec-WebSocket-Version``) when
    Upgrade lacks ``websocket`` or Connection lacks ``upgrade``; 426 (with
    ``Sec-WebSocket-Version: 13``, §4.4) for another version; 400 for a missing,
    repeated or malformed Sec-WebSocket-Key.
    """
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError(
            f"WebSocket handshake must use GET, got {request.method}", 405, [("Allow", "GET")]
        )
    hosts = headers.get_all("Host")
    if len(hosts) != 1:
        raise HandshakeError(
            "missing Host header" if not hosts else f"{len(hosts)} Host headers, expected one",
            400,
        )
    if not _has_token(headers, "Upgrade", "websocket"):
        raise HandshakeError(
            f"Upgrade header must include 'websocket', got {_describe(headers.get_all('Upgrade'))}",
            426,
            list(_UPGRADE_HEADERS),
        )
    if not _has_token(headers, "Connection", "upgrade"):
        raise HandshakeError(
            "Connection header must include 'upgrade', "
            f"got {_describe(headers.get_all('Connection'))}",
            426,
            list(_UPGRADE_HEADERS),
        )
    versions = headers.get_all("Sec-WebSocket-Version")
    if versions != ["13"]:
        raise HandshakeError(
            f"Sec-WebSocket-Version must be 13, got {_describe(versions)}",
            426,
            [("Sec-WebSocket-Version", "13")],
        )
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeError(
            "missing Sec-WebSocket-Key header"
            if not keys
            else f"{len(keys)} Sec-WebSocket-Key headers, expected one",
            400,
        )
    key = keys[0]
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(f"Sec-WebSocket-Key must be base64 of 16 bytes, got {key!r}", 400)
    return key


def is_upgrade_request(request: Request) -> bool:
    """Whether ``request`` asks for a WebSocket upgrade at all.

    This only looks at Upgrade, so a server can serve plain HTTP to other requests and
    still give a precise error (via :func:`check_request`) to a broken WebSocket one.
    """
    return _has_token(request.headers, "Upgrade", "websocket")


def _single_origin(request: Request) -> tuple[bool, str | None]:
    """(ok, origin): ok is False when several Origin fields make the request ambiguous."""
    origins = request.headers.get_all("Origin")
    if len(origins) > 1:
        return False, None
    return True, origins[0] if origins else None


def check_origin_same(request: Request) -> bool:
    """gorilla's default origin check: the Origin's host[:port] must equal Host.

    No Origin means a non-browser client, which cross-site protection does not concern,
    so it passes. ``null``, unparsable origins and several Origin fields fail. Ports are
    compared as written, like gorilla: ``http://a:80`` does not match ``Host: a``.
    """
    ok, origin = _single_origin(request)
    if not ok:
        return False
    if origin is None:
        return True
    host = request.headers.get("Host")
    if host is None or origin == "null":
        return False
    try:
        parts = urllib.parse.urlsplit(origin)
        _ = parts.port  # validates the port, raising ValueError when bad
    except ValueError:
        return False
    if not parts.scheme or not parts.netloc or "@" in parts.netloc:
        return False
    return _lower(parts.netloc) == _lower(host)


def origin_allowed(request: Request, allowed: Iterable[str]) -> bool:
    """Whether the Origin is absent or one of ``allowed`` (ASCII case-insensitive).

    Entries are full origins (``"https://example.com"``, ``"http://localhost:8080"``);
    ``"*"`` allows everything. Several Origin fields fail unless ``"*"`` is allowed.
    """
    allowed_set = {_lower(entry) for entry in allowed}
    if "*" in allowed_set:
        return True
    ok, origin = _single_origin(request)
    if not ok:
        return False
    return origin is None or _lower(origin) in allowed_set


def select_subprotocol(request: Request, supported: Sequence[str]) -> str | None:
    """The first subprotocol, in the client's order of preference, the server supports.

    The client lists its offers by preference (RFC 6455 §4.1), so its order wins.
    Names are compared exactly: subprotocol names are case-sensitive.
    """
    for offered in parse_token_list(request.headers.get_all("Sec-WebSocket-Protocol")):
        if offered in supported:
            return offered
    return None


def _render(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialize a head, refusing anything that could inject a line or a field."""
    lines = [start_line]
    for name, value in headers:
        _require_token(name, "header name")
        if not _FIELD_VALUE_RE.fullmatch(value):
            raise ValueError(
                f"value of header {name} contains CR, LF, NUL or another control character "
                f"or a non-latin-1 character: {value!r}"
            )
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def build_response(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The ``101 Switching Protocols`` answer to a request carrying ``key`` (§4.2.2).

    Raises ValueError if any header value holds CR, LF, NUL or another control character.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return _render("HTTP/1.1 101 Switching Protocols", headers)


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
    return _render(f"HTTP/1.1 {status} {reason}", fields) + body


# --------------------------------------------------------------------------- client side


def build_request(
    host: str,
    resource: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The client's upgrade request (RFC 6455 §4.1).

    ``host`` is the Host value as sent (port included when not the default, IPv6 in
    brackets; see :func:`parse_uri`). Raises ValueError for a resource that is not
    visible ASCII, a subprotocol that is not a token, or a header value holding CR, LF,
    NUL or another control character.
    """
    if not resource.isascii() or not _TARGET_BYTES_RE.fullmatch(resource.encode("ascii")):
        raise ValueError(f"resource must be non-empty visible ASCII, got {resource!r}")
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    if subprotocols:
        for subprotocol in subprotocols:
            _require_token(subprotocol, "subprotocol")
        headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return _render(f"GET {resource} HTTP/1.1", headers)


def check_response(response: Response, key: str, subprotocols: Sequence[str]) -> str | None:
    """Validate the server's answer (RFC 6455 §4.1); return the accepted subprotocol.

    Raises :class:`~epws.exceptions.HandshakeError` (``status`` = the response's) for a
    status other than 101, an Upgrade other than ``websocket`` (§4.1 wants exactly that
    value, case-insensitively), a Connection without ``upgrade``, or a missing, repeated
    or wrong Sec-WebSocket-Accept; :class:`~epws.exceptions.NegotiationError` for a
    subprotocol that was not offered, several of them, or one when none was offered.
    Extensions are left to the extension negotiation.
    """
    status = response.status
    headers = response.headers
    if status != 101:
        raise HandshakeError(
            f"server answered {status} {response.reason}, expected 101 Switching Protocols",
            status,
        )
    upgrades = parse_token_list(headers.get_all("Upgrade"))
    if [_lower(u) for u in upgrades] != ["websocket"]:
        raise HandshakeError(
            f"Upgrade header must be 'websocket', got {_describe(headers.get_all('Upgrade'))}",
            status,
        )
    if not _has_token(headers, "Connection", "upgrade"):
        raise HandshakeError(
            "Connection header must include 'upgrade', "
            f"got {_describe(headers.get_all('Connection'))}",
            status,
        )
    accepts = headers.get_all("Sec-WebSocket-Accept")
    expected = accept_key(key)
    if accepts != [expected]:
        raise HandshakeError(
            f"Sec-WebSocket-Accept must be {expected!r}, got {_describe(accepts)}", status
        )
    chosen = parse_token_list(headers.get_all("Sec-WebSocket-Protocol"))
    if not chosen:
        return None
    if len(chosen) > 1:
        raise NegotiationError(f"server selected several subprotocols: {chosen!r}", status)
    if not subprotocols:
        raise NegotiationError(
            f"server selected subprotocol {chosen[0]!r} but none was offered", status
        )
    if chosen[0] not in subprotocols:
        raise NegotiationError(
            f"server selected subprotocol {chosen[0]!r}, which was not offered "
            f"(offered: {list(subprotocols)!r})",
            status,
        )
    return chosen[0]


_DEFAULT_PORTS = {"ws": 80, "wss": 443}
# Percent-encode non-ASCII in path and query as UTF-8, leaving what is already legal.
_URI_SAFE = "!$%&'()*+,/:;=?@~[]-._"


def parse_uri(uri: str) -> tuple[bool, str, int, str, str]:
    """Split a ws:// or wss:// URI into (secure, host, port, resource, host_header).

    ``host`` is bare (IPv6 without brackets, ready for connecting); ``host_header`` is
    the Host value to send: brackets around IPv6, port only when not the default.
    ``resource`` is the path ("/" when empty) plus "?query". Raises
    :class:`~epws.exceptions.InvalidURI` for another scheme, a missing host, user-info
    (credentials in a URL leak into logs) or a fragment (RFC 6455 §3 forbids it).
    """
    # urlsplit silently drops tabs and newlines; refuse them instead of guessing.
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in uri):
        raise InvalidURI(f"{uri!r} contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"{uri!r} is not a valid URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidURI(f"{uri!r} is not a ws:// or wss:// URI")
    if "#" in uri:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs cannot have")
    if "@" in parts.netloc:
        raise InvalidURI(f"{uri!r} has user-info, which is not supported")
    host = parts.hostname
    if not host:
        raise InvalidURI(f"{uri!r} has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURI(f"{uri!r} has an invalid host: {exc}") from None
    if port == 0:
        raise InvalidURI(f"{uri!r} has port 0")
    default = _DEFAULT_PORTS[scheme]
    port = default if port is None else port
    resource = urllib.parse.quote(parts.path or "/", safe=_URI_SAFE)
    if parts.query:
        resource += "?" + urllib.parse.quote(parts.query, safe=_URI_SAFE)
    host_header = f"[{host}]" if ":" in host else host
    if port != default:
        host_header += f":{port}"
    return scheme == "wss", host, port, resource, host_header
