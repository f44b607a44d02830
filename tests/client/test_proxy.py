"""Proxies: HTTP CONNECT through http:// and https:// proxies, SOCKS5/SOCKS4 through
python-socks, and the choice of proxy from ``proxy=`` or the environment.

Every proxy here is a real one started on loopback (tests/client/proxies.py). That a
connection went through the proxy is shown by the client's TCP peer: the proxy's port,
not the server's.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

import epws
from epws import ProxyError
from epws.asyncio.client import is_transient
from epws.asyncio.proxy import select_proxy

from . import proxies
from .servers import echo, epws_server, free_port


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http", "https", "ws", "wss", "all", "no"):
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)
    return monkeypatch


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def tls_client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def roundtrip(url: str, proxy_port: int, **options: Any) -> None:
    async with asyncio.timeout(10):
        async with epws.connect(url, **options) as conn:
            assert conn.remote_address[1] == proxy_port  # the TCP peer is the proxy
            await conn.send("through")
            assert await conn.recv() == "through"
            await conn.send(b"\x00\xff" * 1000)
            assert await conn.recv() == b"\x00\xff" * 1000


# ---------------------------------------------------------------- HTTP CONNECT


async def test_ws_through_http_proxy(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    async with epws_server(echo) as server:
        with proxies.tinyproxy(tmp_path) as pport:
            url = f"ws://127.0.0.1:{server.port}/"
            await roundtrip(url, pport, proxy=f"http://127.0.0.1:{pport}")
            # A bare host:port is an http:// proxy, as for curl.
            await roundtrip(url, pport, proxy=f"127.0.0.1:{pport}")


async def test_wss_through_http_proxy_with_basic_auth(
    tmp_path: Path, ca: trustme.CA, clean_env: pytest.MonkeyPatch
) -> None:
    async with epws_server(echo, ssl=tls_server_context(ca)) as server:
        with proxies.tinyproxy(tmp_path, auth=("alice", "s3cr3t")) as pport:
            url = f"wss://localhost:{server.port}/"
            client_ssl = tls_client_context(ca)
            good = f"http://alice:s3cr3t@127.0.0.1:{pport}"
            await roundtrip(url, pport, proxy=good, ssl=client_ssl)
            for bad in (f"http://127.0.0.1:{pport}", f"http://alice:wrong@127.0.0.1:{pport}"):
                with pytest.raises(ProxyError) as info:
                    async with asyncio.timeout(10):
                        await epws.connect(url, proxy=bad, ssl=client_ssl)
                # tinyproxy answers 401 where RFC 9110 says 407; both read as "auth".
                assert info.value.status in (401, 407)
                assert "authentication" in str(info.value)
                assert "wrong" not in str(info.value)  # the password is not in the message
            assert not server.connections


async def test_wss_through_https_proxy(
    tmp_path: Path, ca: trustme.CA, clean_env: pytest.MonkeyPatch
) -> None:
    cert = tmp_path / "proxy.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(cert))
    async with epws_server(echo, ssl=tls_server_context(ca)) as server:
        with proxies.tinyproxy(tmp_path) as inner, proxies.stunnel(tmp_path, cert, inner) as pport:
            await roundtrip(
                f"wss://localhost:{server.port}/",
                pport,
                proxy=f"https://127.0.0.1:{pport}",
                proxy_ssl=tls_client_context(ca),
                ssl=tls_client_context(ca),
            )
            # ws:// over TLS to the proxy only.
            async with epws_server(echo) as plain:
                await roundtrip(
                    f"ws://127.0.0.1:{plain.port}/",
                    pport,
                    proxy=f"https://127.0.0.1:{pport}",
                    proxy_ssl=tls_client_context(ca),
                )


async def test_http_proxy_that_cannot_reach_the_server_gives_5xx(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    with proxies.tinyproxy(tmp_path) as pport, pytest.raises(ProxyError) as info:
        async with asyncio.timeout(10):
            await epws.connect(f"ws://127.0.0.1:{free_port()}/", proxy=f"127.0.0.1:{pport}")
    assert 500 <= info.value.status < 600
    assert is_transient(info.value)


async def test_proxy_that_is_down_says_so(clean_env: pytest.MonkeyPatch) -> None:
    port = free_port()
    for scheme in ("http", "socks5"):
        with pytest.raises(OSError) as info:
            async with asyncio.timeout(10):
                await epws.connect("ws://127.0.0.1:9/", proxy=f"{scheme}://127.0.0.1:{port}")
        assert "proxy" in str(info.value).lower()
        assert str(port) in str(info.value)


# ---------------------------------------------------------------- SOCKS


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4"])
async def test_through_socks(tmp_path: Path, scheme: str, clean_env: pytest.MonkeyPatch) -> None:
    async with epws_server(echo) as server:
        with proxies.dante(tmp_path) as pport:
            host = "localhost" if scheme == "socks5h" else "127.0.0.1"
            await roundtrip(
                f"ws://{host}:{server.port}/", pport, proxy=f"{scheme}://127.0.0.1:{pport}"
            )


@pytest.mark.parametrize(("scheme", "named"), [("socks4a", "localhost"), ("socks4", "127.0.0.1")])
async def test_socks4a_lets_the_proxy_resolve_the_name(
    tmp_path: Path, scheme: str, named: str, clean_env: pytest.MonkeyPatch
) -> None:
    """socks4a:// hands the host name to the proxy (dante cannot: tiny-proxy can);
    socks4:// resolves it first and sends the address, as SOCKS4 must."""
    async with epws_server(echo) as server:
        with proxies.tiny_socks4(tmp_path) as (pport, log):
            await roundtrip(
                f"ws://localhost:{server.port}/", pport, proxy=f"{scheme}://127.0.0.1:{pport}"
            )
            # The proxy's own record of what the client asked it to connect to.
            assert f"-> ('{named}', {server.port})" in log.read_text()


