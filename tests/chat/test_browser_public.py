"""The chat page in public, in a real browser: Debian's Chromium driven by Playwright.

What issue 14 puts on the page, each against a real ``epws-chat``: two users with
tokens see each other join and leave in the member list; a token that does not allow
the room (or no token, or one that expires) is refused with a readable line and no
endless retries; a message posted through the server API appears; a resume that could
not recover everything says so; the connection state shows connected and
reconnecting; and with a real Redis, pages on two chat processes see each other.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from epws_chat.auth import mint
from epws_chat.brokers import MemoryBroker
from epws_chat.client import Settings

from .browser import ChatServer, ChatThread, chromium
from .redis_server import RedisServer, redis_server
from .test_browser import TEXTS, line, send, set_name

__all__ = ["redis_server"]  # the fixture, re-exported for pytest

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cret-for-browser-tests-0123456789abcdef"
API_KEY = "api-key-for-browser-tests"
#: The member list's entries: a name, then " (N)" for more than one connection.
MEMBERS = "#members > li"
STATE = "#status"


def room_url(server: ChatServer, room: str, token: str | None = None) -> str:
    return server.url + f"r/{room}" + (f"?token={token}" if token else "")


def expect_state(page: Any, state: str, text: str, timeout: float = 5_000) -> None:
    from playwright.sync_api import expect

    expect(page.locator(STATE)).to_have_attribute("data-state", state, timeout=timeout)
    expect(page.locator(STATE)).to_have_text(text)


@pytest.fixture
def authed() -> Iterator[ChatServer]:
    chat = ChatServer("--auth-secret", SECRET)
    try:
        yield chat
    finally:
        chat.kill()


def test_two_users_see_each_other_join_and_leave(authed: ChatServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    alice_token = mint(SECRET, "alice", rooms="dev,ops/*")
    bob_token = mint(SECRET, "<b>bob</b>", rooms="dev")  # a name that is not HTML
    with chromium(tmp_path / "profile") as browser:
        alice = browser.new_page()
        alice.goto(room_url(authed, "dev", alice_token))
        expect_state(alice, "connected", "Connected")
        expect(alice.locator("#where")).to_have_text("room dev as alice")
        # The name is the token's: shown, not editable.
        expect(alice.locator("#name")).to_have_value("alice")
        expect(alice.locator("#name")).to_be_disabled()
        expect(alice.locator(MEMBERS)).to_have_text(["alice"])

        bob = browser.new_page()
        bob.goto(room_url(authed, "dev", bob_token))
        for page in (alice, bob):  # each sees the other (and itself)
            expect(page.locator(MEMBERS)).to_have_text(["<b>bob</b>", "alice"])
        # Bob's second tab: one member, two connections.
        bob_again = browser.new_page()
        bob_again.goto(room_url(authed, "dev", bob_token))
        for page in (alice, bob, bob_again):
            expect(page.locator(MEMBERS)).to_have_text(["<b>bob</b> (2)", "alice"])
            assert page.locator("#members b").count() == 0  # shown as text, never parsed
        send(bob, "hi alice")
        expect(alice.locator("#log > div.msg")).to_have_text([line("<b>bob</b>", "hi alice")])

        bob_again.close()
        expect(alice.locator(MEMBERS)).to_have_text(["<b>bob</b>", "alice"])
        bob.close()  # bob leaves
        expect(alice.locator(MEMBERS)).to_have_text(["alice"])
        assert authed.wait_for(r"disconnected", count=2)

        # A room elsewhere has its own list.
        ops = browser.new_page()
        ops.goto(room_url(authed, "ops/alerts", alice_token))
        expect(ops.locator("#where")).to_have_text("room ops/alerts as alice")
        expect(ops.locator(MEMBERS)).to_have_text(["alice"])
        expect(alice.locator(MEMBERS)).to_have_text(["alice"])


def refusals(server: ChatServer, status: int) -> int:
    return sum(f"refused /ws: HTTP {status}" in entry for entry in server.lines)


def test_a_refused_token_is_a_readable_line_and_no_retries(
    authed: ChatServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    dev_only = mint(SECRET, "carol", rooms="dev")
    with chromium(tmp_path / "profile") as browser:
        # A room the token does not allow: the server answers 403 before the upgrade.
        page = browser.new_page()
        page.goto(room_url(authed, "ops", dev_only))
        expect(page.locator("#log .error")).to_have_text(
            ["Refused: this token does not allow room 'ops'"]
        )
        expect_state(page, "refused", "Not connected")
        authed.wait_for(r"refused /ws: HTTP 403")
        page.wait_for_timeout(1500)  # a retry (the first after 0.25-0.5 s) would be in by now
        assert refusals(authed, 403) == 1
        expect(page.locator("#log .error")).to_have_count(1)
        expect(page.locator(MEMBERS)).to_have_count(0)

        # No token at all: 401, said as plainly.
        bare = browser.new_page()
        bare.goto(authed.url)
        expect(bare.locator("#log .error")).to_have_text(
            ["Refused: a token is required: connect with ?token=..."]
        )
        expect_state(bare, "refused", "Not connected")
        authed.wait_for(r"refused /ws: HTTP 401")

        # A token that expires while the page is open: closed with 4401, not retried.
        brief = mint(SECRET, "dave", rooms="dev", ttl=3)
        short = browser.new_page()
        short.goto(room_url(authed, "dev", brief))
        expect_state(short, "connected", "Connected")
        expect(short.locator("#log .error")).to_have_text(
            ["token expired: open the page with a new token"], timeout=6_000
        )
        expect_state(short, "refused", "Not connected")
        short.wait_for_timeout(1000)
        assert refusals(authed, 401) == 1  # the bare page's only: the expired one never retried

        # The same token, in a room it allows, connects.
        ok = browser.new_page()
        ok.goto(room_url(authed, "dev", dev_only))
        expect_state(ok, "connected", "Connected")
        expect(ok.locator(MEMBERS)).to_have_text(["carol"])
        expect(ok.locator("#log .error")).to_have_count(0)


def post(ops_port: int, room: str, body: dict[str, str], key: str = API_KEY) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{ops_port}/api/rooms/{room}/messages",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_message_posted_through_the_api_appears(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    chat = ChatServer("--ops-addr", "127.0.0.1:0", "--api-key", API_KEY)
    try:
        ops_port = int(chat.wait_for(r"ops routes served at http://[^:]+:(\d+)/").group(1))
        with chromium(tmp_path / "profile") as browser:
            news = browser.new_page()
            other = browser.new_page()
            news.goto(room_url(chat, "news"))
            other.goto(room_url(chat, "other"))
            for page in (news, other):
                expect_state(page, "connected", "Connected")
            assert post(ops_port, "news", {"text": "nope", "name": "x"}, key="wrong") == 401
            assert post(ops_port, "news", {"text": "deploy <i>done</i>", "name": "ci-bot"}) == 202
            expect(news.locator("#log > div.msg")).to_have_text(
                [line("ci-bot", "deploy <i>done</i>")]
            )
            assert news.locator("#log i").count() == 0
            # A line sent after it in the other room arrives; the API's did not leak there.
            send(other, "in other")
            expect(other.locator(TEXTS)).to_have_text(["in other"])
            expect(news.locator(TEXTS)).to_have_text(["deploy <i>done</i>"])
    finally:
        chat.kill()


def test_a_resume_that_cannot_recover_everything_says_so(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    servers = ChatThread()
    try:
        # History kept (and sent) per room: 3 messages. The page misses 6.
        broker = MemoryBroker(3)
        settings = Settings(history=3)
        chat = servers.start(broker=broker, settings=settings)
        port = chat.port
        with chromium(tmp_path / "profile") as browser:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            for i in range(2):
                send(page, f"before {i}")
            expect(page.locator(TEXTS)).to_have_text(["before 0", "before 1"])
            expect(page.locator("#log .missed")).to_have_count(0)

            servers.stop(chat)
            expect_state(page, "reconnecting", "Reconnecting\u2026")
            during = [f"during {i}" for i in range(6)]
            chat = servers.start(port, broker=broker, say=during, settings=settings)
            expect_state(page, "connected", "Connected", timeout=20_000)
            # What the history still held, then the notice: the hole is said, not hidden.
            expect(page.locator(TEXTS)).to_have_text(["before 0", "before 1", *during[3:]])
            expect(page.locator("#log .missed")).to_have_text(
                [
                    "some messages may be missing: the history no longer holds "
                    "everything after the last one shown"
                ]
            )
            targets = [c.request.target for c in chat.server.connections if c.request]
            assert len(targets) == 1 and "after=" in targets[0], targets

            # A resume the history can serve whole says nothing more.
            servers.stop(chat)
            expect_state(page, "reconnecting", "Reconnecting\u2026")
            chat = servers.start(port, broker=broker, say=["again"], settings=settings)
            expect(page.locator(TEXTS).last).to_have_text("again", timeout=20_000)
            expect_state(page, "connected", "Connected")
            expect(page.locator("#log .missed")).to_have_count(1)
    finally:
        servers.close()


def test_the_connection_state_shows_connected_and_reconnecting(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    chat = ChatServer()
    again: ChatServer | None = None
    try:
        with chromium(tmp_path / "profile") as browser:
            page = browser.new_page()
            # Until its socket opens the page says it is connecting (a socket that
            # never opens, in place of the browser's, holds it there).
            page.add_init_script(
                "window.WebSocket = function () { this.readyState = 0;"
                " this.send = this.close = function () {}; };"
            )
            page.goto(chat.url)
            expect_state(page, "connecting", "Connecting\u2026")
            page.wait_for_timeout(300)
            expect_state(page, "connecting", "Connecting\u2026")
            page.close()

            page = browser.new_page()
            page.goto(chat.url)
            expect_state(page, "connected", "Connected")
            expect(page.locator(STATE)).to_be_in_viewport()  # in sight, not clipped off
            set_name(page, "erin")
            expect(page.locator(MEMBERS)).to_have_text(["erin"])
            expect(page.locator("#people")).not_to_have_class("stale")

            assert chat.stop() == 0  # the server goes away
            expect_state(page, "reconnecting", "Reconnecting\u2026")
            expect(page.locator("#people")).to_have_class("stale")  # the list may be stale
            page.wait_for_timeout(1000)  # failed retries keep the state
            expect_state(page, "reconnecting", "Reconnecting\u2026")

            again = ChatServer("--addr", f"127.0.0.1:{chat.port}")  # back, on the same port
            expect_state(page, "connected", "Connected", timeout=20_000)
            expect(page.locator(MEMBERS)).to_have_text(["erin"])
            expect(page.locator("#people")).not_to_have_class("stale")
            send(page, "back")
            expect(page.locator(TEXTS).last).to_have_text("back")
    finally:
        chat.kill()
        if again is not None:
            again.kill()


def test_presence_across_two_processes_sharing_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    common = ("--broker", redis_server.url, "--presence-interval", "0.5")
    one = ChatServer(*common)
    two: ChatServer | None = None
    try:
        two = ChatServer(*common)
        for chat in (one, two):
            chat.wait_for(r"redis broker: connected")
        with chromium(tmp_path / "profile") as browser:
            ann = browser.new_page()
            ann.goto(room_url(one, "p"))
            set_name(ann, "ann")
            expect(ann.locator(MEMBERS)).to_have_text(["ann"])

            # The second page, on the other process (another origin: nothing of ann's
            # is remembered there), is nameless, so no member; then ann's second tab:
            # one member with two connections, on two processes.
            bob = browser.new_page()
            bob.goto(room_url(two, "p"))
            expect(bob.locator(MEMBERS)).to_have_text(["ann"])
            set_name(bob, "ann")
            for page in (ann, bob):
                expect(page.locator(MEMBERS)).to_have_text(["ann (2)"])
            set_name(bob, "bob")
            for page in (ann, bob):
                expect(page.locator(MEMBERS)).to_have_text(["ann", "bob"])
            send(bob, "from two")
            expect(ann.locator("#log > div.msg")).to_have_text([line("bob", "from two")])

            bob.close()  # bob leaves process two; ann, on process one, sees it
            expect(ann.locator(MEMBERS)).to_have_text(["ann"])
            two.wait_for(r"disconnected")
    finally:
        one.kill()
        if two is not None:
            two.kill()
