"""Why a command is refused (errors.py): each Refused type carries its v2 error code,
every code is one of the protocol's, and the message travels with the exception."""

from __future__ import annotations

import pytest

from roomchat.protocol import ERROR_CODES
from roomchat.server.core import errors
from roomchat.server.core.errors import (
    AlreadyJoined,
    Archived,
    AuthFailed,
    BadCommand,
    Banned,
    Muted,
    NameInvalid,
    NameTaken,
    NotAuthorised,
    NotFound,
    NotJoined,
    RateLimited,
    Refused,
    RoomError,
    RoomExists,
    RoomInvalid,
    ShuttingDown,
    SlowModeWait,
    Unavailable,
    UnknownRoom,
)

CODES: dict[type[Refused], str] = {
    Refused: "bad_command",
    BadCommand: "bad_command",
    ShuttingDown: "shutting_down",
    NameInvalid: "name_invalid",
    NameTaken: "name_taken",
    NotAuthorised: "not_authorised",
    RateLimited: "rate_limited",
    RoomError: "bad_command",
    UnknownRoom: "unknown_room",
    AlreadyJoined: "already_joined",
    NotJoined: "not_member",
    AuthFailed: "auth_failed",
    Banned: "banned",
    Muted: "muted",
    SlowModeWait: "slow_mode",
    RoomExists: "room_exists",
    RoomInvalid: "room_invalid",
    Archived: "archived",
    Unavailable: "unavailable",
    NotFound: "not_found",
}


@pytest.mark.parametrize(("kind", "code"), CODES.items(), ids=lambda v: getattr(v, "__name__", v))
def test_each_refusal_carries_its_code(kind: type[Refused], code: str) -> None:
    assert kind.code == code
    refused = kind("why")
    assert refused.code == code
    assert refused.msg == "why"
    assert str(refused) == "why"
    assert isinstance(refused, Refused)
    assert isinstance(refused, Exception)


def test_every_exported_refusal_is_covered_and_its_code_is_the_protocols() -> None:
    exported = {getattr(errors, name) for name in errors.__all__}
    assert exported == set(CODES)
    for kind in exported:
        assert kind.code in ERROR_CODES, kind


def test_the_room_refusals_are_room_errors() -> None:
    rooms: tuple[type[Refused], ...] = (UnknownRoom, AlreadyJoined, NotJoined)
    others: tuple[type[Refused], ...] = (
        BadCommand,
        ShuttingDown,
        NameInvalid,
        NameTaken,
        NotAuthorised,
        RateLimited,
    )
    for kind in rooms:
        assert issubclass(kind, RoomError), kind
    for kind in others:
        assert not issubclass(kind, RoomError), kind


def test_not_joined_in_room_names_the_room() -> None:
    refused = NotJoined.in_room("general")
    assert type(refused) is NotJoined
    assert refused.code == "not_member"
    assert refused.msg == "not in room 'general'"


def test_shutting_down_has_a_default_message() -> None:
    assert ShuttingDown().msg == "the server is shutting down"
    assert ShuttingDown("bye").msg == "bye"


def test_a_refusal_is_caught_as_refused() -> None:
    with pytest.raises(Refused) as caught:
        raise NameTaken("the name 'alice' is in use")
    assert caught.value.code == "name_taken"
