"""The supervisor's ops port with ``--workers N``: one address for the whole server.

Each worker runs its own ops listener on a private loopback port it reports to the
supervisor (its ``ready ops=PORT`` line); the supervisor listens on ``--ops-addr``
and answers from all of them:

* ``GET /metrics``: every worker's exposition, samples added up
  (:func:`~epws_chat.metrics.merge_expositions`): aggregation by the parent, rather
  than prometheus_client's multiprocess mode, because that mode keeps every value in
  a memory-mapped file (a write per ``inc()``, which is the hot-path cost the chat's
  plain-int counters avoid) and cannot carry custom collectors;
* ``GET /api/stats``: every worker's figures, numbers added up;
* ``GET /readyz``: ready when every worker is;
* other ``/api`` routes: passed to one worker, in turn (they all share the broker,
  so any one answers for the whole server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

from .metrics import merge_expositions
from .ops import OpsResponse, Request, error

__all__ = ["FleetRoutes", "fetch"]

_TIMEOUT = 5.0


async def fetch(port: int, request: Request) -> tuple[int, str, bytes]:
    """Pass ``request`` to a worker's ops port on 127.0.0.1: (status, type, body)."""
    target = urllib.parse.quote(request.path, safe="/")
    if request.query:
        target += "?" + urllib.parse.urlencode(request.query, doseq=True)
    head = [f"{request.method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for name in ("authorization", "content-type"):
        if name in request.headers:
            head.append(f"{name}: {request.headers[name]}")
    head.append(f"Content-Length: {len(request.body)}")
    async with asyncio.timeout(_TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + request.body)
            data = await reader.read()
        finally:
            writer.close()
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    kind = "application/json"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-type":
            kind = value.strip()
    return status, kind, body


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


class FleetRoutes:
    """The supervisor's ops routes over the workers' ops ports.

    Args:
        ports: the ops ports of the workers that are up now (called per request).
    """

    def __init__(self, ports: Callable[[], list[int]]) -> None:
        self.ports = ports
        self._turn = itertools.count()

    async def _all(self, request: Request) -> list[tuple[int, str, bytes]] | OpsResponse:
        ports = self.ports()
        if not ports:
            return error(503, "no worker is up")
        try:
            return list(await asyncio.gather(*(fetch(p, request) for p in ports)))
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            return error(502, f"a worker did not answer: {exc}")

    async def __call__(self, request: Request) -> OpsResponse:
        path = request.path
        if path == "/healthz":
            return OpsResponse.json(200, {"status": "ok"})
        if path in ("/metrics", "/readyz", "/api/stats"):
            answers = await self._all(request)
            if isinstance(answers, OpsResponse):
                return answers
            failed = [a for a in answers if a[0] != 200]
            if failed:
                status, kind, body = failed[0]
                return OpsResponse(status, body, kind)
            if path == "/metrics":
                merged = merge_expositions(a[2].decode() for a in answers)
                return OpsResponse(200, merged, answers[0][1])
            if path == "/readyz":
                return OpsResponse.json(200, {"status": "ready", "workers": len(answers)})
            total: dict[str, Any] = {}
            for answer in answers:
                _add(total, json.loads(answer[2]))
            total["workers"] = len(answers)
            return OpsResponse.json(200, total)
        ports = self.ports()
        if not ports:
            return error(503, "no worker is up")
        port = ports[next(self._turn) % len(ports)]
        try:
            status, kind, body = await fetch(port, request)
        except (OSError, TimeoutError, ValueError, IndexError) as exc:
            return error(502, f"the worker did not answer: {exc}")
        return OpsResponse(status, body, kind)
