"""Connect through a proxy: HTTP CONNECT (http:// or https://) or SOCKS (socks5://,
socks5h://, socks4://, socks4a://; needs ``pip install 'epws[socks]'``).

Run: .venv/bin/python examples/proxy_client.py URL [PROXY]
With no PROXY, the environment decides as for curl (wss_proxy/https_proxy/all_proxy
for wss://, ws_proxy/http_proxy/all_proxy for ws://, no_proxy to exempt hosts).
Example: .venv/bin/python examples/proxy_client.py ws://echo.example/ http://user:pw@proxy:3128
"""

from __future__ import annotations

import asyncio
import sys

import epws


async def main(url: str, proxy: str | bool) -> None:
    async with epws.connect(url, proxy=proxy) as conn:
        print(f"connected through {conn.remote_address}", file=sys.stderr)
        await conn.send("hello through the proxy")
        print(await conn.recv())


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else True))
