"""Presence on one process: who is in a room, join and leave lines, batched.

Presence is opt-in (``?presence=1``): clients that do not ask get the protocol they
had. A thousand changes within one loop iteration must be one frame per watcher.
"""

from __future__ import annotations

import asyncio
import json

import epws
from epws_chat.client import PROTOCOL

from .test_rooms import json_lines, url


async def test_join_and_leave_lines_and_the_snapshot(start) -> None:
    chat = await start()
    ann = await epws.connect(url(chat, room="p", name="ann", presence="1"), subprotocols=[PROTOCOL])
    hello, snapshot, joined = await json_lines(ann, 3)
    assert hello["type"] == "hello"
    assert snapshot == {"type": "presence", "room": "p", "members": {}}
    assert joined == {"type": "join", "room": "p", "name": "ann", "connections": 1}
    bob = await epws.connect(url(chat, room="p", name="bob", presence="1"), subprotocols=[PROTOCOL])
    _, snapshot, _ = await json_lines(bob, 3)
    assert snapshot["members"] == {"ann": 1}
    (line,) = await json_lines(ann, 1)
    assert line == {"type": "join", "room": "p", "name": "bob", "connections": 1}
    tab2 = await epws.connect(url(chat, room="p", name="bob"), subprotocols=[PROTOCOL])
    (line,) = await json_lines(ann, 1)
    assert (line["type"], line["connections"]) == ("join", 2)
    await tab2.close()
    (line,) = await json_lines(ann, 1)
    assert (line["type"], line["name"], line["connections"]) == ("leave", "bob", 1)
    await bob.send(json.dumps({"type": "name", "name": "rob"}))
    lines = await json_lines(ann, 2)
    assert {(m["type"], m["name"]) for m in lines} == {("leave", "bob"), ("join", "rob")}
    assert chat.hub.local_members("p") == {"ann": 1, "rob": 1}
    await bob.close()
    (line,) = await json_lines(ann, 1)
    assert (line["type"], line["name"], line["connections"]) == ("leave", "rob", 0)
    await ann.close()


async def test_many_joins_in_one_iteration_are_one_frame(start) -> None:
    chat = await start()
    watcher = await epws.connect(
        url(chat, room="big", name="w", presence="1"), subprotocols=[PROTOCOL]
    )
    await json_lines(watcher, 3)
    conns = await asyncio.gather(
        *(
            epws.connect(url(chat, room="big", name=f"u{i}"), subprotocols=[PROTOCOL])
            for i in range(60)
        )
    )
    seen: set[str] = set()
    frames = 0
    async with asyncio.timeout(5):
        while len(seen) < 60:
            data = await watcher.recv()
            frames += 1
            assert isinstance(data, str)
            seen.update(json.loads(line)["name"] for line in data.split("\n"))
    assert seen == {f"u{i}" for i in range(60)}
    assert frames < 60  # joins that land in one iteration share a frame
    for conn in [*conns, watcher]:
        await conn.close()


async def test_clients_that_do_not_ask_get_no_presence_lines(start) -> None:
    chat = await start()
    quiet = await epws.connect(url(chat, room="q", name="x"), subprotocols=[PROTOCOL])
    await json_lines(quiet, 1)
    other = await epws.connect(url(chat, room="q", name="y"), subprotocols=[PROTOCOL])
    await json_lines(other, 1)
    await other.send("hi")
    (line,) = await json_lines(quiet, 1)
    assert line["type"] == "message"
    await quiet.close()
    await other.close()
