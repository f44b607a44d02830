"""The chat page in a real browser: Debian's Chromium driven by Playwright.

Two pages chat with each other; a log scrolled up stays put while one at the bottom
follows new lines; typed HTML is shown as text; the page says "Connection closed."
when the server goes away, then reconnects by itself and resumes without losing or
repeating a line; names and times are shown; rooms are separate; over https the page
connects with wss:.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from .browser import ChatServer, ChatThread, chromium

pytestmark = pytest.mark.timeout(120)

LOG_DIV_COUNT = "document.querySelectorAll('#log > div').length"
#: The text part of each chat line (each line also shows its time and sender).
TEXTS = "#log > div.msg .text"
SCROLL = (
    "(() => { const l = document.getElementById('log');"
    " return [l.scrollTop, l.scrollHeight, l.clientHeight]; })()"
)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    chat = ChatServer()
    try:
        yield chat
    finally:
        chat.kill()


def send(page: Any, text: str) -> None:
    page.fill("#msg", text)
    page.press("#msg", "Enter")


def last_line(page: Any) -> str:
    return str(page.evaluate("document.querySelector('#log > div:last-child').textContent"))


def test_two_pages_chat_scroll_escape_and_close(server: ChatServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path / "profile", viewport={"width": 900, "height": 300}) as browser:
        one = browser.new_page()
        two = browser.new_page()
        for n, page in enumerate((one, two), 1):
            page.goto(server.url)
            server.wait_for(r"connected", count=n)  # this page's socket is registered
        assert one.title() == "Chat Example"

        # Two pages see each other's messages, the sender's own included, in order.
        send(one, "hello from one")
        send(two, "hello from two")
        for page in (one, two):
            expect(page.locator(TEXTS)).to_have_text(["hello from one", "hello from two"])
            # Nameless pages: each line is the local time and the text.
            expect(page.locator("#log > div")).to_have_text(
                [
                    re.compile(r"^\d\d:\d\d hello from one$"),
                    re.compile(r"^\d\d:\d\d hello from two$"),
                ]
            )
        expect(one.locator("#msg")).to_have_value("")  # the form clears the input

        # An empty input sends nothing.
        before = two.evaluate(LOG_DIV_COUNT)
        one.fill("#msg", "")
        one.press("#msg", "Enter")
        send(one, "after empty")
        expect(two.locator(TEXTS).last).to_have_text("after empty")
        assert two.evaluate(LOG_DIV_COUNT) == before + 1

        # Typed HTML is shown as text, never parsed.
        send(two, "<b>x</b>")
        for page in (one, two):
            expect(page.locator(TEXTS).last).to_have_text("<b>x</b>")
            assert page.locator("#log b").count() == 0

        # Fill the log past its height from a third client; lines come coalesced
        # with "\n" and each becomes its own line.
        with ws_connect(server.url.replace("http", "ws") + "ws") as third:
            for i in range(40):
                third.send(f"filler {i}")
            for page in (one, two):
                expect(page.locator(TEXTS).last).to_have_text("filler 39")
            top, height, client = one.evaluate(SCROLL)
            assert height > client + 100, "the log must overflow for the scroll check"
            one.evaluate("document.getElementById('log').scrollTop = 0")  # reading old lines
            top_two, height_two, client_two = two.evaluate(SCROLL)
            assert top_two >= height_two - client_two - 1  # two is at the bottom

            for i in range(5):
                third.send(f"new {i}")
            for page in (one, two):
                expect(page.locator(TEXTS).last).to_have_text("new 4")
        top, height, client = one.evaluate(SCROLL)
        assert top == 0  # scrolled up: stays put
        top_two, height_two, client_two = two.evaluate(SCROLL)
        assert height_two > height - 1 and top_two >= height_two - client_two - 1  # followed

        # The server goes away: each page says so, once, and tries to come back.
        assert server.stop() == 0
        for page in (one, two):
            expect(page.locator("#log b").last).to_have_text("Connection closed.")
            assert last_line(page) == "Connection closed."
            expect(page.locator("#status")).to_have_text("Reconnecting\u2026")
        one.wait_for_timeout(1200)  # a few failed retries: no further lines
        for page in (one, two):
            assert page.locator("#log b").count() == 1
            assert last_line(page) == "Connection closed."


def test_without_websocket_support_the_page_says_so(server: ChatServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path / "profile") as browser:
        page = browser.new_page()
        page.add_init_script("delete window.WebSocket;")
        page.goto(server.url)
        expect(page.locator("#log b")).to_have_text("Your browser does not support WebSockets.")
        send(page, "nobody hears this")  # the form does nothing without a connection
        expect(page.locator("#msg")).to_have_value("nobody hears this")
    assert not any("connected" in line for line in server.lines)


def test_https_page_connects_with_wss(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    chat = ChatServer("--certfile", str(certfile), "--keyfile", str(keyfile))
    try:
        assert chat.url.startswith("https://")
        with chromium(tmp_path / "profile", ignore_https_errors=True) as browser:
            page = browser.new_page()
            with page.expect_websocket() as info:
                page.goto(chat.url)
            assert info.value.url == f"wss://127.0.0.1:{chat.port}/ws?presence=1"
            chat.wait_for(r"connected")
            send(page, "over tls")
            expect(page.locator(TEXTS).last).to_have_text("over tls")
    finally:
        chat.kill()


def set_name(page: Any, name: str) -> None:
    """Type a name in the page's name box and leave it (its change event)."""
    page.fill("#name", name)
    page.press("#name", "Tab")
    from playwright.sync_api import expect

    expect(page.locator("#where")).to_contain_text(f"as {name}")


