"""``--metrics HOST:PORT``: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

Served on the server's own event loop by a minimal HTTP/1.1 handler (no thread, no web
framework): one GET per connection, answered with a Content-Length and closed. The
request is bounded in size (:data:`MAX_REQUEST`) and time (:data:`REQUEST_TIMEOUT`).

The numbers are plain integers, counted per read, per turn or per change of membership
and never per delivery (:mod:`roomchat.server.core.stats`); :class:`ServerCollector` reads
them only when ``/metrics`` is scraped and hands them to ``prometheus_client`` as metric
families, so the hot path never calls Prometheus code.
What each metric means: docs/operating.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from roomchat.server.core.stats import Histogram

if TYPE_CHECKING:
    from roomchat.server.app import ChatServer

__all__ = [
    "MAX_REQUEST",
    "REQUEST_TIMEOUT",
    "ROOM_MEMBER_BUCKETS",
    "LagProbe",
    "MetricsEndpoint",
    "ServerCollector",
    "parse_address",
]

log = logging.getLogger("roomchat.server")

#: Members per room (local members of rooms with at least one).
ROOM_MEMBER_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000)
#: Rooms listed by name in roomchat_room_members_top (bounded cardinality).
TOP_ROOMS = 10
#: Largest request head (request line and headers) accepted.
MAX_REQUEST = 8 * 1024
#: Seconds a client has to send its request head.
REQUEST_TIMEOUT = 5.0
#: How often the loop-lag probe runs, in seconds.
LAG_INTERVAL = 0.1

_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (every interface) -> (host, port).
    Raises ValueError with a sentence."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return host or "0.0.0.0", port


# -- the collector ----------------------------------------------------------------------


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, histogram.cumulative(), histogram.sum)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ServerCollector:
    """Reads a server's counters at scrape time (prometheus_client's Collector protocol)."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: this is the registry's only collector

    def collect(self) -> Iterable[Metric]:
        server = self._server
        hub = server.hub
        stats = hub.stats
        connections = list(hub.connections)
        yield _gauge("roomchat_connections_open", "Open client connections.", len(connections))
        yield _counter(
            "roomchat_connections_accepted",
            "Client connections accepted.",
            stats.connections_accepted,
        )
        refused = CounterMetricFamily(
            "roomchat_connections_refused",
            "Client connections refused, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(hub.refused.items()):
            refused.add_metric([reason], count)
        yield refused
        versions: Counter[str] = Counter({"1": 0})
        for connection in connections:
            session = connection.session
            if session is not None:
                versions[str(getattr(session, "protocol_version", 1))] += 1
        sessions = GaugeMetricFamily(
            "roomchat_sessions", "Open sessions by protocol version.", labels=["version"]
        )
        for version, count in sorted(versions.items()):
            sessions.add_metric([version], count)
        yield sessions
        yield from self._rooms()
        yield _counter(
            "roomchat_messages_received",
            "send_message commands received from clients.",
            stats.messages_received,
        )
        yield _counter(
            "roomchat_deliveries",
            "Events queued to room members by fan-outs (members x events).",
            stats.deliveries,
        )
        yield _counter("roomchat_received_bytes", "Bytes read from clients.", stats.bytes_in)
        yield _counter(
            "roomchat_sent_bytes",
            "Bytes written to clients (counted when queued, less what was dropped).",
            stats.bytes_out,
        )
        yield _counter(
            "roomchat_socket_writes",
            "Writes to client sockets (at most one per session per loop turn).",
            stats.writes,
        )
        yield _counter(
            "roomchat_slow_consumer_disconnects",
            "Sessions cut off for having more than --max-pending-output unsent.",
            stats.slow_consumers,
        )
        yield _counter(
            "roomchat_lines_too_long",
            "Sessions closed for a line longer than --max-line-length.",
            stats.lines_too_long,
        )
        yield _counter(
            "roomchat_bad_lines", "Lines that are not a valid command (ignored).", stats.bad_lines
        )
        yield _counter(
            "roomchat_ignored_commands",
            "Valid commands that could not be carried out (ignored).",
            stats.ignored_commands,
        )
        yield _counter(
            "roomchat_coalesce_pauses",
            "Coalescing waits (--coalesce-us) the event loop made.",
            server.outbox.pauses,
        )
        yield _histogram(
            "roomchat_loop_lag_seconds",
            f"How late a callback scheduled every {LAG_INTERVAL:g} s runs.",
            stats.loop_lag,
        )
        yield _histogram(
            "roomchat_turn_seconds",
            "Per loop turn with output: from its first queued event to its last write.",
            stats.turn,
        )
        yield from self._bus()

    def _rooms(self) -> Iterable[Metric]:
        sizes = [
            (room.member_count, name)
            for name, room in self._server.rooms.rooms.items()
            if room.member_count
        ]
        yield _gauge("roomchat_rooms_with_members", "Rooms with local members.", len(sizes))
        counts = [0] * (len(ROOM_MEMBER_BUCKETS) + 1)
        for size, _ in sizes:
            counts[bisect_left(ROOM_MEMBER_BUCKETS, size)] += 1
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*map(str, ROOM_MEMBER_BUCKETS), "+Inf"), counts, strict=True):
            total += count
            buckets.append((bound, total))
        yield HistogramMetricFamily(
            "roomchat_room_members",
            "Local members per room, over the rooms with members.",
            buckets,
            sum(size for size, _ in sizes),
        )
        top = GaugeMetricFamily(
            "roomchat_room_members_top",
            f"Local members of the {TOP_ROOMS} largest rooms.",
            labels=["room"],
        )
        sizes.sort(key=lambda pair: (-pair[0], pair[1]))
        for size, name in sizes[:TOP_ROOMS]:
            top.add_metric([name], size)
        yield top

    def _bus(self) -> Iterable[Metric]:
        bus = self._server.bus
        yield _gauge(
            "roomchat_bus_connected",
            "1 when the bus reaches the other instances (always 1 in memory).",
            1 if bus.connected else 0,
        )
        from roomchat.server.bus.redis.bus import RedisBus

        if not isinstance(bus, RedisBus):
            return
        bus_stats = bus.stats
        for name, doc, value in (
            ("published", "Events published to Redis.", bus_stats.published),
            ("received", "Events received from Redis.", bus_stats.received),
            ("errors", "Error replies from Redis.", bus_stats.errors),
            ("outages", "Times the connection to Redis was lost.", bus_stats.outages),
            (
                "connects",
                "Successful connections to Redis (the first one included).",
                bus_stats.connects,
            ),
            (
                "local_only",
                "Events delivered to local members only (Redis lost or too slow).",
                bus_stats.local_only,
            ),
            (
                "overflow",
                "Of those, events kept local because Redis was too slow.",
                bus_stats.overflow,
            ),
            (
                "purged_instances",
                "Dead instances cleaned up by this one.",
                bus_stats.purged_instances,
            ),
        ):
            yield _counter(f"roomchat_bus_{name}", doc, value)
        yield _gauge(
            "roomchat_bus_queue_bytes",
            "Bytes queued for Redis and not yet sent.",
            bus.queued_bytes,
        )


