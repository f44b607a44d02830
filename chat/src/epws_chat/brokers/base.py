"""What every broker shares: the :class:`Broker` interface the hub talks to, the
message record, the errors, and the one message-id parser.

Nothing here knows how messages travel; :mod:`epws_chat.brokers.memory` and
:mod:`epws_chat.brokers.redis` implement the interface.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..metrics import Counters

__all__ = [
    "BadEntry",
    "Broker",
    "BrokerError",
    "BrokerUnsure",
    "ChatMessage",
    "Deliver",
    "Gap",
    "OnError",
    "Page",
    "PresenceHost",
    "clean_text",
    "message_id_key",
]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat line, as stored and delivered.

    Attributes:
        id: ``"<milliseconds>-<sequence>"``, increasing within a room (the format of
            Redis stream ids), so a page can ask for what it missed after the last
            id it saw and drop what it has already shown.
        room: the room's name.
        name: the sender's name ("" for the seed's anonymous clients).
        text: the normalized text (no newline: safe to join batches with "\\n").
        time: server time when the message was accepted, in Unix seconds.
    """

    id: str
    room: str
    name: str
    text: str
    time: float

    def json(self) -> str:
        """The line sent to ``epws.chat.v1`` clients."""
        return json.dumps(
            {
                "type": "message",
                "id": self.id,
                "room": self.room,
                "name": self.name,
                "text": self.text,
                "time": self.time,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )


#: An id as both brokers write it: two runs of ASCII digits (Redis's stream id format).
#: ``int()`` alone would also take "1_0", " 1", "+1" or non-ASCII digits, which Redis
#: refuses: ONE parser for every broker and for what clients send.
_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = (1 << 64) - 1


def message_id_key(message_id: str | bytes) -> tuple[int, int]:
    """Order of two ids: ``"12-3" < "12-10" < "13-0"``; ValueError if malformed.

    The only id parser of the chat: the memory broker, the Redis broker (live and
    stream entries) and the ``after`` a resuming client sends all go through it, so
    an id one of them accepts is an id every one of them (and Redis) accepts.
    """
    if isinstance(message_id, bytes):
        try:
            message_id = message_id.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"bad message id {message_id!r}") from None
    match = _ID_RE.fullmatch(message_id)
    if match is None:
        raise ValueError(f"bad message id {message_id!r}")
    ms, seq = int(match[1]), int(match[2])
    if ms > _U64 or seq > _U64:
        raise ValueError(f"message id out of range {message_id!r}")
    return ms, seq


_SURROGATES = re.compile("[\ud800-\udfff]")

#: Longest text kept in a message, in characters (a line of a chat, not a file).
MAX_TEXT = 4096


def clean_text(text: str) -> str:
    """Text that may enter the chat: encodable as UTF-8 (lone surrogates, which
    ``json.loads`` lets through from ``"\\ud800"``, become U+FFFD), no newline (the
    batch separator), bounded. Every line a broker stores or delivers passes here, so
    no line can make the encoding of a batch fail."""
    if _SURROGATES.search(text) is not None:
        text = _SURROGATES.sub("\ufffd", text)
    if "\n" in text:
        text = text.replace("\n", " ")
    return text[:MAX_TEXT]


class BadEntry(ValueError):
    """A stored or delivered message that is not in the chat's format (skipped)."""


class BrokerError(Exception):
    """The broker cannot take or give messages now (e.g. Redis is unreachable)."""


class BrokerUnsure(BrokerError):
    """The broker did not confirm a message in time: it may or may not be delivered
    (sent to Redis, which never answered: a pause, a slow network)."""


Deliver = Callable[[ChatMessage], None]
OnError = Callable[[BrokerError], None]
Gap = Callable[[str], None]


@dataclass(slots=True)
class Page:
    """What :meth:`Broker.page` returns: history, and whether a resume is whole.

    Attributes:
        messages: up to ``limit`` of the room's latest messages, oldest first (after
            ``after`` when given).
        complete: for a resume (``after`` given): True when ``messages`` holds EVERY
            message of the room after ``after``; False when some may be missing (the
            gap is longer than ``limit``, older lines were trimmed or expired, the
            history was lost since: a Redis restart without persistence, eviction, a
            new memory broker; or ``after`` names no message of this history).
    """

    messages: list[ChatMessage] = field(default_factory=list)
    complete: bool = True


class PresenceHost(Protocol):
    """What a broker that shares presence needs from the hub."""

    def local_members(self, room: str) -> dict[str, int]:
        """This process's named connections in ``room``, by name."""
        ...

    def remote_changed(self, room: str, names: Iterable[str]) -> None:
        """The counts of ``names`` in ``room`` changed on other processes (see
        :meth:`Broker.remote_members`)."""
        ...


class Broker(Protocol):
    """What the hub needs from the outside world.

    ``deliver`` (given to :meth:`start`) is called on the event loop for every
    message of a subscribed room, in the room's order, exactly once per process.
    """

    #: True when several processes can share the broker (``--workers`` needs it).
    shared: bool

    async def start(
        self,
        deliver: Deliver,
        gap: Gap | None = None,
        *,
        stats: Counters | None = None,
        presence: PresenceHost | None = None,
    ) -> None:
        """Connect; from now on messages of subscribed rooms go to ``deliver``.

        ``gap(room)`` (optional): the broker lost the room's live messages for a
        while (a lost connection) and cannot prove it recovered all of them.
        ``stats`` (optional): where the broker counts its figures (publish latency,
        reconnections); the broker is their only writer. ``presence`` (optional):
        the hub, whose members a shared broker makes known to the other processes.
        """
        ...

    async def close(self) -> None:
        """Disconnect; nothing is delivered afterwards."""
        ...

    def subscribe(self, room: str) -> None:
        """This process has its first member in ``room``: start receiving it."""
        ...

    def unsubscribe(self, room: str) -> None:
        """This process has no member in ``room`` any more: stop receiving it."""
        ...

    def publish(self, room: str, name: str, text: str, on_error: OnError) -> None:
        """Send a message to ``room`` without waiting; failures go to ``on_error``.

        Never blocks: a broker that must talk to a server batches the publishes of
        one loop iteration and reports a failed batch to each sender.
        """
        ...

    def presence_changed(self, room: str, name: str) -> None:
        """The count of ``name`` in ``room`` changed on this process (never waits:
        a shared broker writes the changes of a loop iteration together)."""
        ...

    def remote_members(self, room: str) -> Mapping[str, int]:
        """Members of a subscribed ``room`` on the OTHER processes, by name, as this
        process last heard (empty for a broker that is not shared)."""
        ...

    async def read_presence(self, room: str) -> dict[str, int]:
        """Members of any ``room`` on the OTHER live processes, read from the shared
        store (empty for a broker that is not shared). Raises :class:`BrokerError`."""
        ...

    async def history(self, room: str, *, after: str | None, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` of the room's latest messages, oldest first; only those
        with an id after ``after`` when given. Raises :class:`BrokerError`."""
        ...

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        """:meth:`history`, and whether it covers everything after ``after``."""
        ...
