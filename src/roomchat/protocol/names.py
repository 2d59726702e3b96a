"""v2 user names (docs/protocol.md, "Names"): what is valid, and when two are the same."""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DM_PREFIX",
    "NAME_MAX_LENGTH",
    "ROOM_NAME_MAX_LENGTH",
    "dm_room",
    "dm_users",
    "name_key",
    "room_key",
    "valid_name",
    "valid_room_name",
]

#: Longest name, in characters (each one byte: names are ASCII).
NAME_MAX_LENGTH: Final = 32

_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX_LENGTH}}}")


def valid_name(name: str) -> bool:
    """1 to 32 of the ASCII letters, digits, ``_``, ``-`` and ``.``; nothing else.

    v1's random user ids (5 characters of ``A-Z a-z 0-9 _ -``) are valid names: names
    and random ids share one namespace.
    """
    return _NAME.fullmatch(name) is not None


def name_key(name: str) -> str:
    """What uniqueness is decided on: names equal ignoring ASCII case are the same user."""
    return name.lower()


#: Longest room name, in characters.
ROOM_NAME_MAX_LENGTH: Final = 32

_ROOM = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{ROOM_NAME_MAX_LENGTH - 1}}}")

#: Direct-message rooms are named ``dm:<a>+<b>``: ``:`` and ``+`` are in no room name a
#: user can create, so these names are reserved for them.
DM_PREFIX: Final = "dm:"


def valid_room_name(name: str) -> bool:
    """A room a user creates: 1 to 32 of the ASCII letters, digits, ``_``, ``-`` and
    ``.``, starting with a letter or a digit. Unique ignoring case (:func:`room_key`).
    (The rooms file may hold other names: it is the operator's.)"""
    return _ROOM.fullmatch(name) is not None


def room_key(name: str) -> str:
    """What room names are compared on: names equal ignoring ASCII case are one room."""
    return name.lower()


def dm_room(one: str, other: str) -> str:
    """The one direct-message room of two users (whoever opens it): their name keys,
    sorted, after :data:`DM_PREFIX`."""
    first, second = sorted((name_key(one), name_key(other)))
    return f"{DM_PREFIX}{first}+{second}"


def dm_users(room: str) -> tuple[str, str] | None:
    """The two name keys of a direct-message room, or None for any other room."""
    if not room.startswith(DM_PREFIX):
        return None
    first, plus, second = room[len(DM_PREFIX) :].partition("+")
    if not plus or not valid_name(first) or not valid_name(second):
        return None
    return first, second
