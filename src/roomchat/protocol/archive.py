"""Version 2's lasting-history messages: paging back through a room, editing and
deleting messages, read markers and typing indicators (docs/protocol.md, "History that
lasts").

They are granted by the ``paging``, ``edits``, ``read_markers`` and ``typing`` features
of ``welcome``; a v1 session never receives one and has these commands ignored (as v1
ignores any unknown ``_ct``).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from roomchat.protocol.base import CommandBase as _C
from roomchat.protocol.base import Count, EventBase, Id

__all__ = [
    "PAGE_MAX",
    "DeleteMessage",
    "EditMessage",
    "HistoryPage",
    "MarkRead",
    "MessageDeleted",
    "MessageEdited",
    "SetRetention",
    "StartTyping",
    "Typing",
]

#: Most messages one ``history`` page answers.
PAGE_MAX = 200

_Seq = Annotated[int, msgspec.Meta(ge=1)]
_Limit = Annotated[int, msgspec.Meta(ge=1, le=PAGE_MAX)]
_Epoch = Annotated[str, msgspec.Meta(max_length=64)]
#: Retention overrides: messages kept per room, days kept (0: the server's setting).
_Days = Annotated[int, msgspec.Meta(ge=0, le=100 * 365)]


# --- commands ---------------------------------------------------------------------------


class HistoryPage(_C, frozen=True, tag="history"):
    """A page of a room's stored history: the ``limit`` messages before ``before`` (or
    after ``after``), oldest first. Answered with a ``history`` event echoing ``id``."""

    room: str = msgspec.field(name="r")
    before: Count | None = None
    after: Count | None = None
    limit: _Limit = 50
    epoch: _Epoch | None = msgspec.field(default=None, name="e")
    id: Id | None = None


class EditMessage(_C, frozen=True, tag="edit_message"):
    """Replace the content of message ``q`` (your own, or any as a moderator)."""

    room: str = msgspec.field(name="r")
    seq: _Seq = msgspec.field(name="q")
    content: str = msgspec.field(name="c")
    id: Id | None = None


class DeleteMessage(_C, frozen=True, tag="delete_message"):
    """Delete message ``q`` (your own, or any as a moderator): a tombstone stays."""

    room: str = msgspec.field(name="r")
    seq: _Seq = msgspec.field(name="q")
    id: Id | None = None


class MarkRead(_C, frozen=True, tag="mark_read"):
    """Everything up to message ``q`` of the room is read (the marker only moves on)."""

    room: str = msgspec.field(name="r")
    seq: Count = msgspec.field(name="q")
    id: Id | None = None


class StartTyping(_C, frozen=True, tag="typing"):
    """This user is typing in the room (ephemeral: never stored)."""

    room: str = msgspec.field(name="r")
    id: Id | None = None


class SetRetention(_C, frozen=True, tag="set_retention"):
    """A room's own retention (moderators): messages kept and days kept; 0 or absent
    goes back to the server's setting."""

    room: str = msgspec.field(name="r")
    messages: Count | None = msgspec.field(default=None, name="n")
    days: _Days | None = None
    id: Id | None = None


# --- events -------------------------------------------------------------------------------


class MessageEdited(EventBase, frozen=True, tag="message_edited"):
    room: str = msgspec.field(name="r")
    seq: int = msgspec.field(name="q")
    user_id: str = msgspec.field(name="u")  # who edited it
    content: str = msgspec.field(name="c")
    timestamp: int = msgspec.field(name="ts")


class MessageDeleted(EventBase, frozen=True, tag="message_deleted"):
    room: str = msgspec.field(name="r")
    seq: int = msgspec.field(name="q")
    user_id: str = msgspec.field(name="u")  # who deleted it
    timestamp: int = msgspec.field(name="ts")


class Typing(EventBase, frozen=True, tag="typing"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
