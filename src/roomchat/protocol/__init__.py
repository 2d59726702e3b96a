"""Protocol v1 of rust-chat-server: messages and a sans-I/O codec (no I/O here)."""

from __future__ import annotations

from roomchat.protocol.codec import (
    DEFAULT_MAX_LINE_LENGTH,
    MESSAGE_TAIL,
    BadLine,
    CommandDecoder,
    EventDecoder,
    LineDecoder,
    LineTooLong,
    encode,
    encode_head,
)
from roomchat.protocol.messages import (
    COMMAND_TYPES,
    EVENT_TYPES,
    Command,
    Event,
    JoinRoom,
    LeaveRoom,
    LoginSuccessful,
    Message,
    ParticipationStatus,
    Quit,
    RoomDetail,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
)

__all__ = [
    "COMMAND_TYPES",
    "DEFAULT_MAX_LINE_LENGTH",
    "EVENT_TYPES",
    "MESSAGE_TAIL",
    "BadLine",
    "Command",
    "CommandDecoder",
    "Event",
    "EventDecoder",
    "JoinRoom",
    "LeaveRoom",
    "LineDecoder",
    "LineTooLong",
    "LoginSuccessful",
    "Message",
    "ParticipationStatus",
    "Quit",
    "RoomDetail",
    "RoomParticipation",
    "SendMessage",
    "UserJoinedRoom",
    "UserMessage",
    "encode",
    "encode_head",
]
