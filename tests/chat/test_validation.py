"""What may enter the chat, and resume edge cases, with the memory broker.

A line that cannot be encoded must never cost other lines or other rooms; an
``after`` id must be parsed the same way everywhere; a resume that cannot be proven
whole says so; the history of abandoned rooms is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import epws
from epws_chat.brokers import ChatMessage, MemoryBroker, message_id_key
from epws_chat.client import Client, Settings
from epws_chat.hub import Hub

from .test_rooms import GatedBroker, json_lines, plain_lines, say, texts, url, v1


async def test_a_lone_surrogate_does_not_poison_its_batch_or_its_room(start) -> None:
    chat = await start()
    async with v1(chat) as ann, epws.connect(url(chat)) as plain:
        assert (await json_lines(ann, 1))[0]["type"] == "hello"
        # Two frames in one write: read in one callback, flushed as one batch.
        # json.dumps escapes the surrogate: valid UTF-8, valid JSON.
        bad = json.dumps({"type": "message", "text": "x\ud800y"})
        ann.send_nowait(bad)
        ann.send_nowait(json.dumps({"type": "message", "text": "innocent"}))
        # Before the fix: UnicodeEncodeError in the flush, the batch lost for all.
        assert await plain_lines(plain, 2) == ["x\ufffdy", "innocent"]
        assert texts(await json_lines(ann, 2)) == ["x\ufffdy", "innocent"]
    async with v1(chat) as later:  # and the history still loads for later joiners
        assert texts((await json_lines(later, 3))[1:]) == ["x\ufffdy", "innocent"]


async def test_a_bad_line_from_a_broker_costs_only_itself(conn_pairs) -> None:
    hub = Hub()
    await hub.start()
    pairs = await conn_pairs(2)
    members = [Client(hub, conn, Settings()) for conn, _ in pairs]
    members[1].speaks_json = True
    for member in members:
        hub.register(member)
    now = time.time()
    # As if another process (or an older version) put it in Redis: the last line of
    # defence is the flush itself.
    hub.deliver(ChatMessage("1-0", "main", "", "bad \ud800", now))
    hub.deliver(ChatMessage("1-1", "main", "", "good", now))
    async with asyncio.timeout(5):
        assert await pairs[0][1].recv() == "good"
        (line,) = str(await pairs[1][1].recv()).split("\n")
    assert json.loads(line)["text"] == "good"


@pytest.mark.parametrize(
    "bad",
    [
        "1_0-0",
        " 1-0",
        "1-0 ",
        "+1-0",
        "\u0661-0",
        "1",
        "1--0",
        "-1-0",
        "18446744073709551616-0",
        "",
    ],
)
def test_one_strict_id_parser(bad: str) -> None:
    with pytest.raises(ValueError):
        message_id_key(bad)
    with pytest.raises(ValueError):
        message_id_key(bad.encode())


def test_the_id_parser_orders_ids() -> None:
    assert message_id_key("12-3") < message_id_key("12-10") < message_id_key("13-0")
    assert message_id_key(b"0-0") == (0, 0)
    assert message_id_key("18446744073709551615-18446744073709551615") == (2**64 - 1,) * 2


async def test_an_after_in_the_future_keeps_the_live_lines(start) -> None:
    broker = GatedBroker()
    chat = await start(broker=broker)
    await say(chat, ["old"])
    async with v1(chat, after="99999999999999-0") as conn:
        assert (await json_lines(conn, 1))[0]["type"] == "hello"
        async with asyncio.timeout(5):
            await broker.reading.wait()
        await say(chat, ["live while loading"])  # held: the history is not read yet
        broker.gate.set()
        # Before the fix: dropped as "older than after"; now it is shown, with the
        # notice that the resume named no message of this history.
        got = await json_lines(conn, 2)
    assert got[0]["type"] == "error" and got[0]["missed"] is True
    assert texts(got[1:]) == ["live while loading"]


async def test_a_gap_longer_than_the_history_is_reported(start) -> None:
    chat = await start(Settings(history=3))
    async with v1(chat) as first:
        await json_lines(first, 1)
        await say(chat, ["m0"])
        (m0,) = await json_lines(first, 1)
        await say(chat, [f"m{i}" for i in range(1, 6)])
        rest = await json_lines(first, 5)
    async with v1(chat, after=m0["id"]) as back:
        got = await json_lines(back, 5)
    assert texts(got[1:4]) == ["m3", "m4", "m5"]
    # Before the fix: m1 and m2 silently missing.
    assert got[4]["type"] == "error" and got[4]["missed"] is True
    async with v1(chat, after=rest[2]["id"]) as whole:  # m3: still in the history
        got = await json_lines(whole, 3)
        assert texts(got[1:]) == ["m4", "m5"]
        await whole.send("live")
        assert texts(await json_lines(whole, 1)) == ["live"]  # no notice came before it


async def test_a_new_broker_is_a_new_history_and_says_so(start) -> None:
    first = await start()
    async with v1(first) as conn:
        await json_lines(conn, 1)
        await say(first, ["before"])
        (before,) = await json_lines(conn, 1)
    second = await start(broker=MemoryBroker())  # a restarted process: history lost
    await say(second, ["after"])
    async with v1(second, after=before["id"]) as back:
        got = await json_lines(back, 3)
    assert texts(got[1:2]) == ["after"]
    assert got[2]["type"] == "error" and got[2]["missed"] is True


async def test_no_id_of_an_earlier_broker_names_a_message_of_a_later_one() -> None:
    # A restart within one millisecond: before the fix the new broker's first id was
    # the old one's last (both "<ms>-0"), a resume from it was taken for whole and
    # the message said since was silently skipped (a tight loop hits that every time).
    ids: list[str] = []
    for _ in range(300):
        ids.clear()
        old = MemoryBroker()
        await old.start(lambda message: ids.append(message.id))
        old.publish("main", "", "before the restart", print)
        new = MemoryBroker()
        await new.start(lambda message: ids.append(message.id))
        new.publish("main", "", "after the restart", print)
        assert message_id_key(ids[1]) > message_id_key(ids[0]), ids
        page = await new.page("main", after=ids[0], limit=10)
        assert [m.text for m in page.messages] == ["after the restart"]
        assert not page.complete
        # A room the new broker has never heard of, with nothing said at all: whole.
        fresh = MemoryBroker()
        assert (await fresh.page("main", after=ids[0], limit=10)).complete


async def test_the_history_of_abandoned_rooms_is_bounded() -> None:
    broker = MemoryBroker(history=5, max_rooms=50)
    await broker.start(lambda message: None)
    broker.subscribe("active")
    broker.publish("active", "", "kept", print)
    for i in range(2000):
        room = f"walk{i}"
        broker.subscribe(room)
        broker.publish(room, "", "x", print)
        broker.unsubscribe(room)
    assert len(broker) <= 50  # before: 2001 rings, growing with every name
    assert [m.text for m in await broker.history("active", after=None, limit=5)] == ["kept"]


async def test_the_history_of_an_empty_room_ages_out() -> None:
    broker = MemoryBroker(history=5, retention=0.2)
    await broker.start(lambda message: None)
    for room in ("left", "stays"):
        broker.subscribe(room)
        broker.publish(room, "", f"in {room}", print)
    broker.unsubscribe("left")
    await asyncio.sleep(0.3)
    assert await broker.history("left", after=None, limit=5) == []
    assert [m.text for m in await broker.history("stays", after=None, limit=5)] == ["in stays"]
    assert len(broker) == 1
