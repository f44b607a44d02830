"""Keepalive settings: one object shared by every connection with the same settings.

Why a shared object rather than fields on each connection: memory per idle
connection is the figure that decides how many a process holds (issue 9), and the
settings of a server's connections are all the same. A :class:`~epws.Conn` keeps one
reference to a :class:`Keepalive` (None: keepalive off); :func:`keepalive_settings`
interns them, so every connection of a server (or dialer) points at the same
instance, and equal settings on two servers share one too. The per-connection state of
the keepalive (when the next event is due, when the last ping went out, whether its
pong is awaited, the latency) stays on the connection; the rules that act on it are in
:mod:`epws.asyncio.pings`.

The checks live here, once, for every way in: :class:`~epws.Upgrader` and
:class:`~epws.Dialer` call :func:`keepalive_settings` when they are made (so a bad value
fails at ``serve()``/``connect()``, not at the first handshake), and the connection
calls it again for what it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KEEPALIVE_PAYLOAD", "Keepalive", "keepalive_settings"]

#: The default payload of keepalive pings: not 4 bytes (what :meth:`~epws.Conn.ping`
#: makes by default) nor empty (what gorilla's chat sends), so the application's pings
#: and the keepalive's never answer for each other.
KEEPALIVE_PAYLOAD = b"epws keepalive"

#: RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
_MAX_CONTROL = 125


@dataclass(frozen=True, slots=True)
class Keepalive:
    """The keepalive settings of a group of connections (immutable, shared).

    Attributes:
        interval: seconds between keepalive pings.
        timeout: seconds a ping waits for a pong before the connection fails with
            1011; None: never (the pings then only measure latency).
        payload: the payload of every keepalive ping.
    """

    interval: float
    timeout: float | None
    payload: bytes


def keepalive_settings(
    interval: float | None,
    timeout: float | None,
    payload: bytes | bytearray | memoryview = KEEPALIVE_PAYLOAD,
) -> Keepalive | None:
    """The shared :class:`Keepalive` for these settings; None when ``interval`` is None.

    Raises:
        ValueError: ``interval`` or ``timeout`` is not positive, or ``payload`` is
            longer than a control frame may be (125 bytes).
        TypeError: ``payload`` is not bytes-like.
    """
    if interval is None:
        return None
    if type(payload) is bytes:  # exactly bytes: hashable, and its settings checked before
        known = _KNOWN.get((interval, timeout, payload))
        if known is not None:
            return known  # every connection of a server asks again: no checks, no copy
    if interval <= 0 or (timeout is not None and timeout <= 0):
        raise ValueError("ping_interval and ping_timeout must be positive (or None)")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise TypeError(f"ping_payload must be bytes, not {type(payload).__name__}")
    data = bytes(payload)
    if len(data) > _MAX_CONTROL:
        raise ValueError(f"ping_payload is {len(data)} bytes; a ping carries at most 125")
    key = (interval, timeout, data)
    found = _KNOWN.get(key)
    if found is None:
        found = Keepalive(interval, timeout, data)
        if len(_KNOWN) < _KNOWN_MAX:  # a process has few settings; past that, copies
            _KNOWN[key] = found
    return found


#: One :class:`Keepalive` per distinct settings, shared by every connection that has them.
_KNOWN: dict[tuple[float, float | None, bytes], Keepalive] = {}
_KNOWN_MAX = 64
