"""The Redis broker's wire format: the keys and channels, the Lua script that stores
and publishes a message, and the checks on everything read back.

What is in Redis, per room ``R`` (with the default prefix ``epws:chat:``):

* ``epws:chat:R:log``: a capped stream, one entry per message, field ``d`` holding
  the body; the entry's id is the message id.
* ``epws:chat:R``: the pub/sub channel; a message travels as ``<id> <body>``.
* The body: ``[name, text, time]`` in JSON (compact, UTF-8).

Presence (:mod:`~epws_chat.brokers.presence`):

* ``epws:chat:R:presence``: a hash, one field per process with named members in
  the room: ``{"s": seq, "m": {name: connections}}`` (that process's members).
* ``epws:chat:procs``: a sorted set of process ids, scored by the time (Redis's
  clock, milliseconds) until which each process counts as alive.
* On the room's channel, ``P{"p": pid, "s": seq, "m": {name: connections}}``: the
  names whose count changed on process ``pid`` and their new count there (0: gone).
  A message id starts with a digit, so the two kinds never mix up.

Anyone who can reach Redis can write there, so nothing read back is trusted: every
decoder raises :class:`~epws_chat.brokers.base.BadEntry` for what is not in this
format, and its callers skip the entry and go on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import BadEntry, ChatMessage, clean_text, message_id_key

__all__ = [
    "PUBLISH_SCRIPT",
    "Keys",
    "PresenceDelta",
    "decode_presence",
    "decode_presence_state",
    "encode_presence",
    "encode_presence_state",
    "is_presence",
    "decode_entry",
    "decode_payload",
    "decode_stream",
    "encode_body",
    "is_complete",
    "top_id",
]

#: KEYS[1]: the room's stream; ARGV: channel, body, MAXLEN, trim operator ("=" or "~"),
#: retention in seconds (0: none). Returns the stream id, which is also the message id
#: every process sees. The EXPIRE is refreshed by every message, so a room's history
#: lives ``retention`` seconds after its last message (and Redis frees abandoned rooms).
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], ARGV[3], '*', 'd', ARGV[2])
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id
"""

IdKey = tuple[int, int]


class Keys:
    """The names of a room's keys and channel under one prefix (one rule for all)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def channel(self, room: str) -> bytes:
        """The room's pub/sub channel."""
        return f"{self.prefix}{room}".encode()

    def log(self, room: str) -> bytes:
        """The room's history stream."""
        return f"{self.prefix}{room}:log".encode()

    def presence(self, room: str) -> bytes:
        """The room's presence hash (one field per process)."""
        return f"{self.prefix}{room}:presence".encode()

    @property
    def procs(self) -> bytes:
        """The sorted set of live processes (no room's key: room names have no ':')."""
        return f"{self.prefix}procs".encode()


def encode_body(name: str, text: str, sent: float) -> bytes:
    """The body of a message, as stored in the stream and sent on the channel."""
    return json.dumps([name, text, sent], ensure_ascii=False, separators=(",", ":")).encode()


def decode_entry(room: str, raw: bytes, body: bytes) -> ChatMessage:
    """One message in the wire format (pub/sub payload or stream entry), checked.

    ``raw`` is the id (``"<ms>-<seq>"``), ``body`` ``[name, text, time]`` in JSON.
    Anything else (from another program, an older version, a hand-made XADD) raises
    :class:`~epws_chat.brokers.base.BadEntry`; the caller skips it and goes on: one
    bad entry must never stop the listener or a history read.
    """
    try:
        message_id_key(raw)
        name, text, sent = json.loads(body)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: {exc}") from None
    if not isinstance(name, str) or not isinstance(text, str):
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: name and text must be strings")
    if isinstance(sent, bool) or not isinstance(sent, (int, float)):
        raise BadEntry(f"room {room}: bad entry {raw[:40]!r}: time must be a number")
    return ChatMessage(raw.decode("ascii"), room, clean_text(name)[:64], clean_text(text), sent)


def decode_payload(room: str, data: object) -> ChatMessage:
    """A pub/sub payload (``<id> <body>``) as a message; BadEntry if malformed."""
    if not isinstance(data, bytes):
        raise BadEntry(f"room {room}: a pub/sub payload that is not a string")
    raw, _, body = data.partition(b" ")
    return decode_entry(room, raw, body)


