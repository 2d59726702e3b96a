"""The Redis bus's counters, and how /metrics names them.

Apart from the bus so that what each counter means is read in one place, next to the
help text a scrape shows (ops/metrics.py reads them through ``RedisBus.readings``).
"""

from __future__ import annotations

from roomchat.server.bus.memory import BUS_CONNECTED_DOC
from roomchat.server.core.stats import Reading

__all__ = ["BusStats"]


class BusStats:
    """Counters of the bus (read by logs, tests and metrics)."""

    __slots__ = (
        "caught_up",
        "connects",
        "errors",
        "held",
        "held_bytes",
        "held_lost",
        "lease_repairs",
        "local_only",
        "outages",
        "overflow",
        "published",
        "purged_instances",
        "received",
        "reconnect_failures",
        "resynced",
        "script_reloads",
    )

    def __init__(self) -> None:
        self.published = 0  # events written to Redis
        self.received = 0  # events read from Redis (all kinds)
        self.local_only = 0  # events delivered only locally (Redis lost or too slow)
        self.overflow = 0  # ... of which because Redis was too slow
        self.errors = 0  # error replies from Redis
        self.outages = 0  # times the connection to Redis was lost
        self.connects = 0  # successful (re)connections
        self.reconnect_failures = 0  # attempts to reconnect that failed
        self.lease_repairs = 0  # times this instance found its lease lapsed and repaired
        self.purged_instances = 0  # dead instances cleaned up by this one
        self.caught_up = 0  # messages missed during an outage, delivered from Redis
        self.resynced = 0  # sync points that found this instance's count out of step
        self.script_reloads = 0  # times a node had lost the scripts (NOSCRIPT): loaded again
        self.held = 0  # messages posted during an outage, waiting for Redis (now)
        self.held_bytes = 0  # ... their bytes (bounded by --bus-outage-queue)
        self.held_lost = 0  # messages past that bound: delivered here only, never shared

    def readings(self, *, connected: bool, queued_bytes: int) -> tuple[Reading, ...]:
        """The counters and the bus's two gauges, as /metrics shows them."""
        return (
            Reading("bus_connected", "gauge", BUS_CONNECTED_DOC, 1 if connected else 0),
            Reading("bus_published", "counter", "Events published to Redis.", self.published),
            Reading("bus_received", "counter", "Events received from Redis.", self.received),
            Reading("bus_errors", "counter", "Error replies from Redis.", self.errors),
            Reading(
                "bus_outages", "counter", "Times the connection to Redis was lost.", self.outages
            ),
            Reading(
                "bus_connects",
                "counter",
                "Successful connections to Redis (the first one included).",
                self.connects,
            ),
            Reading(
                "bus_local_only",
                "counter",
                "Events delivered to local members only (Redis lost or too slow).",
                self.local_only,
            ),
            Reading(
                "bus_overflow",
                "counter",
                "Of those, events kept local because Redis was too slow.",
                self.overflow,
            ),
            Reading(
                "bus_reconnect_failures",
                "counter",
                "Attempts to reconnect to Redis that failed.",
                self.reconnect_failures,
            ),
            Reading(
                "bus_lease_repairs",
                "counter",
                "Times this instance found its lease lapsed and asserted its sessions again.",
                self.lease_repairs,
            ),
            Reading(
                "bus_purged_instances",
                "counter",
                "Dead instances cleaned up by this one.",
                self.purged_instances,
            ),
            Reading(
                "bus_caught_up",
                "counter",
                "Messages posted elsewhere while this instance was cut off from Redis, "
                "delivered from the room's recent runs once it was back.",
                self.caught_up,
            ),
            Reading(
                "bus_resynced",
                "counter",
                "Sync points in a room's channel that found this instance's count of its "
                "messages out of step (resynchronised).",
                self.resynced,
            ),
            Reading(
                "bus_script_reloads",
                "counter",
                "Times a Redis node answered NOSCRIPT (its scripts flushed): the scripts "
                "were loaded again and what it refused sent again, in order.",
                self.script_reloads,
            ),
            Reading(
                "bus_held",
                "gauge",
                "Messages posted during an outage, waiting to be posted to Redis.",
                self.held,
            ),
            Reading(
                "bus_held_lost",
                "counter",
                "Messages posted during an outage past --bus-outage-queue: delivered on "
                "this instance only.",
                self.held_lost,
            ),
            Reading(
                "bus_queue_bytes",
                "gauge",
                "Bytes queued for Redis and not yet sent.",
                queued_bytes,
            ),
        )
