"""Tests for epws.protocol.uri: parsing ws:// and wss:// URIs (RFC 6455 §3)."""

from __future__ import annotations

import pytest

from epws.exceptions import InvalidURI
from epws.protocol.uri import parse_uri

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
