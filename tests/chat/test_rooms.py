"""Rooms, names, history and the ``epws.chat.v1`` protocol, with the memory broker.

The seed's plain-text protocol must not change for clients that ask for nothing;
JSON clients get a hello, the room's history, then live messages, with nothing lost
or shown twice across the history/live boundary.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

import epws
from epws_chat.brokers import MemoryBroker, message_id_key
from epws_chat.client import PROTOCOL, Settings
from epws_chat.server import Chat

from .conftest import ws_url

if TYPE_CHECKING:
    from epws_chat.brokers import Page

Line = dict[str, Any]


def url(chat: Chat, **query: str) -> str:
    qs = "&".join(f"{k}={quote(v)}" for k, v in query.items())
    return ws_url(chat, "/ws" + (f"?{qs}" if qs else ""))


def v1(chat: Chat, **query: str) -> Any:
    """A JSON client (it negotiates ``epws.chat.v1``)."""
    return epws.connect(url(chat, **query), subprotocols=[PROTOCOL])


async def json_lines(conn: epws.Conn, count: int) -> list[Line]:
    """The next ``count`` JSON lines (across however many messages carry them)."""
    return [json.loads(line) for line in await plain_lines(conn, count)]


async def plain_lines(conn: epws.Conn, count: int) -> list[str]:
    """The next ``count`` lines; past 5 s, a failure that shows those that came."""
    out: list[str] = []
    try:
        async with asyncio.timeout(5):
            while len(out) < count:
                data = await conn.recv()
                assert isinstance(data, str)
                out.extend(data.split("\n"))
    except TimeoutError:
        raise AssertionError(f"{count} lines wanted, 5 s later only {out}") from None
    assert len(out) == count, out
    return out


async def say(chat: Chat, texts: list[str], room: str = "") -> None:
    """Send ``texts`` from a plain client in ``room`` and wait for its own echo."""
    query = {"room": room} if room else {}
    async with epws.connect(url(chat, **query)) as conn:
        for text in texts:
            await conn.send(text)
        assert await plain_lines(conn, len(texts)) == texts


def texts(lines: list[Line]) -> list[str]:
    return [line["text"] for line in lines]


async def test_rooms_are_isolated(start) -> None:
    chat = await start()
    async with (
        epws.connect(url(chat, room="a")) as a1,
        epws.connect(url(chat, room="a")) as a2,
        epws.connect(url(chat, room="b")) as b,
        v1(chat, room="b") as b_json,
    ):
        assert (await json_lines(b_json, 1))[0] == {"type": "hello", "room": "b", "name": ""}
        await a1.send("for a")
        assert await plain_lines(a2, 1) == ["for a"]
        await b.send("for b")
        # Had "for a" leaked into b, it would arrive first.
        assert await plain_lines(b, 1) == ["for b"]
        (line,) = await json_lines(b_json, 1)
        assert (line["room"], line["text"]) == ("b", "for b")
        assert await plain_lines(a1, 1) == ["for a"]
    assert set(chat.hub.rooms) == set()  # rooms go when their last member leaves


async def test_plain_clients_in_the_default_room_get_the_seed_protocol(start) -> None:
    chat = await start()
    await say(chat, ["before anyone"])  # history exists, but plain clients never see it
    async with (
        epws.connect(ws_url(chat)) as plain,
        epws.connect(url(chat, room="main", name="ignored")) as also_main,
        v1(chat, name="ann") as ann,
    ):
        assert plain.subprotocol is None
        hello, old = await json_lines(ann, 2)
        assert hello["type"] == "hello" and old["text"] == "before anyone"
        await plain.send("  plain\ntext ")
        await ann.send(json.dumps({"type": "message", "text": "from ann"}))
        # Plain text in, plain lines out: no JSON, no names, no history, no hello.
        got = await plain_lines(plain, 2)
        assert got == ["plain text", "from ann"]
        assert await plain_lines(also_main, 2) == got
        assert texts(await json_lines(ann, 2)) == got


async def test_a_json_client_gets_hello_history_then_live_messages(start) -> None:
    chat = await start(Settings(history=3))
    await say(chat, [f"old {i}" for i in range(5)], room="r")
    await say(chat, ["elsewhere"], room="other")
    before = time.time()
    async with v1(chat, room="r", name="alice") as alice:
        assert alice.subprotocol == PROTOCOL
        lines = await json_lines(alice, 4)
        assert lines[0] == {"type": "hello", "room": "r", "name": "alice"}
        history = lines[1:]
        assert texts(history) == ["old 2", "old 3", "old 4"]  # the last N, oldest first
        assert all(m["type"] == "message" and m["room"] == "r" for m in history)
        assert all(m["name"] == "" for m in history)  # plain senders have no name
        await alice.send(json.dumps({"type": "message", "text": "live"}))
        (live,) = await json_lines(alice, 1)
    assert set(live) == {"type", "id", "room", "name", "text", "time"}
    assert (live["room"], live["name"], live["text"]) == ("r", "alice", "live")
    assert before - 1 <= live["time"] <= time.time() + 1
    ids = [m["id"] for m in [*history, live]]
    assert sorted(ids, key=message_id_key) == ids and len(set(ids)) == 4


async def test_after_gives_only_newer_messages(start) -> None:
    chat = await start()
    await say(chat, [f"m{i}" for i in range(6)])
    async with v1(chat) as first:
        lines = await json_lines(first, 7)
    history = lines[1:]
    assert texts(history) == [f"m{i}" for i in range(6)]
    cut = history[2]["id"]
    async with v1(chat, after=cut) as again:
        hello, *rest = await json_lines(again, 4)
        assert hello["type"] == "hello"
        assert texts(rest) == ["m3", "m4", "m5"]
        assert [m["id"] for m in rest] == [m["id"] for m in history[3:]]
        await again.send("next")
        (last,) = await json_lines(again, 1)
        assert last["text"] == "next"
    async with v1(chat, after=last["id"]) as current:
        assert (await json_lines(current, 1))[0]["type"] == "hello"
        await current.send("only live")
        assert texts(await json_lines(current, 1)) == ["only live"]  # no history at all


class GatedBroker(MemoryBroker):
    """The memory broker, with history reads that wait for the test to let them go:
    a slow history store (like Redis) while live messages keep arriving."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def page(self, room: str, *, after: str | None, limit: int) -> Page:
        self.reading.set()
        await self.gate.wait()
        return await super().page(room, after=after, limit=limit)


