"""The blocking client, for scripts: no asyncio, no threads.

Run: .venv/bin/python examples/sync_client.py [URL]
(default ws://localhost:8080/, where examples/echo.py listens). Sends each argument
after the URL, or "hello", and prints the answers.
"""

from __future__ import annotations

import sys

import epws.sync


def main(url: str, messages: list[str]) -> None:
    with epws.sync.connect(url) as conn:
        for message in messages:
            conn.send(message)
            print(conn.recv(timeout=10))
        print(f"round trip {conn.ping() * 1000:.2f} ms", file=sys.stderr)


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8080/"
    main(url, sys.argv[2:] or ["hello"])
