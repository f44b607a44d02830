"""PreparedMessage: a message encoded once and written to many connections.

Server frames are not masked, so the same bytes can go to every client: a broadcast
to N connections costs one encoding and N ``transport.write`` calls of shared bytes.
Frames are built lazily per variant (plain, or compressed by a codec without context
takeover) and cached; client connections must mask with a fresh key per frame, so
for them the message is encoded on each write.
"""

from __future__ import annotations

from .exceptions import InvalidState
from .protocol import Protocol, Side
from .protocol.frames import MessageType, encode_frame

__all__ = ["PreparedMessage"]


class PreparedMessage:
    """A message whose wire form is computed once (gorilla's PreparedMessage).

    Args:
        message_type: :attr:`MessageType.TEXT` or :attr:`MessageType.BINARY`.
        data: the payload; ``str`` is encoded as UTF-8.
    """

    __slots__ = ("_compressed", "_frame", "data", "message_type")

    def __init__(self, message_type: MessageType, data: str | bytes) -> None:
        self.message_type = MessageType(message_type)
        self.data = data.encode() if isinstance(data, str) else bytes(data)
        self._frame: bytes | None = None
        self._compressed: dict[object, bytes] = {}

    @property
    def frame(self) -> bytes:
        """The uncompressed, unmasked (server) frame."""
        frame = self._frame
        if frame is None:
            frame = self._frame = encode_frame(self.message_type, self.data)
        return frame

    def frame_for(self, protocol: Protocol) -> bytes:
        """The bytes to write on ``protocol``'s connection (and account for it there)."""
        if protocol.close_sent is not None:
            raise InvalidState("cannot send after the close frame was sent")
        if protocol.side is Side.CLIENT:
            return protocol.send_message(self.message_type, self.data)
        codec = protocol.codec
        if codec is None:
            return self.frame
        key = getattr(codec, "shared_key", None)
        if key is None:
            # A codec with context takeover depends on this connection's history.
            return protocol.send_message(self.message_type, self.data)
        frame = self._compressed.get(key)
        if frame is None:
            frame = self._compressed[key] = protocol.send_message(self.message_type, self.data)
        return frame
