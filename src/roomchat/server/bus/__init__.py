"""The bus between rooms and the instances that have members in them.

A room *posts* each encoded event to the bus; the bus hands it back to every instance
with local members in that room, whose room *fans it out* (core/rooms.py). Two
backends, chosen by URL (:func:`open_bus`), behind the interface of
:class:`roomchat.server.core.ports.Bus`:

- ``memory://`` (the default, :mod:`.memory`): one process; posting calls the room's
  fan-out directly, so the bus costs nothing.
- ``redis://HOST:PORT[/DB]``, ``redis+cluster://HOST:PORT[,HOST:PORT...]`` and
  ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE`` (:mod:`.redis`): every event
  goes round through the room's Redis channel (sharded pub/sub on a cluster), so
  instances share rooms and every member everywhere sees one order per room.

A backend comes with its presence (who is in which room), since the two must agree on
the order of announcements, and with its name registry.
"""

from __future__ import annotations

from roomchat.server.bus.memory import MemoryBus
from roomchat.server.core.ports import Bus, BusError, Wakeups

__all__ = ["REDIS_SCHEMES", "Bus", "BusError", "MemoryBus", "open_bus", "scheme_of", "shared"]

#: The URL schemes of the Redis bus (instances and workers share rooms through it).
REDIS_SCHEMES = ("redis", "redis+cluster", "redis+sentinel")


def scheme_of(url: str) -> str:
    """The bus URL's scheme, lower case ("" for a bare word such as ``memory``)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else url.lower()


def shared(url: str) -> bool:
    """Whether ``url`` names a bus that processes can share (Redis)."""
    return scheme_of(url) in REDIS_SCHEMES


def open_bus(
    url: str, *, wakeups: Wakeups, lease: float, history: int, outage_queue: int = 32 << 20
) -> Bus:
    """The bus for ``url`` (not started yet). Raises BusError for a URL it cannot use."""
    scheme = scheme_of(url)
    if scheme in ("", "memory"):
        return MemoryBus()
    if scheme in REDIS_SCHEMES:
        from roomchat.server.bus.redis import RedisBus

        return RedisBus(
            url, wakeups=wakeups, lease=lease, history=history, outage_queue=outage_queue
        )
    raise BusError(f"unknown bus {url!r}: use memory:// or redis://HOST:PORT[/DB]")
