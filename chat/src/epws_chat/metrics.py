"""What the chat counts, and how ``GET /metrics`` shows it (Prometheus' text format).

The hot path pays for plain integer additions only: the hub adds to a
:class:`Counters` once per batch it writes (not once per recipient), the read pump
once per message it takes. Nothing on that path calls into prometheus_client: a
:class:`ChatCollector` reads the integers when Prometheus scrapes and builds the
metric families then. ``--metrics off`` (``EPWS_CHAT_METRICS=off``) removes even the
additions, which is how the benchmark measures what they cost (docs/chat-in-public.md).

With ``--workers N`` each worker counts its own; the supervisor scrapes every worker
and adds the samples up (:func:`merge_expositions`), so one scrape sees the whole
server. Summing is right for every family here: counters and histogram buckets are
counts, and the gauges (connections, rooms) are per-process shares of a total.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = [
    "LATENCY_BUCKETS",
    "ChatCollector",
    "Counters",
    "Histogram",
    "merge_expositions",
    "render",
]

#: Upper bounds (seconds) of the broker publish latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A fixed-bucket histogram in plain ints (one ``bisect`` per observation)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' buckets: (upper bound, observations at or below it)."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class Counters:
    """The chat's figures since the process started, as plain ints.

    Each attribute has one writer: handshakes (the HTTP side), messages and bytes
    (the read pump and the hub's batch writer), evictions (whoever closes),
    resumes (the history sender), the broker figures (the broker).
    """

    __slots__ = (
        "broker_reconnects",
        "bytes_in",
        "bytes_out",
        "evictions",
        "frames_out",
        "handshakes",
        "messages_in",
        "messages_out",
        "publish_latency",
        "rate_limited",
        "resumes",
    )

    def __init__(self) -> None:
        self.handshakes: dict[int, int] = {}
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0  # lines delivered, per recipient
        self.frames_out = 0  # WebSocket messages written (a batch is one)
        self.bytes_out = 0
        self.evictions: dict[str, int] = {}
        self.rate_limited = 0
        self.resumes = {"recovered": 0, "incomplete": 0}
        self.publish_latency = Histogram()
        self.broker_reconnects = 0

    def handshake(self, status: int) -> None:
        self.handshakes[status] = self.handshakes.get(status, 0) + 1

    def evicted(self, reason: str) -> None:
        self.evictions[reason] = self.evictions.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The figures as JSON-ready values (``GET /api/stats``)."""
        return {
            "handshakes": {str(k): v for k, v in sorted(self.handshakes.items())},
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "frames_out": self.frames_out,
            "bytes_out": self.bytes_out,
            "evictions": dict(sorted(self.evictions.items())),
            "rate_limited": self.rate_limited,
            "resumes": dict(self.resumes),
            "broker_reconnects": self.broker_reconnects,
        }


class ChatCollector:
    """Builds the metric families from :class:`Counters` and live gauges at scrape time.

    Args:
        counters: the figures.
        gauges: called at each scrape: ``{"connections": n, "rooms": n, ...}``.
    """

    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float]]) -> None:
        self.counters = counters
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"epws_chat_{name}", _GAUGE_HELP.get(name, name), value=value)
        hs = CounterMetricFamily(
            "epws_chat_handshakes", "WebSocket handshakes by HTTP outcome", labels=["status"]
        )
        for status, count in sorted(c.handshakes.items()):
            hs.add_metric([str(status)], count)
        yield hs
        for name, value, text in (
            ("messages_received", c.messages_in, "chat messages received from clients"),
            ("received_bytes", c.bytes_in, "payload bytes of the messages received"),
            ("messages_sent", c.messages_out, "chat lines delivered, counted per recipient"),
            ("frames_sent", c.frames_out, "WebSocket messages written (a batch is one)"),
            ("sent_bytes", c.bytes_out, "payload bytes written to clients"),
            ("rate_limited_messages", c.rate_limited, "messages dropped by the rate limit"),
            ("broker_reconnects", c.broker_reconnects, "times the broker connection came back"),
        ):
            yield CounterMetricFamily(f"epws_chat_{name}", text, value=value)
        ev = CounterMetricFamily(
            "epws_chat_evictions", "connections closed by the server", labels=["reason"]
        )
        for reason, count in sorted(c.evictions.items()):
            ev.add_metric([reason], count)
        yield ev
        rs = CounterMetricFamily("epws_chat_resumes", "resumes with ?after=", labels=["outcome"])
        for outcome, count in sorted(c.resumes.items()):
            rs.add_metric([outcome], count)
        yield rs
        h = c.publish_latency
        yield HistogramMetricFamily(
            "epws_chat_broker_publish_seconds",
            "time from publish to the broker's confirmation",
            buckets=h.cumulative(),
            sum_value=h.total,
        )


_GAUGE_HELP = {
    "connections": "open chat connections",
    "rooms": "rooms with members on this server",
    "broker_connected": "1 while the broker is connected",
}


def render(collector: ChatCollector) -> bytes:
    """The text exposition of one collector (a fresh registry: no global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


class _Merged:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Iterable[str]) -> bytes:
    """Several workers' ``/metrics`` as one: samples with the same name and labels
    are added up (see the module's docstring for why summing is right)."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            bucket = sums[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                bucket[key] = bucket.get(key, 0.0) + sample.value
    out = []
    for name, family in families.items():
        for (sample_name, labels), value in sums[name].items():
            family.samples.append(Sample(sample_name, dict(labels), value))
        out.append(family)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(out))
    return generate_latest(registry)
