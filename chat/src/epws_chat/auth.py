"""Who a connection is: signed connection tokens (JWT) and their expiry.

Without ``--auth-secret`` or ``--auth-public-key`` the chat is anonymous, as the Go
original: anyone may connect and pick any name. With one of them every ``/ws``
request must carry a token, as ``?token=`` on the URL (browsers cannot set headers on
a WebSocket handshake), checked **before** the upgrade:

* no token, a bad signature, a malformed or expired token: HTTP 401;
* a valid token whose ``rooms`` claim does not allow the room asked for: HTTP 403.

The claims the chat reads (PyJWT checks the signature and ``exp``, ``nbf``, ``iat``):

* ``sub``: the name shown with the holder's messages and in the member list; the
  holder cannot rename itself;
* ``rooms`` (optional): the rooms the holder may join, a list of patterns or one
  comma-separated string (``"dev,ops/*"``); ``*`` matches any run of characters and
  ``?`` one (:func:`fnmatch.fnmatchcase`). Without it, every room;
* ``exp`` (optional, but ``epws-chat token`` always sets it): when the token stops
  opening connections, and when the connections it opened are closed with
  :data:`EXPIRED_CODE`. One timer serves every connection (:class:`ExpiryQueue`).

HS256 shares one secret between whoever mints tokens and the chat; RS256 lets the
chat hold only a public key, so a compromised chat server cannot mint tokens.
"""

from __future__ import annotations

import asyncio
import fnmatch
import heapq
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

__all__ = [
    "EXPIRED_CODE",
    "AuthError",
    "ExpiryQueue",
    "Identity",
    "TokenAuth",
    "mint",
    "parse_duration",
]

logger = logging.getLogger("epws_chat.auth")

#: The close code of a connection whose token expired (private range: the page
#: knows not to retry with the same token).
EXPIRED_CODE = 4401

#: Algorithms the chat accepts, by key kind: never "none", never a mix (a public
#: RSA key must not be usable as an HMAC secret).
_HMAC = ("HS256",)
_RSA = ("RS256",)

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"1h"``, ``"2d"``: seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"bad duration {text!r} (want e.g. 90s, 15m, 1h, 2d)")
    return float(match[1]) * _UNITS[match[2]]