# -- the loop-lag probe -------------------------------------------------------------------


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


# -- the HTTP endpoint ----------------------------------------------------------------------

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class MetricsEndpoint:
    """The HTTP listener of ``--metrics``. Create it with :meth:`start`."""

    def __init__(self, server: ChatServer) -> None:
        self._server = server
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(ServerCollector(server))
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._probe = LagProbe(server.hub.stats.loop_lag)

    @classmethod
    async def start(cls, server: ChatServer, host: str, port: int) -> MetricsEndpoint:
        """Listen; raises OSError if the address cannot be used."""
        endpoint = cls(server)
        endpoint._listener = await asyncio.start_server(
            endpoint._serve, host, port, limit=MAX_REQUEST, reuse_address=True
        )
        endpoint._probe.start()
        return endpoint

    @property
    def port(self) -> int:
        assert self._listener is not None
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    @property
    def sockets(self) -> list[int]:
        """File descriptors of the listening sockets (a coalescing wait ends on them)."""
        return [sock.fileno() for sock in self._listener.sockets] if self._listener else []

    def render(self) -> bytes:
        """The Prometheus text of every metric, now."""
        return generate_latest(self._registry)

    def ready(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if not self._server.listening:
            return "not listening"
        if not self._server.bus.connected:
            return "bus not connected"
        return None

    async def close(self) -> None:
        self._probe.stop()
        if self._listener is not None:
            self._listener.close()
        for writer in list(self._writers):
            writer.close()
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._listener.wait_closed()
            self._listener = None

    # -- one request per connection ---------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            status, content_type, body, head_only = await self._answer(reader)
            reason = _REASONS.get(status, "")
            head = (
                f"HTTP/1.1 {status} {reason}\r\n"
                f"Content-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n" + ("Allow: GET, HEAD\r\n" if status == 405 else "") + "\r\n"
            ).encode("ascii")
            writer.write(head if head_only else head + body)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, HEAD) for the request on ``reader``."""
        text = "text/plain; charset=utf-8"
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return 408, text, b"request timeout\n", False
        except asyncio.LimitOverrunError:
            return 431, text, b"request too large\n", False
        except asyncio.IncompleteReadError:
            return 400, text, b"incomplete request\n", False
        line = request.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
            return 400, text, b"bad request\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return 405, text, b"method not allowed\n", False
        head_only = method == b"HEAD"
        if target == b"/metrics":
            try:
                return 200, _TEXT_FORMAT, self.render(), head_only
            except Exception:
                log.exception("metrics: rendering /metrics failed")
                return 500, text, b"rendering the metrics failed\n", head_only
        if target == b"/healthz":
            return 200, text, b"ok\n", head_only
        if target == b"/readyz":
            why = self.ready()
            if why is None:
                return 200, text, b"ready\n", head_only
            return 503, text, why.encode() + b"\n", head_only
        return 404, text, b"not found: try /metrics, /healthz, /readyz\n", head_only