def line(name: str, text: str) -> re.Pattern[str]:
    return re.compile(rf"^\d\d:\d\d {re.escape(name)}: {re.escape(text)}$")


def test_names_and_times_are_shown_and_the_name_is_remembered(
    server: ChatServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path / "profile") as browser:
        one = browser.new_page()
        two = browser.new_page()
        for n, page in enumerate((one, two), 1):
            page.goto(server.url)
            server.wait_for(r"connected", count=n)
        set_name(one, "alice")
        set_name(two, "bob")
        send(one, "hi bob")
        send(two, "hi alice")
        for page in (one, two):
            expect(page.locator("#log > div.msg")).to_have_text(
                [line("alice", "hi bob"), line("bob", "hi alice")]
            )
        # The time is the reader's local time of the server's timestamp.
        shown = one.locator("#log > div.msg .time").first.text_content()
        now = one.evaluate(
            "(() => { const d = new Date(); return [d.getHours(), d.getMinutes()]; })()"
        )
        hours, minutes = map(int, str(shown).split(":"))
        assert (hours * 60 + minutes - (now[0] * 60 + now[1])) % 1440 in (0, 1439)
        expect(one.locator("#where")).to_have_text("room main as alice")

        # The name is remembered (the last one set in this browser: bob), and the
        # new page gets the room's history with who said what.
        three = browser.new_page()
        three.goto(server.url)
        expect(three.locator("#name")).to_have_value("bob")
        expect(three.locator("#where")).to_have_text("room main as bob")
        expect(three.locator("#log > div.msg")).to_have_text(
            [line("alice", "hi bob"), line("bob", "hi alice")]
        )
        send(three, "bob again")
        expect(one.locator("#log > div.msg").last).to_have_text(line("bob", "bob again"))


def test_rooms_are_separate_pages(server: ChatServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with chromium(tmp_path / "profile") as browser:
        alpha = browser.new_page()
        beta = browser.new_page()
        main = browser.new_page()
        alpha.goto(server.url + "r/alpha")
        beta.goto(server.url + "?room=beta")
        main.goto(server.url)
        server.wait_for(r"connected", count=3)
        expect(alpha.locator("#where")).to_have_text("room alpha")
        expect(beta.locator("#where")).to_have_text("room beta")
        expect(main.locator("#where")).to_have_text("room main")
        assert alpha.title() == beta.title() == "Chat Example"
        send(alpha, "in alpha")
        send(beta, "in beta")
        send(main, "in main")
        expect(alpha.locator(TEXTS)).to_have_text(["in alpha"])
        expect(beta.locator(TEXTS)).to_have_text(["in beta"])
        expect(main.locator(TEXTS)).to_have_text(["in main"])
        # A later line in each room arrives after the others' lines were sent: had
        # they leaked, they would be in the log by now.
        send(alpha, "alpha 2")
        send(beta, "beta 2")
        expect(alpha.locator(TEXTS)).to_have_text(["in alpha", "alpha 2"])
        expect(beta.locator(TEXTS)).to_have_text(["in beta", "beta 2"])
        expect(main.locator(TEXTS)).to_have_text(["in main"])

        # The room's name is a link to its page; "/join NAME" follows one.
        assert alpha.locator("#where a").get_attribute("href") == "/r/alpha"
        send(main, "/join beta")
        main.wait_for_url("**/r/beta")
        expect(main.locator("#where")).to_have_text("room beta")
        expect(main.locator(TEXTS)).to_have_text(["in beta", "beta 2"])  # its history
        send(main, "joined beta")
        expect(beta.locator(TEXTS).last).to_have_text("joined beta")
        expect(alpha.locator(TEXTS)).to_have_text(["in alpha", "alpha 2"])


def test_the_page_reconnects_and_resumes_without_loss_or_repeats(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from epws_chat.brokers import MemoryBroker

    servers = ChatThread()
    try:
        broker = MemoryBroker()
        chat = servers.start(broker=broker)
        port = chat.port
        url = f"http://127.0.0.1:{port}/"
        with chromium(tmp_path / "profile") as browser:
            page = browser.new_page()
            page.goto(url)
            set_name(page, "dana")
            for i in range(3):
                send(page, f"before {i}")
            expect(page.locator(TEXTS)).to_have_text([f"before {i}" for i in range(3)])

            servers.stop(chat)  # every page gets 1001
            expect(page.locator("#log b").last).to_have_text("Connection closed.")
            expect(page.locator("#status")).to_have_text("Reconnecting\u2026")

            # A new server on the same port with the same broker (a restart that keeps
            # the history); lines are published as it starts, while the page is away.
            during = [f"during {i}" for i in range(4)]
            chat = servers.start(port, broker=broker, say=during)
            expected = [f"before {i}" for i in range(3)] + during
            expect(page.locator(TEXTS)).to_have_text(expected, timeout=20_000)
            expect(page.locator("#status")).to_have_text("Connected")
            # The page resumed after the last id it had shown, rather than reloading
            # the history (which would have repeated the first lines but for the
            # page's own check).
            targets = [c.request.target for c in chat.server.connections if c.request]
            assert len(targets) == 1 and "after=" in targets[0], targets
            expect(page.locator("#log > div.msg").last).to_have_text(line("carol", "during 3"))

            send(page, "after")
            expect(page.locator(TEXTS)).to_have_text([*expected, "after"])
            expect(page.locator("#where")).to_have_text("room main as dana")
            assert page.locator("#log b").count() == 1  # one drop, one "Connection closed."
    finally:
        servers.close()