class AuthError(Exception):
    """A token was refused; ``status`` is the HTTP status to answer (401 or 403)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Identity:
    """What a valid token says about its holder.

    Attributes:
        name: the ``sub`` claim, the name shown.
        rooms: room patterns the holder may join (None: every room).
        expires: the ``exp`` claim in Unix seconds (None: never).
    """

    name: str
    rooms: tuple[str, ...] | None = None
    expires: float | None = None

    def allows(self, room: str) -> bool:
        """Whether the ``rooms`` claim lets the holder into ``room``."""
        if self.rooms is None:
            return True
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.rooms)


def _rooms_claim(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise AuthError(401, "invalid token: 'rooms' must be a list of strings or a string")
    return tuple(item.strip() for item in items if item.strip())


class TokenAuth:
    """Checks connection tokens with one key: an HMAC secret or an RSA public key.

    Args:
        key: the HS256 secret, or the PEM text of an RS256 public key.
        algorithms: ``("HS256",)`` or ``("RS256",)``.
        leeway: seconds of clock skew tolerated on ``exp`` and ``nbf``.
    """

    __slots__ = ("algorithms", "key", "leeway")

    def __init__(self, key: str | bytes, algorithms: tuple[str, ...], leeway: float = 0.0) -> None:
        if algorithms not in (_HMAC, _RSA):
            raise ValueError(f"unsupported algorithms {algorithms!r}")
        if not key:
            raise ValueError("the key must not be empty")
        self.key = key
        self.algorithms = algorithms
        self.leeway = leeway

    @classmethod
    def from_secret(cls, secret: str) -> TokenAuth:
        """HS256 with a shared secret (``--auth-secret``) of at least 32 bytes
        (RFC 7518 3.2: a shorter one can be guessed offline from any token)."""
        if len(secret.encode()) < 32:
            raise ValueError("an HS256 secret must be at least 32 bytes")
        return cls(secret, _HMAC)

    @classmethod
    def from_public_key(cls, path: str | Path) -> TokenAuth:
        """RS256 with a PEM public key file (``--auth-public-key``); OSError or
        ValueError when the file is unreadable or not a public key."""
        pem = Path(path).read_bytes()
        if b"PRIVATE KEY" in pem:
            raise ValueError(f"{path}: a private key; the chat needs only the public one")
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        load_pem_public_key(pem)  # fail at start, not at the first connection
        return cls(pem, _RSA)

    def verify(self, token: str | None) -> Identity:
        """The identity in ``token``; AuthError(401) when it is missing or invalid."""
        if not token:
            raise AuthError(401, "a token is required: connect with ?token=...")
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=list(self.algorithms),
                leeway=self.leeway,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise AuthError(401, "invalid token: 'sub' must be a non-empty string")
        exp = claims.get("exp")
        return Identity(
            name=sub,
            rooms=_rooms_claim(claims.get("rooms")),
            expires=float(exp) if isinstance(exp, int | float) else None,
        )

    def check(self, token: str | None, room: str) -> Identity:
        """:meth:`verify`, then AuthError(403) when the token does not allow ``room``."""
        identity = self.verify(token)
        if not identity.allows(room):
            raise AuthError(403, f"this token does not allow room {room!r}")
        return identity


def mint(
    key: str | bytes,
    sub: str,
    *,
    rooms: str | None = None,
    ttl: float = 3600.0,
    algorithm: str = "HS256",
    now: float | None = None,
) -> str:
    """A token for ``sub`` valid ``ttl`` seconds (``epws-chat token`` prints these).

    ``key`` is the HS256 secret or, for RS256, the PEM text of the PRIVATE key.
    ``rooms`` is the comma-separated patterns (None: every room).
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + max(1, round(ttl))}
    if rooms is not None:
        claims["rooms"] = [item.strip() for item in rooms.split(",") if item.strip()]
    return jwt.encode(claims, key, algorithm=algorithm)


class ExpiryQueue:
    """Token expiry of every open connection on a loop, behind ONE loop timer.

    A timer handle per connection would cost a handle (and a cancel) each; here each
    connection is one heap entry and the loop timer is armed for the earliest. An
    entry whose connection left is skipped when it comes due (``alive`` says so), and
    the heap is rebuilt when the skipped entries outnumber the live ones.

    Args:
        on_expired: called with the target of each entry that comes due while
            ``alive(target)`` holds.
        alive: whether a target still needs its expiry acted on.
    """

    __slots__ = ("_alive", "_compact_at", "_heap", "_on_expired", "_seq", "_timer", "_timer_when")

    def __init__(self, on_expired: Callable[[Any], None], alive: Callable[[Any], bool]) -> None:
        self._on_expired = on_expired
        self._alive = alive
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._compact_at = 64

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, target: object, expires: float) -> None:
        """Act on ``target`` at Unix time ``expires`` (converted to the loop's clock)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + (expires - time.time())
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), target))
        if self._timer is None or when < self._timer_when:
            self._arm(loop, when)
        if len(heap) > self._compact_at:  # amortized: the bound doubles with the live size
            self._heap = [e for e in heap if self._alive(e[2])]
            heapq.heapify(self._heap)
            self._compact_at = max(64, 2 * len(self._heap))

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._timer_when = when

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        due = loop.time() + 0.001
        while self._heap and self._heap[0][0] <= due:
            _, _, target = heapq.heappop(self._heap)
            if not self._alive(target):
                continue
            try:
                self._on_expired(target)
            except Exception:  # one failing connection must not stop the others
                logger.exception("token expiry handler failed")
        if self._heap:
            self._arm(loop, self._heap[0][0])

    def close(self) -> None:
        """Drop every entry and the timer."""
        self._heap = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
