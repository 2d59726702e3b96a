"""The in-process bus: one process, a room's events go straight to its local members."""

from __future__ import annotations

from collections.abc import Iterable

from roomchat.server.core.ports import Archiving, Presence, Publisher, RoomLink
from roomchat.server.core.presence import MemoryPresence
from roomchat.server.core.stats import Reading

#: What roomchat_bus_connected means, for every bus.
BUS_CONNECTED_DOC = "1 when the bus reaches the other instances (always 1 in memory)."

__all__ = ["MemoryBus"]


class MemoryBus:
    """Posting is fanning out: the publisher of a room is its own ``fan_out``, so the
    bus costs nothing (docs/architecture.md)."""

    description = "in-process"
    connected = True
    names = None
    community = None  # community.MemoryStore: the context makes one
    report_spending = None  # per-user limits: this process's buckets are all there is
    numbers_here = True

    def __init__(self) -> None:
        self._presence: Presence = MemoryPresence()

    @property
    def presence(self) -> Presence:
        return self._presence

    def publisher(self, room: RoomLink) -> Publisher:
        return room.fan_out

    def relay(self, room: RoomLink, event: bytes) -> None:
        room.relay(event)

    def forget(self, room: RoomLink) -> None:
        room.forget()

    def keep_with(self, archive: Archiving) -> None:
        pass  # the rooms number their messages and hand them over (Directory.keep_with)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def readings(self) -> Iterable[Reading]:
        return (Reading("bus_connected", "gauge", BUS_CONNECTED_DOC, 1),)
