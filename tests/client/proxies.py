"""Real proxy servers started on loopback for the proxy tests (Debian packages).

- tinyproxy: an HTTP proxy (CONNECT), optionally with Basic auth;
- stunnel in front of tinyproxy: an ``https://`` proxy (TLS to the proxy);
- dante (danted): SOCKS5 and SOCKS4, no auth, with one destination blocked;
- microsocks: SOCKS5 with a user name and password;
- tiny-proxy (from PyPI, in the test extras): SOCKS4 and SOCKS4a, which dante lacks.

scripts/setup installs them. Each runs as a child process in the foreground, is
waited for until it accepts connections, and is terminated on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import free_port


def need(binary: str) -> str:
    path = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{binary} is missing: run scripts/setup (it installs the test proxies)")
    return path


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"proxy not listening on {port} after 10 s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _run(argv: list[str], port: int, log: Path) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(port, proc, log)
        yield port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def tinyproxy(tmp: Path, auth: tuple[str, str] | None = None) -> Iterator[int]:
    """An HTTP CONNECT proxy; yields its port."""
    port = free_port()
    conf = tmp / f"tinyproxy-{port}.conf"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        "MaxClients 64",
        "LogLevel Connect",
        "Allow 127.0.0.1",
    ]
    if os.geteuid() == 0:
        lines += ["User nobody", "Group nogroup"]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf.write_text("\n".join(lines) + "\n")
    with _run([need("tinyproxy"), "-d", "-c", str(conf)], port, tmp / f"tinyproxy-{port}.log"):
        yield port


@contextlib.contextmanager
def stunnel(tmp: Path, cert_pem: Path, target_port: int) -> Iterator[int]:
    """TLS on a port of its own, forwarding to ``target_port``: an https:// proxy."""
    port = free_port()
    conf = tmp / f"stunnel-{port}.conf"
    conf.write_text(
        "foreground = yes\npid =\n"
        "[proxy]\n"
        f"accept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target_port}\ncert = {cert_pem}\n"
    )
    with _run([need("stunnel4"), str(conf)], port, tmp / f"stunnel-{port}.log"):
        yield port


@contextlib.contextmanager
def dante(tmp: Path, blocked_port: int | None = None) -> Iterator[int]:
    """SOCKS5 + SOCKS4 without auth; connections to ``blocked_port`` are refused."""
    port = free_port()
    conf = tmp / f"danted-{port}.conf"
    block = ""
    if blocked_port is not None:
        block = (
            "socks block {\n from: 127.0.0.0/8 to: 127.0.0.1/32 port = "
            f"{blocked_port}\n log: connect error\n}}\n"
        )
    privileges = "user.privileged: root\nuser.unprivileged: nobody\n" if os.geteuid() == 0 else ""
    conf.write_text(
        "logoutput: stderr\n"
        f"internal: 127.0.0.1 port = {port}\n"
        "external: 127.0.0.1\n"
        "clientmethod: none\nsocksmethod: none\n"
        f"{privileges}"
        "client pass {\n from: 127.0.0.0/8 to: 0.0.0.0/0\n}\n"
        f"{block}"
        "socks pass {\n from: 127.0.0.0/8 to: 0.0.0.0/0\n protocol: tcp\n}\n"
    )
    with _run([need("danted"), "-f", str(conf), "-N", "1"], port, tmp / f"danted-{port}.log"):
        yield port


#: A SOCKS4/SOCKS4a server on the port given as argv[1], logging each CONNECT (with
#: the destination as the client named it: a host name only under SOCKS4a) to stderr.
_TINY_SOCKS4 = """
import logging, sys
import anyio
from tiny_proxy import Socks4ProxyHandler

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

async def main():
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=int(sys.argv[1]))
    await listener.serve(Socks4ProxyHandler().handle)

anyio.run(main)
"""


@contextlib.contextmanager
def tiny_socks4(tmp: Path) -> Iterator[tuple[int, Path]]:
    """SOCKS4 and SOCKS4a without auth (tiny-proxy); yields its port and its log."""
    if importlib.util.find_spec("tiny_proxy") is None:
        pytest.fail("tiny-proxy is missing: run scripts/setup (it is in the test extras)")
    port = free_port()
    log = tmp / f"tiny-socks4-{port}.log"
    with _run([sys.executable, "-c", _TINY_SOCKS4, str(port)], port, log):
        yield port, log


@contextlib.contextmanager
def microsocks(tmp: Path, user: str, password: str) -> Iterator[int]:
    """SOCKS5 with user name and password (RFC 1929)."""
    port = free_port()
    argv = [need("microsocks"), "-i", "127.0.0.1", "-p", str(port), "-u", user, "-P", password]
    with _run(argv, port, tmp / f"microsocks-{port}.log"):
        yield port
