"""What :class:`~epws.protocol.protocol.Protocol` hands back: the events of the peer's input.

Plain objects with ``__slots__``, made on the hot path: a text message is a ``str``,
a binary message is ``bytes``, and the rest are the four small classes here. They
live apart from the state machine so that the layers that only consume events (the
asyncio receive queue, the sync client) import no parser.
"""

from __future__ import annotations

from ..exceptions import ProtocolError

__all__ = ["Close", "Event", "Failure", "Ping", "Pong"]


class _ControlEvent:
    """A ping or pong received: its payload (at most 125 bytes)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.payload!r})"


class Ping(_ControlEvent):
    """A ping frame received; its pong is already queued (see
    :meth:`~epws.protocol.protocol.Protocol.data_to_send`)."""

    __slots__ = ()


class Pong(_ControlEvent):
    """A pong frame received."""

    __slots__ = ()


class Close:
    """A close frame received; ``code`` is 1005 when the frame carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"


class Failure:
    """The peer broke the protocol; fail with ``error.code`` once earlier events are handled."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error

    @property
    def code(self) -> int:
        return self.error.code

    def __repr__(self) -> str:
        return f"Failure({self.error.code}, {str(self.error)!r})"


#: What :meth:`~epws.protocol.protocol.Protocol.receive_data` returns a list of: a text
#: message (``str``), a binary message (``bytes``), or a control-frame or failure event.
Event = str | bytes | Ping | Pong | Close | Failure
