"""The Client: one WebSocket connection between a browser and the hub.

The Go original runs two goroutines per connection: a read pump (the only reader) and
a write pump (the only writer) draining a bounded send channel. Here neither needs a
task of its own, which is what lets one process hold many thousands of connections:

* the **read pump** is :meth:`Client.read_pump`, which epws calls for each message as
  it completes (epws's callback mode: messages are handed over in order, from the
  protocol callback, with no task and no queue per connection);
* the **write pump** is the hub's batch flush (:meth:`Hub._flush`): once per loop
  iteration it writes everything pending for a room as ONE message, coalesced with
  ``"\\n"``, to every member; pings are epws's keepalive (no timer per client);
* the **send buffer** is the connection's outgoing buffer, bounded in bytes
  (``send_buffer x read_limit``); past it the client is evicted.

Two protocols share the server. A client that asks for no subprotocol speaks the
seed's: text in, text lines out, no names, no history. A client that negotiates
``epws.chat.v1`` gets one JSON object per line (still ``"\\n"``-joined and coalesced):
a ``hello`` with its room and name, the room's recent history, then ``message``
objects with id, room, name, text and server time; it can send
``{"type": "message", "text": ...}`` and ``{"type": "name", "name": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable

import epws

from .auth import Identity
from .brokers import BrokerError, BrokerUnsure, ChatMessage, clean_text, message_id_key
from .hub import DEFAULT_ROOM, Hub, error_line
from .limits import TokenBucket
from .settings import Settings

# Settings (epws_chat.settings) is re-exported: the tests import it from here.
__all__ = ["PROTOCOL", "Client", "Settings", "clean_name", "clean_room", "normalize"]

logger = logging.getLogger("epws_chat.client")

#: The subprotocol of JSON clients (the shipped page).
PROTOCOL = "epws.chat.v1"

# What Go's bytes.TrimSpace trims (unicode.IsSpace). Python's str.strip() would also
# trim the separators U+001C..U+001F, which Go keeps; spelling the set out keeps the
# exact behaviour of the original.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_ROOM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def normalize(message: str) -> str:
    """Newlines become spaces, then surrounding white space goes (the read pump's rule).

    This is what makes ``"\\n"`` safe as the coalescing separator: no user line can
    contain one. An all-white-space message becomes ``""`` and is still broadcast.
    """
    return message.replace("\n", " ").strip(_GO_SPACE)


def clean_room(room: str | None) -> str:
    """A room name from a URL: 1-64 of ``[A-Za-z0-9._-]`` in segments joined by ``/``
    (``ops/alerts``: what a token's ``ops/*`` pattern allows); anything else is refused.

    No segment is empty, ``.`` or ``..``, so ``/r/<room>`` is a path no browser or
    proxy rewrites.
    """
    if not room:
        return DEFAULT_ROOM
    if (
        len(room) > 64
        or not _ROOM_CHARS.issuperset(room.replace("/", ""))
        or any(part in ("", ".", "..") for part in room.split("/"))
    ):
        raise ValueError(
            "a room name is 1-64 letters, digits, '.', '_' or '-', in parts joined by '/'"
        )
    return room


def clean_name(name: str) -> str:
    """A display name: one line, no control characters, at most 32 characters."""
    name = "".join(ch for ch in normalize(name) if ch.isprintable())
    return name[:32]


class Client:
    """One connection: its room, its name, its protocol, and its read pump.

    Attributes:
        hub: the hub this client is registered with.
        conn: the WebSocket connection.
        room: the room it is in.
        name: its display name ("" for seed-protocol clients).
        speaks_json: True for ``epws.chat.v1`` (JSON) clients.
        held_for_history: while its history loads, the live messages held back until
            it is sent (else None).
        identity: what its token says (None: the chat is anonymous).
        watches: True when it asked for presence (``?presence=1``, JSON only): a
            ``presence`` line as it joins, then ``join`` and ``leave`` lines.
    """

    __slots__ = (
        "_bucket",
        "_closed_by_hub",
        "_release",
        "_settings",
        "address",
        "backlog_since",
        "cid",
        "conn",
        "held_for_history",
        "hub",
        "identity",
        "label",
        "name",
        "room",
        "speaks_json",
        "watches",
    )

    def __init__(
        self,
        hub: Hub,
        conn: epws.Conn,
        settings: Settings,
        *,
        room: str = DEFAULT_ROOM,
        name: str = "",
        identity: Identity | None = None,
        watches: bool = False,
        address: str | None = None,
        release: Callable[[str], None] | None = None,
    ) -> None:
        self.hub = hub
        self.identity = identity
        #: This connection's id in the logs (unique within the process).
        self.cid = next(_CONNECTION_IDS)
        self.conn = conn
        self.room = room
        self.speaks_json = conn.subprotocol == PROTOCOL
        self.name = name if self.speaks_json else ""
        self.watches = watches and self.speaks_json
        self.held_for_history: list[ChatMessage] | None = None
        #: Loop time since which the outgoing buffer has not been empty (None: empty).
        self.backlog_since: float | None = None
        self._settings = settings  # shared by every client: nothing copied per client
        self._closed_by_hub = False
        # The rate limit (see Settings.rate), made at the first message: most clients
        # of a chat are idle, and an idle one carries none of it.
        self._bucket: TokenBucket | None = None
        #: The client's address as the gate counted it (None: not counted), and the
        #: gate's release, shared by every client: freed once, as the client goes,
        #: with no closure per connection.
        self.address = address
        self._release = release
        address = conn.remote_address
        if isinstance(address, tuple) and len(address) >= 2:
            host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
            self.label = f"{host}:{address[1]}"
        else:
            self.label = str(address)

    def __repr__(self) -> str:
        return f"<Client {self.label}>"

    def __str__(self) -> str:
        return f"client {self.label}"

    # ------------------------------------------------------------ lifecycle

    def start(self, settings: Settings, *, after: str | None = None) -> None:
        """Wire the connection's callbacks, join the room, send the history (JSON)."""
        conn = self.conn
        conn.read_limit = settings.read_limit
        conn.on_message = self.read_pump
        conn.on_close = self._closed
        if self.speaks_json:
            self.held_for_history = []
            self._send_hello()
        self.hub.register(self)
        if self.speaks_json:
            task = conn.loop.create_task(self._send_history(settings.history, after))
            _JOINING.add(task)
            task.add_done_callback(_JOINING.discard)

    async def _send_history(self, limit: int, after: str | None) -> None:
        """Send the room's recent messages, then release what arrived meanwhile.

        Whatever happens (a broker error, a bug, a cancelled task), the held lines are
        released and the client stops holding lines back: a client stuck there would
        receive nothing and hold every line of its room for the life of the connection.

        Held lines are deduplicated against the ids the history actually returned,
        never against ``after`` alone: an ``after`` beyond the room's newest id (a
        client from another history) must not swallow the live lines.
        """
        lines: list[str] = []
        last = (-1, -1)
        try:
            if limit:
                page = await self.hub.broker.page(self.room, after=after, limit=limit)
                for message in page.messages:
                    lines.append(message.json())
                    last = max(last, message_id_key(message.id))
                stats = self.hub.stats
                if after is not None and stats is not None:
                    stats.resumes["recovered" if page.complete else "incomplete"] += 1
                if after is not None and not page.complete:
                    lines.append(
                        error_line(
                            "some messages may be missing: the history no longer holds "
                            "everything after the last one shown",
                            missed=True,
                        )
                    )
        except BrokerError as exc:
            lines.append(error_line(f"history unavailable: {exc}"))
        except Exception:
            logger.exception("%s: history failed", self)
            lines.append(error_line("history unavailable: internal error"))
        finally:
            held = self.held_for_history or []
            self.held_for_history = None
            for message in held:  # subscribed before the history was read: drop overlaps
                if message_id_key(message.id) > last:
                    lines.append(message.json())
            if lines:
                self._send_line("\n".join(lines))

    def send_presence(self, members: dict[str, int]) -> None:
        """The room's members as this client joins; join and leave lines follow."""
        self._send_line(
            json.dumps(
                {"type": "presence", "room": self.room, "members": members}, ensure_ascii=False
            )
        )

    def _send_hello(self) -> None:
        """Tell a JSON client its room and the name it goes by: as it joins, and after
        each rename (the page shows the name the server settled on)."""
        self._send_line(json.dumps({"type": "hello", "room": self.room, "name": self.name}))

    def _send_error(self, text: str) -> None:
        """Tell this client something went wrong, in its protocol's words."""
        self._send_line(error_line(text) if self.speaks_json else f"error: {text}")

    def _send_line(self, text: str) -> None:
        with contextlib.suppress(epws.ConnectionClosed, epws.InvalidState):
            self.conn.write_prepared_nowait(epws.PreparedMessage(epws.MessageType.TEXT, text))

    def read_pump(self, message: str | bytes) -> None:
        """Hand one message from the connection to the hub (Go's readPump, one turn).

        Messages over ``read_limit`` make the library close with 1009 before they get
        here. Newlines become spaces and the text is trimmed, so the hub can join
        lines with ``"\\n"``.
        """
        if self not in self.hub:
            return  # evicted (or leaving): its lines are no longer the room's
        stats = self.hub.stats
        if stats is not None:
            stats.messages_in += 1
            # isascii() is O(1) on CPython: the exact size without an encode per message.
            stats.bytes_in += (
                len(message)
                if isinstance(message, bytes) or message.isascii()
                else len(message.encode())
            )
        settings = self._settings
        rate = settings.rate
        if rate:
            now = self.conn.loop.time()
            bucket = self._bucket
            if bucket is None:
                bucket = self._bucket = TokenBucket(now, settings.burst)
            if not bucket.take(now, rate, settings.burst):
                self._over_rate(bucket, rate, settings.abuse_limit)
                return
        if not isinstance(message, str):
            # Go broadcasts the bytes of binary messages as text; decoding keeps the
            # outgoing text frame valid UTF-8.
            message = message.decode("utf-8", "replace")
        if self.speaks_json:
            text = self._command(message)
            if text is None:
                return
            message = text
        self.hub.broadcast(
            clean_text(normalize(message)), room=self.room, name=self.name, sender=self
        )

    def _over_rate(self, bucket: TokenBucket, rate: float, limit: float) -> None:
        """A message over the rate limit: dropped; the sender told once per episode;
        closed with 1008 when the drops keep coming faster than they decay."""
        stats = self.hub.stats
        if stats is not None:
            stats.rate_limited += 1
        if bucket.strikes > limit:
            logger.warning("%s: closed for flooding (%d messages dropped)", self, bucket.dropped)
            if stats is not None:
                stats.evicted("flood")
            self.hub.unregister(self)
            self.conn.close_nowait(1008, "rate limit exceeded")
            return
        if not bucket.told:
            bucket.told = True
            text = f"too many messages: at most {rate:g} per second; the excess is dropped"
            self._send_error(text)

    def _command(self, line: str) -> str | None:
        """A JSON client's message: the text to broadcast, or None for a command."""
        try:
            command = json.loads(line)
        except ValueError:
            return line  # plain text from a JSON client is a message too
        if not isinstance(command, dict):
            return line
        kind = command.get("type", "message")
        if kind == "name" and isinstance(command.get("name"), str):
            if self.identity is not None:
                self._send_line(error_line("your name comes from your token"))
                return None
            self.hub.rename(self, clean_name(command["name"]))
            self._send_hello()
            return None
        if kind == "message" and isinstance(command.get("text"), str):
            return str(command["text"])
        self._send_line(error_line(f"unknown command {str(kind)[:40]!r}"))
        return None

    def publish_failed(self, error: BrokerError) -> None:
        """The broker could not take this client's message: tell the sender (and say
        when it is only unconfirmed: it may still show up)."""
        what = (
            "message not confirmed" if isinstance(error, BrokerUnsure) else "message not delivered"
        )
        logger.warning("%s: %s: %s", self, what, error)
        text = f"{what}: {error}"
        self._send_error(text)

    def evicted(self) -> None:
        """The hub gave up on this client: an empty close frame, as the Go write pump
        sends when its channel is closed, then TCP goes at once (a reset).

        The Go original closes the socket right after writing its close frame. An
        evicted client is one whose backlog does not drain, so the close frame sits
        behind it and waiting for a close reply would only hold the kernel's send
        queue (megabytes) for a peer that is not reading. The reset frees it now.
        """
        self._closed_by_hub = True
        conn = self.conn
        conn.close_nowait(None)
        conn.abort()

    def _closed(self, exc: epws.ConnectionClosed) -> None:
        self.hub.unregister(self)
        address = self.address
        if address is not None and self._release is not None:
            self.address = None
            self._release(address)
        # As Go's IsUnexpectedCloseError(err, GoingAway, AbnormalClosure): a close
        # frame the peer sent with any code but 1001 is worth a line. A close that
        # answers our own (eviction) is not the peer's doing.
        if not self._closed_by_hub and epws.is_unexpected_close(exc, 1001, 1006):
            level = logging.INFO if exc.code == 1000 else logging.WARNING
            logger.log(level, "%s closed the connection: %s", self, exc)
        # epws's keepalive timing out is Go's read deadline (pongWait) passing.
        timed_out = "keepalive ping timeout" in exc.cause
        how = "read deadline exceeded" if timed_out else f"close code {exc.code}"
        logger.info("%s disconnected (%s)", self, how)


#: Connection ids: a process-wide sequence (the JSON log's "conn" field).
_CONNECTION_IDS = itertools.count(1)

#: History loads in flight (a task only while a JSON client joins).
_JOINING: set[asyncio.Task[None]] = set()


def accept(
    hub: Hub,
    settings: Settings,
    conn: epws.Conn,
    identity: Identity | None = None,
    *,
    address: str | None = None,
    release: Callable[[str], None] | None = None,
) -> Client | None:
    """The server's handler (callback mode): make the Client and start it; no task.

    With an ``identity`` (a checked token) its ``sub`` is the name; else the
    ``?name=`` the page sends. None when the request names no valid room.
    ``release(address)`` is called once, as the client goes (the gate's count).
    """
    request = conn.request
    query = request.query if request is not None else {}
    try:
        room = clean_room((query.get("room") or [""])[0])
    except ValueError as exc:
        conn.close_nowait(1008, str(exc))
        return None
    if identity is not None:
        name = clean_name(identity.name)
    else:
        name = clean_name((query.get("name") or [""])[0])
    after: str | None = (query.get("after") or [""])[0] or None
    if after is not None:
        try:
            message_id_key(after)  # the brokers' own parser: what passes, Redis takes
        except ValueError:
            after = None
    watches = (query.get("presence") or [""])[0] in ("1", "true")
    client = Client(
        hub,
        conn,
        settings,
        room=room,
        name=name,
        identity=identity,
        watches=watches,
        address=address,
        release=release,
    )
    logger.info("%s connected (room %s%s)", client, room, ", JSON" if client.speaks_json else "")
    client.start(settings, after=after)
    return client
