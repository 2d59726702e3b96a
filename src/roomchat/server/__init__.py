"""The roomchat TCP server. See docs/architecture.md for how the pieces fit."""

from __future__ import annotations

from roomchat.server.app import ChatServer, ServerStartError, serve
from roomchat.server.bus import Bus, BusError, MemoryBus, open_bus
from roomchat.server.config import (
    DEFAULT_MAX_PENDING_OUTPUT,
    RoomsFileError,
    ServerConfig,
    default_rooms_path,
    load_rooms,
    parse_rooms,
)
from roomchat.server.core.directory import Directory
from roomchat.server.core.rooms import ChatRoom, UserSessionHandle

__all__ = [
    "DEFAULT_MAX_PENDING_OUTPUT",
    "Bus",
    "BusError",
    "ChatRoom",
    "ChatServer",
    "Directory",
    "MemoryBus",
    "RoomsFileError",
    "ServerConfig",
    "ServerStartError",
    "UserSessionHandle",
    "default_rooms_path",
    "load_rooms",
    "open_bus",
    "parse_rooms",
    "serve",
]
