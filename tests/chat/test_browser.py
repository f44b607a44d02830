"""The chat page in a real browser: Debian's Chromium driven by Playwright.

Two pages chat with each other; a log scrolled up stays put while one at the bottom
follows new lines; typed HTML is shown as text; the page says "Connection closed."
when the server goes away; over https the page connects with wss:.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.sync.client import connect as ws_connect

from .browser import ChatServer, chromium

pytestmark = pytest.mark.timeout(120)

LOG_DIV_COUNT = "document.querySelectorAll('#log > div').length"
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
            expect(page.locator("#log > div")).to_have_text(["hello from one", "hello from two"])
        expect(one.locator("#msg")).to_have_value("")  # the form clears the input

        # An empty input sends nothing.
        before = two.evaluate(LOG_DIV_COUNT)
        one.fill("#msg", "")
        one.press("#msg", "Enter")
        send(one, "after empty")
        expect(two.locator("#log > div").last).to_have_text("after empty")
        assert two.evaluate(LOG_DIV_COUNT) == before + 1

        # Typed HTML is shown as text, never parsed.
        send(two, "<b>x</b>")
        for page in (one, two):
            expect(page.locator("#log > div").last).to_have_text("<b>x</b>")
            assert page.locator("#log b").count() == 0

        # Fill the log past its height from a third client; lines come coalesced
        # with "\n" and each becomes its own line.
        with ws_connect(server.url.replace("http", "ws") + "ws") as third:
            for i in range(40):
                third.send(f"filler {i}")
            for page in (one, two):
                expect(page.locator("#log > div").last).to_have_text("filler 39")
            top, height, client = one.evaluate(SCROLL)
            assert height > client + 100, "the log must overflow for the scroll check"
            one.evaluate("document.getElementById('log').scrollTop = 0")  # reading old lines
            top_two, height_two, client_two = two.evaluate(SCROLL)
            assert top_two >= height_two - client_two - 1  # two is at the bottom

            for i in range(5):
                third.send(f"new {i}")
            for page in (one, two):
                expect(page.locator("#log > div").last).to_have_text("new 4")
        top, height, client = one.evaluate(SCROLL)
        assert top == 0  # scrolled up: stays put
        top_two, height_two, client_two = two.evaluate(SCROLL)
        assert height_two > height - 1 and top_two >= height_two - client_two - 1  # followed

        # The server goes away: each page says so (and does not reconnect).
        assert server.stop() == 0
        for page in (one, two):
            expect(page.locator("#log b").last).to_have_text("Connection closed.")
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
            assert info.value.url == f"wss://127.0.0.1:{chat.port}/ws"
            chat.wait_for(r"connected")
            send(page, "over tls")
            expect(page.locator("#log > div").last).to_have_text("over tls")
    finally:
        chat.kill()
