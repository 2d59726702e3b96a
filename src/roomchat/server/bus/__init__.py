"""The bus between rooms and the instances that have members in them.

A room *posts* each encoded event to the bus; the bus hands it back to every instance
with local members in that room, whose room *fans it out* (rooms.py). Two backends,
chosen by URL (:func:`open_bus`):

- ``memory://`` (the default): one process; posting calls the room's fan-out directly,
  so the bus costs nothing.
- ``redis://HOST:PORT[/DB]`` and ``redis+cluster://HOST:PORT[,HOST:PORT...]``: every
  event goes round through the room's Redis channel (sharded pub/sub on a cluster), so
  instances share rooms and every member everywhere sees one order per room.

A backend comes with its presence (who is in which room), since the two must agree on
the order of announcements: see :mod:`roomchat.server.core.presence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from roomchat.server.core.names import SharedNames
from roomchat.server.core.presence import MemoryPresence, Presence

if TYPE_CHECKING:
    from roomchat.server.core.outbox import Outbox
    from roomchat.server.core.rooms import ChatRoom

__all__ = ["Bus", "BusError", "MemoryBus", "open_bus"]


class BusError(Exception):
    """The bus cannot start (bad URL, Redis unreachable). The message says why."""


class Bus(Protocol):
    @property
    def presence(self) -> Presence:
        """Who is in which room, kept consistently with this bus."""
        ...

    @property
    def names(self) -> SharedNames | None:
        """The user names of every instance on this bus (None: this process's only)."""
        ...

    def publisher(self, room: ChatRoom) -> Callable[[bytes], None]:
        """The function that posts one of ``room``'s events. Called once per message:
        must not block (a remote bus queues and writes once per turn)."""
        ...

    async def start(self) -> None:
        """Connect; raise BusError with a clear sentence if that cannot be done."""

    async def close(self) -> None:
        """Flush what is queued and disconnect (after the sessions have left)."""

    @property
    def connected(self) -> bool:
        """Whether events reach other instances right now (readiness)."""
        ...

    @property
    def description(self) -> str:
        """For the start-up log line, without secrets."""
        ...


class MemoryBus:
    """One process: a room's events go straight to its local members."""

    description = "in-process"
    connected = True
    names = None

    def __init__(self) -> None:
        self._presence = MemoryPresence()

    @property
    def presence(self) -> Presence:
        return self._presence

    def publisher(self, room: ChatRoom) -> Callable[[bytes], None]:
        return room.fan_out

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def open_bus(url: str, outbox: Outbox, *, lease: float = 10.0, history: int = 100) -> Bus:
    """The bus for ``url`` (not started yet). Raises BusError for a URL it cannot use."""
    scheme = url.partition("://")[0].lower() if "://" in url else url.lower()
    if scheme in ("", "memory"):
        return MemoryBus()
    if scheme in ("redis", "redis+cluster"):
        from roomchat.server.bus.redis.bus import RedisBus

        return RedisBus(url, outbox, lease=lease, history=history)
    raise BusError(f"unknown bus {url!r}: use memory:// or redis://HOST:PORT[/DB]")