def decode_stream(
    room: str, entries: list[Any], bad: Callable[[BadEntry], None]
) -> list[ChatMessage]:
    """Stream entries (``XRANGE`` replies) as messages; malformed ones go to ``bad``."""
    out = []
    for raw, fields in entries:
        try:
            body = fields.get(b"d") if isinstance(fields, dict) else None
            if not isinstance(body, bytes):
                raise BadEntry(f"room {room}: stream entry {raw[:40]!r} has no 'd' field")
            out.append(decode_entry(room, raw, body))
        except BadEntry as exc:
            bad(exc)
    return out


def top_id(entries: Any) -> bytes:
    """The id of an ``XREVRANGE ... COUNT 1`` answer ("0-0" for an empty stream or a
    malformed id, which then counts as the beginning)."""
    if entries:
        raw = entries[0][0]
        try:
            message_id_key(raw)
        except ValueError:
            return b"0-0"
        return bytes(raw)
    return b"0-0"


def is_complete(after: IdKey, entries: list[Any], info: Any) -> bool:
    """Whether a stream read from ``after`` INCLUSIVE holds every message after it.

    ``entries`` is ``XRANGE key after + COUNT n`` (the caller already knows the
    count), ``info`` is ``XINFO STREAM key`` (an error if the key is missing).

    * ``after``'s own entry is still there: nothing after it was trimmed.
    * Else, if the stream was never trimmed (``entries-added`` equals ``length``), it
      holds its whole life; ``after`` must fall within it. An ``after`` older than
      its first entry predates this stream: it was lost (Redis restarted without
      persistence, the key expired or was evicted) and recreated since.
    * Anything else (trimmed past ``after``, no stream, ``after`` beyond the newest
      entry) may miss messages.
    """
    if entries and message_id_key(entries[0][0]) == after:
        return True
    length = added = None
    if isinstance(info, dict):
        length, added = info.get("length"), info.get("entries-added")
    if after == (0, 0):
        # The room was empty when this process joined it: whole unless trimmed since
        # (an empty or missing stream means nothing was said).
        return length == added
    if not isinstance(info, dict):
        return False  # no stream at all: its history is gone (or never was)
    first, last = info.get("first-entry"), info.get("last-entry")
    if length is None or added is None or length != added or not first or not last:
        return False
    return message_id_key(first[0]) <= after <= message_id_key(last[0])


@dataclass(frozen=True, slots=True)
class PresenceDelta:
    """A presence change on the wire: process ``pid``'s ``seq``-th write, with the new
    count there of each name in ``members`` (0: that name left that process)."""

    pid: str
    seq: int
    members: dict[str, int]


def encode_presence_state(seq: int, members: dict[str, int]) -> bytes:
    """One process's members of a room, as stored in the room's presence hash."""
    return json.dumps({"s": seq, "m": members}, ensure_ascii=False, separators=(",", ":")).encode()


def encode_presence(pid: str, seq: int, members: dict[str, int]) -> bytes:
    """A presence change as published on the room's channel."""
    body = json.dumps({"p": pid, "s": seq, "m": members}, ensure_ascii=False, separators=(",", ":"))
    return b"P" + body.encode()


def is_presence(data: object) -> bool:
    """Whether a pub/sub payload is a presence change (not a message)."""
    return isinstance(data, bytes) and data[:1] == b"P"


def _members(room: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise BadEntry(f"room {room}: presence members must be an object")
    out: dict[str, int] = {}
    for name, count in value.items():
        if (
            not isinstance(name, str)
            or not name
            or isinstance(count, bool)
            or not isinstance(count, int)
            or count < 0
        ):
            raise BadEntry(f"room {room}: bad presence entry {str(name)[:40]!r}: {count!r}")
        out[clean_text(name)[:64]] = count
    return out


def _seq(room: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadEntry(f"room {room}: presence sequence must be a natural number")
    return value


def decode_presence(room: str, data: bytes) -> PresenceDelta:
    """A presence payload (``P{...}``), checked; BadEntry if malformed."""
    try:
        body = json.loads(data[1:])
    except ValueError as exc:
        raise BadEntry(f"room {room}: bad presence payload {data[:40]!r}: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("p"), str) or not body["p"]:
        raise BadEntry(f"room {room}: bad presence payload {data[:40]!r}")
    return PresenceDelta(body["p"][:64], _seq(room, body.get("s")), _members(room, body.get("m")))


def decode_presence_state(room: str, value: Any) -> tuple[int, dict[str, int]]:
    """A field of a room's presence hash: (seq, members); BadEntry if malformed."""
    try:
        body = json.loads(value)
    except (ValueError, TypeError) as exc:
        raise BadEntry(f"room {room}: bad presence state: {exc}") from None
    if not isinstance(body, dict):
        raise BadEntry(f"room {room}: bad presence state")
    return _seq(room, body.get("s")), _members(room, body.get("m"))
