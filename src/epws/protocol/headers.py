"""Header grammar of RFC 7230 §3.2 and §7 and RFC 6455 §9.1, without I/O.

The small rules every header of the handshake is read and written with: tokens, field
values, comma-separated lists, and the ``Sec-WebSocket-Extensions`` grammar that
:mod:`epws.protocol.deflate` negotiates with. Kept apart from the HTTP messages
(:mod:`epws.protocol.http11`) and the handshake rules (:mod:`epws.protocol.handshake`)
that use them, so that each of those reads as what it checks, not how text is split.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from epws.exceptions import NegotiationError

__all__ = [
    "FIELD_VALUE_BYTES_RE",
    "FIELD_VALUE_RE",
    "OWS",
    "TOKEN_BYTES_RE",
    "TOKEN_RE",
    "ascii_lower",
    "list_has_token",
    "parse_extensions",
    "parse_token_list",
    "require_token",
    "serialize_extensions",
]

# RFC 7230 §3.2.6: token = 1*tchar. Kept as text so the same class serves str and bytes.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
#: RFC 7230 §3.2.6 ``token`` (one or more tchar), for text.
TOKEN_RE = re.compile(f"[{_TCHAR}]+")
#: :data:`TOKEN_RE` for bytes (header names as received).
TOKEN_BYTES_RE = re.compile(f"[{_TCHAR}]+".encode("ascii"))
# RFC 7230 §3.2 field-value characters: VCHAR, SP, HTAB and obs-text (anything else is
# a CTL). Text too, for the same reason as _TCHAR.
_FIELD_CHAR = "\t\x20-\x7e\x80-\xff"
#: RFC 7230 §3.2 ``field-value`` (VCHAR, SP, HTAB and obs-text), for text.
FIELD_VALUE_RE = re.compile(f"[{_FIELD_CHAR}]*")
#: :data:`FIELD_VALUE_RE` for bytes (header values as received).
FIELD_VALUE_BYTES_RE = re.compile(f"[{_FIELD_CHAR}]*".encode("latin-1"))
#: A header section of well-formed field lines only, each ``name:value`` CRLF (the name
#: a token, the value a field-value, whitespace around it included): what nearly every
#: head is, so the parser checks all its lines with one match (http11.py).
FIELD_LINES_BYTES_RE = re.compile(f"(?:[{_TCHAR}]+:[{_FIELD_CHAR}]*\r\n)*".encode("latin-1"))
#: Optional whitespace (RFC 7230 §3.2.3), trimmed around list elements.
OWS = " \t"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(s: str) -> str:
    """``s`` with ASCII letters lowered, and only those.

    Header names and tokens are ASCII: str.lower() also folds some non-ASCII letters to
    ASCII (the Kelvin sign U+212A becomes "k"), which would let "WEBSOC<U+212A>ET" pass
    for "websocket"; ASCII text, the common case, takes the fast built-in.
    """
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def parse_token_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated list headers (RFC 7230 §7) spread over several fields.

    Empty elements are ignored, as §7 requires of recipients, and whitespace is trimmed.
    Elements are returned as sent (case preserved); callers decide how to compare.
    """
    return [item for value in values for item in (e.strip(OWS) for e in value.split(",")) if item]


def list_has_token(values: Sequence[str], token: str) -> bool:
    """Whether list header ``values`` hold ``token`` (lowercase), ASCII case-insensitively.

    The usual single-value field (``Upgrade: websocket``) is checked without splitting.
    """
    if len(values) == 1 and "," not in values[0]:
        return ascii_lower(values[0].strip(OWS)) == token
    return token in (ascii_lower(t) for t in parse_token_list(values))


class _Cursor:
    """Left-to-right scanner over one Sec-WebSocket-Extensions value."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ows(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in OWS:
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str | None:
        match = TOKEN_RE.match(self.text, self.pos)
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
            if not FIELD_VALUE_RE.fullmatch(char):
                raise NegotiationError(f"control character in quoted-string in {self.text!r}")
            out.append(char)
        raise NegotiationError(f"unterminated quoted-string in {self.text!r}")


def parse_extensions(values: Iterable[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
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
                        if not TOKEN_RE.fullmatch(param_value):
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
        require_token(name, "extension name")
        parts = [name]
        for param, value in params:
            require_token(param, "extension parameter name")
            if value is None:
                parts.append(param)
            else:
                require_token(value, f"value of extension parameter {param}")
                parts.append(f"{param}={value}")
        items.append("; ".join(parts))
    return ", ".join(items)


def require_token(text: str, what: str) -> None:
    """Raise ValueError unless ``text`` is an RFC 7230 token (``what`` names it)."""
    if not TOKEN_RE.fullmatch(text):
        raise ValueError(f"{what} must be an RFC 7230 token, got {text!r}")
