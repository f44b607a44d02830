"""Abuse controls that sit in front of the hub: connection caps and log rate limits.

A chat on the open web meets scanners and floods on day one. The per-message rate
limit lives in the read pump (:class:`~epws_chat.client.Client`); this module holds
what is counted per process:

* :class:`Gate`: a cap on connections in total (refused with HTTP 503 before the
  upgrade) and per client address (HTTP 429 before the upgrade when the address is
  known from a trusted ``X-Forwarded-For``; otherwise, because epws's
  ``process_request`` does not see the peer's address, right after the upgrade with
  close code 1013 "try again later"). The forwarded header is trusted only when the
  operator says a proxy sets it: anyone can send one.
* :class:`RateLimitedLog`: a logging filter that lets a bounded number of lines per
  second through per logger and then counts what it drops, so a scanner that sends
  a request (or a refused handshake) per millisecond cannot fill the disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import epws

__all__ = ["Gate", "RateLimitedLog", "TokenBucket", "install_log_limits"]


@dataclass(slots=True)
class Gate:
    """Counts open connections, in total and per client address.

    Attributes:
        max_connections: open WebSocket connections in total (0: no cap).
        max_per_address: open connections per client address (0: no cap).
        trust_forwarded: take the client's address from the first ``X-Forwarded-For``
            entry (set this only behind a proxy that writes the header).
    """

    max_connections: int = 10_000
    max_per_address: int = 256
    trust_forwarded: bool = False
    total: int = 0
    by_address: dict[str, int] = field(default_factory=dict)
    refused: int = 0

    def address_of(self, request: epws.Request | None, conn: epws.Conn | None) -> str:
        """The client's address: a trusted forwarded one, else the peer's IP."""
        if self.trust_forwarded and request is not None:
            forwarded = request.headers.get("X-Forwarded-For")
            if forwarded:
                return forwarded.split(",")[0].strip()
        peer = conn.remote_address if conn is not None else None
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return str(peer)

    def check_request(self, request: epws.Request) -> epws.HTTPResponse | None:
        """Before the upgrade: a refusal (503 full, 429 this address) or None."""
        if self.max_connections and self.total >= self.max_connections:
            self.refused += 1
            return epws.HTTPResponse(
                503, "Too many connections; try again later\n", headers=[("Retry-After", "5")]
            )
        if self.trust_forwarded and self.max_per_address:
            address = self.address_of(request, None)
            if self.by_address.get(address, 0) >= self.max_per_address:
                self.refused += 1
                return epws.HTTPResponse(
                    429,
                    "Too many connections from your address\n",
                    headers=[("Retry-After", "5")],
                )
        return None

    def admit(self, conn: epws.Conn) -> str | None:
        """After the upgrade: count ``conn``; its address, or None if over a cap."""
        address = self.address_of(conn.request, conn)
        if self.max_connections and self.total >= self.max_connections:
            self.refused += 1
            return None
        count = self.by_address.get(address, 0)
        if self.max_per_address and count >= self.max_per_address:
            self.refused += 1
            return None
        self.by_address[address] = count + 1
        self.total += 1
        return address

    def release(self, address: str) -> None:
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)
        self.total = max(0, self.total - 1)


class TokenBucket:
    """One connection's message rate limit: ``rate`` per second on average, ``burst``
    at once, and the strikes that tell a burst from abuse.

    Made at a client's first message, so that an idle connection (most of a chat's)
    carries none of it; full when made, as if it had been counting since the client
    joined.
    """

    __slots__ = ("dropped", "stamp", "strikes", "tokens", "told")

    def __init__(self, now: float, burst: int) -> None:
        self.tokens = float(burst)
        self.stamp = now
        #: Dropped messages, decaying at ``rate`` per second (closed past ``abuse_limit``).
        self.strikes = 0.0
        #: Whether the sender was told of the current episode of drops.
        self.told = False
        #: Messages dropped in all.
        self.dropped = 0

    def take(self, now: float, rate: float, burst: int) -> bool:
        """Count one message: True if it may pass, False if it is over the rate (then
        it is counted as dropped and as a strike)."""
        elapsed = now - self.stamp
        self.stamp = now
        tokens = min(burst, self.tokens + elapsed * rate)
        decayed = max(0.0, self.strikes - elapsed * rate)
        if tokens < 1.0:
            self.tokens = tokens
            self.strikes = decayed + 1.0
            self.dropped += 1
            return False
        self.tokens = tokens - 1.0
        self.strikes = decayed
        self.told = False
        return True


class RateLimitedLog(logging.Filter):
    """At most ``per_second`` records per second (a burst of as many) pass at
    ``level`` and below; WARNING and above always pass unless ``level`` covers them.
    When records were dropped, the next one that passes says how many."""

    def __init__(self, per_second: float = 20.0, level: int = logging.INFO) -> None:
        super().__init__()
        self.per_second = per_second
        self.level = level
        self._tokens = per_second
        self._stamp = time.monotonic()
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.level or self.per_second <= 0:
            return True
        now = time.monotonic()
        self._tokens = min(self.per_second, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now
        if self._tokens < 1.0:
            self.dropped += 1
            return False
        self._tokens -= 1.0
        if self.dropped:
            record.msg = f"{record.msg} [{self.dropped} similar line(s) suppressed]"
            self.dropped = 0
        return True


#: Loggers whose lines come once per request or connection: what a flood multiplies.
FLOODABLE = ("epws.server", "epws_chat", "epws_chat.client", "epws_chat.hub")


def install_log_limits(per_second: float) -> list[RateLimitedLog]:
    """Put one :class:`RateLimitedLog` on each per-request logger (0: no limit)."""
    filters = []
    for name in FLOODABLE:
        log_filter = RateLimitedLog(per_second)
        logging.getLogger(name).addFilter(log_filter)
        filters.append(log_filter)
    return filters
