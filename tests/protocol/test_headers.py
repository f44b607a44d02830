"""Tests for epws.protocol.headers: token lists and the Sec-WebSocket-Extensions grammar."""

from __future__ import annotations

import pytest

from epws.exceptions import NegotiationError
from epws.protocol.headers import parse_extensions, parse_token_list, serialize_extensions

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
