"""The roomchat TCP server (protocol v1). See docs/architecture.md for how it fits."""

from __future__ import annotations

from roomchat.server.app import ChatServer, ServerStartError, serve
from roomchat.server.config import (
    DEFAULT_MAX_PENDING_OUTPUT,
    RoomsFileError,
    ServerConfig,
    default_rooms_path,
    load_rooms,
    parse_rooms,
)
from roomchat.server.rooms import ChatRoom, RoomManager, UserSessionHandle

__all__ = [
    "DEFAULT_MAX_PENDING_OUTPUT",
    "ChatRoom",
    "ChatServer",
    "RoomManager",
    "RoomsFileError",
    "ServerConfig",
    "ServerStartError",
    "UserSessionHandle",
    "default_rooms_path",
    "load_rooms",
    "parse_rooms",
    "serve",
]