async def test_socks_refusal_is_a_proxy_error(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    async with epws_server(echo) as server:
        with proxies.dante(tmp_path, blocked_port=server.port) as pport:
            with pytest.raises(ProxyError) as info:
                async with asyncio.timeout(10):
                    await epws.connect(
                        f"ws://127.0.0.1:{server.port}/", proxy=f"socks5://127.0.0.1:{pport}"
                    )
            assert info.value.status == 403
            assert not server.connections


async def test_socks5_with_password(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    async with epws_server(echo) as server:
        with proxies.microsocks(tmp_path, "bob", "hun:ter@2") as pport:
            url = f"ws://127.0.0.1:{server.port}/"
            # The password's ":" and "@" are percent-encoded in the URL.
            await roundtrip(url, pport, proxy=f"socks5://bob:hun%3Ater%402@127.0.0.1:{pport}")
            with pytest.raises(ProxyError) as info:
                async with asyncio.timeout(10):
                    await epws.connect(url, proxy=f"socks5://bob:nope@127.0.0.1:{pport}")
            assert info.value.status == 407
            assert not is_transient(info.value)


async def test_socks_without_python_socks_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, clean_env: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "python_socks", None)
    with pytest.raises(ImportError, match=r"epws\[socks\]"):
        await epws.connect("ws://127.0.0.1:9/", proxy="socks5://127.0.0.1:1080")


# ---------------------------------------------------------------- which proxy


def test_select_proxy_reads_the_environment_like_curl(clean_env: pytest.MonkeyPatch) -> None:
    env = clean_env
    assert select_proxy(True, True, "example.com", 443) is None
    env.setenv("all_proxy", "socks5://all:1")
    assert select_proxy(True, False, "example.com", 80) == "socks5://all:1"
    env.setenv("https_proxy", "http://https:1")
    env.setenv("http_proxy", "http://http:1")
    assert select_proxy(True, True, "example.com", 443) == "http://https:1"
    assert select_proxy(True, False, "example.com", 80) == "http://http:1"
    env.setenv("wss_proxy", "http://wss:1")
    env.setenv("ws_proxy", "http://ws:1")
    assert select_proxy(True, True, "example.com", 443) == "http://wss:1"
    assert select_proxy(True, False, "example.com", 80) == "http://ws:1"
    # An explicit proxy wins; None and False mean none at all.
    assert select_proxy("http://mine:1", True, "example.com", 443) == "http://mine:1"
    assert select_proxy(None, True, "example.com", 443) is None
    assert select_proxy(False, True, "example.com", 443) is None
    env.setenv("no_proxy", "localhost, .internal.example,10.0.0.1, example.org:8443,[::1]")
    for host, port in [
        ("localhost", 80),
        ("a.internal.example", 80),
        ("internal.example", 80),
        ("10.0.0.1", 80),
        ("example.org", 8443),
        ("::1", 80),
    ]:
        assert select_proxy(True, True, host, port) is None, host
    for host, port in [("example.org", 443), ("xinternal.example", 80), ("10.0.0.10", 80)]:
        assert select_proxy(True, True, host, port) == "http://wss:1", host
    env.setenv("no_proxy", "*")
    assert select_proxy(True, True, "anything", 1) is None


async def test_environment_proxy_is_used_and_no_proxy_and_none_bypass_it(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    async with epws_server(echo) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        with proxies.tinyproxy(tmp_path) as pport:
            clean_env.setenv("ws_proxy", f"http://127.0.0.1:{pport}")
            await roundtrip(url, pport)
        # The proxy is gone now: only a direct connection can succeed.
        async with asyncio.timeout(10):
            with pytest.raises(OSError):
                await epws.connect(url)
            conn = await epws.connect(url, proxy=None)
            assert conn.remote_address[1] == server.port
            await conn.close()
            clean_env.setenv("no_proxy", "127.0.0.1")
            conn = await epws.connect(url)
            assert conn.remote_address[1] == server.port
            await conn.close()
