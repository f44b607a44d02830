"""A real browser against ``uvicorn app:app --ws epws.asgi:WebSocketProtocol``.

uvicorn runs as its own command in a child process, serving a FastAPI page and
WebSocket endpoint; Debian's Chromium (through Playwright, tests/chat/browser.py) opens
the page, which speaks to the endpoint with a subprotocol and permessage-deflate.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.chat.browser import chromium

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def test_fastapi_page_in_chromium_through_uvicorn_and_epws(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.asgi.browser_app:app",
        "--ws",
        "epws.asgi:WebSocketProtocol",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--lifespan",
        "off",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        port = None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "".join(lines)
        with chromium(tmp_path / "profile") as browser:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#out")).to_have_text(
                re.compile(r"^echo: hello from the browser\|chat\.v1\|permessage-deflate"),
                timeout=20_000,
            )
            expect(page.locator("#closed")).to_have_text("4000 true", timeout=20_000)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "disconnect 4000 done" in out
    assert '"WebSocket /ws" [accepted]' in out
