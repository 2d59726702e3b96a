"""``/metrics`` (Prometheus): every part of the server reports its own numbers.

The numbers are plain integers, counted per read, per turn or per change of membership
and never per delivery (core/stats.py). Each part that has some (the counters, the
connection shell, the rooms, the outbox, the bus) is a :class:`MetricsSource`: it hands
out :class:`~roomchat.server.core.stats.Reading` values when asked, at scrape time, and
knows nothing of Prometheus. :class:`ServerCollector` turns them into
``prometheus_client`` metric families, so the hot path never calls Prometheus code and
this module knows no part by its class. What each metric means: docs/operating.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from roomchat.server.core.stats import Histogram, Reading

__all__ = ["CONTENT_TYPE", "LAG_INTERVAL", "LagProbe", "MetricsSource", "ServerCollector"]

#: How often the loop-lag probe runs, in seconds.
LAG_INTERVAL = 0.1
#: What generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "roomchat_"


class MetricsSource(Protocol):
    def readings(self) -> Iterable[Reading]:
        """This part's numbers now."""
        ...


class ServerCollector:
    """Reads every source at scrape time (prometheus_client's Collector protocol)."""

    def __init__(self, sources: Sequence[MetricsSource]) -> None:
        self._sources = sources

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: this is the registry's only collector

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for source in self._sources:
            for reading in source.readings():
                family = families.get(reading.name)
                if family is None:
                    family = families[reading.name] = _family(reading)
                _add(family, reading)
        return families.values()

    def render(self) -> bytes:
        """The Prometheus text of every metric, now."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


def _family(reading: Reading) -> Metric:
    name, doc = PREFIX + reading.name, reading.doc
    labels = [label for label, _ in reading.labels]
    if reading.kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    if reading.kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


def _add(family: Metric, reading: Reading) -> None:
    values = [value for _, value in reading.labels]
    value = reading.value
    if isinstance(value, Histogram):
        assert isinstance(family, HistogramMetricFamily)
        family.add_metric(values, value.cumulative(), value.sum)
    else:
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
        family.add_metric(values, value)


class LagProbe:
    """Every :data:`LAG_INTERVAL` seconds, a callback notes how late it runs: the time the
    loop was busy (or paused by a coalescing wait) past the moment it was due."""

    def __init__(self, histogram: Histogram, interval: float = LAG_INTERVAL) -> None:
        self._histogram = histogram
        self._interval = interval
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        self._due = time.perf_counter() + self._interval
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self._histogram.observe(max(0.0, time.perf_counter() - self._due))
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
