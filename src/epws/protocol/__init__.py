"""Sans-I/O core of epws: framing, the protocol state machine and the opening handshake.

The names most programs need are here: :class:`~epws.protocol.protocol.Protocol` (one
connection's state machine), its :class:`~epws.protocol.protocol.Side`, and the events
it returns (:mod:`epws.protocol.events`). The handshake, HTTP, header grammar, URIs and
permessage-deflate have their own modules below this package.
"""

from .codec import InflateError, MessageCodec
from .events import Close, Event, Failure, Ping, Pong
from .protocol import PONG_BACKLOG, Protocol, Side, State, wire_allowance

__all__ = [
    "PONG_BACKLOG",
    "Close",
    "Event",
    "Failure",
    "InflateError",
    "MessageCodec",
    "Ping",
    "Pong",
    "Protocol",
    "Side",
    "State",
    "wire_allowance",
]