async def test_messages_during_the_history_read_are_held_and_deduplicated(start) -> None:
    broker = GatedBroker()
    chat = await start(broker=broker)
    await say(chat, [f"h{i}" for i in range(5)])
    async with v1(chat) as late:
        assert (await json_lines(late, 1))[0]["type"] == "hello"
        async with asyncio.timeout(5):
            await broker.reading.wait()
        # Published while the history is being read: they are in the history the
        # read returns AND held as live messages; each must show exactly once.
        await say(chat, [f"d{i}" for i in range(5)])
        broker.gate.set()
        got = await json_lines(late, 10)
        await late.send("after")
        got += await json_lines(late, 1)
    assert texts(got) == [f"h{i}" for i in range(5)] + [f"d{i}" for i in range(5)] + ["after"]
    ids = [m["id"] for m in got]
    assert len(set(ids)) == len(ids) and sorted(ids, key=message_id_key) == ids


async def test_names_from_the_url_and_the_name_command(start) -> None:
    chat = await start()
    async with v1(chat, name="  ann\n") as ann, v1(chat) as anon:
        assert (await json_lines(ann, 1))[0] == {"type": "hello", "room": "main", "name": "ann"}
        assert (await json_lines(anon, 1))[0]["name"] == ""
        await ann.send(json.dumps({"type": "message", "text": "one"}))
        for conn in (ann, anon):
            (one,) = await json_lines(conn, 1)
            assert (one["name"], one["text"]) == ("ann", "one")
        long_name = "bob" + "b" * 40 + "\x00"
        await anon.send(json.dumps({"type": "name", "name": long_name}))
        bob = "bob" + "b" * 29  # control characters go, 32 characters at most
        assert await json_lines(anon, 1) == [{"type": "hello", "room": "main", "name": bob}]
        await anon.send(json.dumps({"type": "message", "text": "two"}))
        for conn in (ann, anon):
            (two,) = await json_lines(conn, 1)
            assert (two["name"], two["text"]) == (bob, "two")


async def test_unknown_commands_get_an_error_and_plain_text_is_a_message(start) -> None:
    chat = await start()
    async with v1(chat, name="eve") as eve, epws.connect(ws_url(chat)) as plain:
        assert (await json_lines(eve, 1))[0]["type"] == "hello"
        await eve.send(json.dumps({"type": "dance"}))
        assert await json_lines(eve, 1) == [{"type": "error", "text": "unknown command 'dance'"}]
        await eve.send(json.dumps({"type": "message", "text": 5}))  # not a string
        (error,) = await json_lines(eve, 1)
        assert error["type"] == "error"
        await eve.send("just text\nhere")  # not JSON: a message, normalized
        await eve.send("[1, 2]")  # JSON, but not a command: a message too
        got = await json_lines(eve, 2)
        assert [(m["type"], m["name"], m["text"]) for m in got] == [
            ("message", "eve", "just text here"),
            ("message", "eve", "[1, 2]"),
        ]
        # Neither the errors nor the commands reached anyone else.
        assert await plain_lines(plain, 2) == ["just text here", "[1, 2]"]


@pytest.mark.parametrize("room", ["no spaces", "trailing/", "a//b", "a/../b", "x" * 65, "ünï"])
async def test_a_bad_room_name_closes_with_1008(start, room: str) -> None:
    chat = await start()
    async with epws.connect(url(chat, room=room)) as conn:
        with pytest.raises(epws.ConnectionClosed) as info:
            async with asyncio.timeout(5):
                await conn.recv()
    assert info.value.rcvd_code == 1008
    assert len(chat.hub) == 0


async def test_the_broker_object_outlives_a_restart(start) -> None:
    # What the browser's reconnect test relies on: the same MemoryBroker given to a
    # new server keeps the rooms' history and the id order.
    broker = MemoryBroker()
    first = await start(broker=broker)
    await say(first, ["before restart"])
    await first.close(timeout=2)
    second = await start(broker=broker)
    await say(second, ["after restart"])
    async with v1(second) as conn:
        lines = await json_lines(conn, 3)
    assert texts(lines[1:]) == ["before restart", "after restart"]
    assert message_id_key(lines[1]["id"]) < message_id_key(lines[2]["id"])
