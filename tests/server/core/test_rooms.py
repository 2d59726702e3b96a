"""Room logic without sockets, and the rooms file."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomchat.protocol import (
    Event,
    EventDecoder,
    RoomDetail,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.server.bus import MemoryBus
from roomchat.server.config import RoomsFileError, default_rooms_path, load_rooms, parse_rooms
from roomchat.server.core.directory import Directory
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.rooms import (
    AlreadyJoined,
    ChatRoom,
    NotJoined,
    RoomError,
    UnknownRoom,
    UserSessionHandle,
)
from roomchat.server.core.stats import ServerStats


class FakeMember:
    """A session as rooms see it: a real Mailbox whose writes are recorded."""

    _count = 0

    def __init__(self, user_id: str) -> None:
        FakeMember._count += 1
        self._written: list[bytes] = []
        self.mailbox = OUTBOX.open(user_id, f"session-{FakeMember._count}", self._written.append)
        self._received: list[bytes] = []

    @property
    def received(self) -> list[bytes]:
        """Every event written to this session so far, one line each (clear() forgets)."""
        self.mailbox.flush()
        for chunk in self._written:
            self._received += [line + b"\n" for line in chunk.split(b"\n")[:-1]]
        self._written.clear()
        return self._received

    def events(self) -> list[Event]:
        """Decode (and forget) everything received so far."""
        out: list[Event] = []
        for data in self.received:
            assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
            decoded = EventDecoder().feed(data)
            assert len(decoded) == 1, decoded
            item = decoded[0]
            assert isinstance(item, UserJoinedRoom | RoomParticipation | UserMessage), item
            out.append(item)
        self._received.clear()
        return out


def _no_call_soon(callback: object) -> None:
    """The tests flush by hand (FakeMember.received)."""


OUTBOX = Outbox(_no_call_soon, ServerStats())
ROOM = "lobby"


class RoomUnderTest:
    """One room of a Directory on the in-process bus, driven synchronously."""

    def __init__(self, detail: RoomDetail) -> None:
        bus = MemoryBus()
        self.presence = bus.presence
        self.manager = Directory([detail], bus, OUTBOX, OUTBOX.stats)
        self.room = self.manager.rooms[detail.name]

    def join(self, member: FakeMember) -> UserSessionHandle:
        outcome: list[UserSessionHandle | RoomError] = []
        self.manager.join_room(self.room.name, member.mailbox, outcome.append)
        assert len(outcome) == 1, "the in-process bus answers a join at once"
        assert isinstance(outcome[0], UserSessionHandle), outcome
        return outcome[0]

    def leave(self, member: FakeMember) -> None:
        self.manager.leave(self.room, member.mailbox)

    def __contains__(self, member: FakeMember) -> bool:
        return self.room.holds(member.mailbox)

    @property
    def users(self) -> tuple[str, ...]:
        return self.presence.users(self.room)

    @property
    def member_count(self) -> int:
        return self.room.member_count

    def broadcast(self, data: bytes) -> None:
        self.room.post(data)


def make_room(name: str = ROOM) -> RoomUnderTest:
    return RoomUnderTest(RoomDetail(name, "a room"))


def joined(user: str) -> RoomParticipation:
    return RoomParticipation(ROOM, user, "joined")


def left(user: str) -> RoomParticipation:
    return RoomParticipation(ROOM, user, "left")


# --- joining ------------------------------------------------------------------------


def test_joiner_gets_user_joined_room_then_own_joined() -> None:
    room = make_room()
    alice = FakeMember("alice")
    handle = room.join(alice)
    assert isinstance(handle, UserSessionHandle)
    assert handle.room is room.room and handle.member is alice.mailbox
    assert alice.received == [
        encode(UserJoinedRoom(ROOM, ("alice",))),
        encode(RoomParticipation(ROOM, "alice", "joined")),
    ]
    assert alice in room
    assert room.member_count == 1


def test_existing_members_get_joined_and_users_order() -> None:
    room = make_room()
    alice, bob, carol = FakeMember("alice"), FakeMember("bob"), FakeMember("carol")
    room.join(alice)
    room.join(bob)
    room.join(carol)
    assert alice.events() == [
        UserJoinedRoom(ROOM, ("alice",)),
        joined("alice"),
        joined("bob"),
        joined("carol"),
    ]
    assert bob.events() == [UserJoinedRoom(ROOM, ("alice", "bob")), joined("bob"), joined("carol")]
    assert carol.events() == [UserJoinedRoom(ROOM, ("alice", "bob", "carol")), joined("carol")]
    assert room.users == ("alice", "bob", "carol")
    assert room.member_count == 3


def test_same_member_joining_twice_raises() -> None:
    room = make_room()
    alice = FakeMember("alice")
    room.join(alice)
    alice.received.clear()
    with pytest.raises(AlreadyJoined):
        room.join(alice)
    assert alice.received == []
    assert room.member_count == 1
    assert room.users == ("alice",)


# --- user registry ------------------------------------------------------------------


def test_second_session_of_same_user_no_second_joined() -> None:
    room = make_room()
    first, bob, second = FakeMember("alice"), FakeMember("bob"), FakeMember("alice")
    room.join(first)
    room.join(bob)
    first.events()
    bob.events()
    room.join(second)
    assert second.events() == [UserJoinedRoom(ROOM, ("alice", "bob"))]
    assert first.events() == []
    assert bob.events() == []
    assert room.users == ("alice", "bob")
    assert room.member_count == 3


def test_us_lists_user_once_with_two_sessions() -> None:
    room = make_room()
    room.join(FakeMember("alice"))
    room.join(FakeMember("alice"))
    carol = FakeMember("carol")
    room.join(carol)
    assert carol.events()[0] == UserJoinedRoom(ROOM, ("alice", "carol"))


def test_left_only_when_last_session_leaves() -> None:
    room = make_room()
    first, second, bob = FakeMember("alice"), FakeMember("alice"), FakeMember("bob")
    room.join(first)
    room.join(second)
    room.join(bob)
    for member in (first, second, bob):
        member.events()

    room.leave(first)
    assert first.events() == []
    assert second.events() == []
    assert bob.events() == []
    assert room.users == ("alice", "bob")
    assert first not in room and second in room

    room.leave(second)
    assert second.events() == []
    assert first.events() == []
    assert bob.events() == [left("alice")]
    assert list(room.users) == ["bob"]
    assert room.member_count == 1


def test_user_rejoining_after_leaving_is_announced_again() -> None:
    room = make_room()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.join(alice)
    room.join(bob)
    room.leave(alice)
    bob.events()
    room.join(alice)
    assert bob.events() == [joined("alice")]
    assert room.users == ("bob", "alice")


# --- leaving and broadcasting -------------------------------------------------------


def test_leaver_receives_nothing_about_its_own_leave() -> None:
    room = make_room()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.join(alice)
    room.join(bob)
    alice.events()
    bob.events()
    room.leave(alice)
    assert alice.received == []
    assert bob.received == [encode(RoomParticipation(ROOM, "alice", "left"))]


def test_leave_of_non_member_raises_not_joined() -> None:
    room = make_room()
    bob = FakeMember("bob")
    room.join(bob)
    bob.events()
    with pytest.raises(NotJoined):
        room.leave(FakeMember("alice"))
    with pytest.raises(NotJoined):
        room.leave(FakeMember("bob"))  # same user id, but a different session
    assert bob.received == []
    assert room.users == ("bob",)


def test_broadcast_reaches_everyone_including_sender_in_order() -> None:
    room = make_room()
    alice, bob, carol = FakeMember("alice"), FakeMember("bob"), FakeMember("carol")
    ha = room.join(alice)
    hb = room.join(bob)
    room.join(carol)
    for member in (alice, bob, carol):
        member.events()
    ha.send_message("one")
    hb.send_message("two")
    ha.send_message("three")
    expected = [
        UserMessage(ROOM, "alice", "one"),
        UserMessage(ROOM, "bob", "two"),
        UserMessage(ROOM, "alice", "three"),
    ]
    for member in (alice, bob, carol):
        assert member.events() == expected


def test_history_holds_the_last_messages_of_runs_cut_anywhere() -> None:
    """Runs of several messages are held as they came; a join's snapshot is the last
    ``history`` messages, one entry each, however the runs fall across that edge."""
    manager = Directory([RoomDetail(ROOM, "")], MemoryBus(), OUTBOX, OUTBOX.stats, history=5)
    room = manager.rooms[ROOM]
    alice = FakeMember("alice")
    outcome: list[UserSessionHandle | RoomError] = []
    manager.join_room(ROOM, alice.mailbox, outcome.append)
    handle = outcome[0]
    assert isinstance(handle, UserSessionHandle)
    texts = [f"m{seq}" for seq in range(1, 12)]
    handle.send_message(texts[0])
    for start, end in ((1, 4), (4, 5), (5, 9), (9, 11)):  # runs of 3, 1, 4 and 2
        handle.send_messages([SendMessage(ROOM, text) for text in texts[start:end]])
    snapshot = room.snapshot()
    assert snapshot.seq == 11
    assert [seq for seq, _, _ in snapshot.entries] == [7, 8, 9, 10, 11]
    for seq, _, line in snapshot.entries:
        assert line.rstrip(b"\r\n") == encode(UserMessage(ROOM, "alice", f"m{seq}"))[:-2]
    assert room.held(8) == ("alice", "m8", snapshot.entries[1][1])
    assert room.held(12) is None
    room.forget()
    assert room.snapshot().entries == ()
    assert room.held(10) is None
    handle.send_message("after")
    assert [seq for seq, _, _ in room.snapshot().entries] == [12]


def test_history_after_numbers_start_again_is_the_new_runs() -> None:
    """A Redis that lost its counter numbers a room from 1 again (a new epoch): a join
    at the same number as one before gets what is held now, not what was then."""
    manager = Directory([RoomDetail(ROOM, "")], MemoryBus(), OUTBOX, OUTBOX.stats, history=5)
    room = manager.rooms[ROOM]

    def line(text: str) -> bytes:
        return encode(UserMessage(ROOM, "alice", text))

    room.deliver(1, 10, line("old 1") + line("old 2"))
    before = room.snapshot()
    assert [entry[0] for entry in before.entries] == [1, 2]
    room.deliver(1, 20, line("new 1"))
    room.deliver(2, 20, line("new 2"))
    after = room.snapshot()
    assert after.seq == before.seq == 2
    assert [entry[1] for entry in after.entries[-2:]] == [20, 20]


def test_broadcast_hands_same_bytes_to_every_member() -> None:
    room = make_room()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.join(alice)
    room.join(bob)
    alice.received.clear()
    bob.received.clear()
    room.broadcast(b"raw\r\n")
    assert alice.received == [b"raw\r\n"]
    assert bob.received == [b"raw\r\n"]


def test_no_messages_after_leaving() -> None:
    room = make_room()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.join(alice)
    hb = room.join(bob)
    room.leave(alice)
    alice.received.clear()
    hb.send_message("hi")
    assert alice.received == []


TRICKY = [
    "",
    "plain",
    'say "hi"',
    "back\\slash \\n not a newline",
    "héllo 👋",
    "line\nbreak\r\n",
    "tab\tnul\x00bell\x07esc\x1b del\x7f",
    "\u2028\u2029 separators",
    "</script>",
    "日本語テキスト",
    "emoji 👨‍👩‍👧‍👦 🏳️‍🌈",
    '{"_et":"quit"}',
]


@pytest.mark.parametrize("content", TRICKY, ids=repr)
@pytest.mark.parametrize(
    ("room_name", "user_id"),
    [("test", "test"), ('qu"ote', "back\\slash"), ("rüm 👋", "\x01ctl")],
)
def test_send_message_bytes_equal_encode(content: str, room_name: str, user_id: str) -> None:
    room = make_room(room_name)
    member = FakeMember(user_id)
    handle = room.join(member)
    member.received.clear()
    handle.send_message(content)
    assert member.received == [encode(UserMessage(room_name, user_id, content))]
    assert EventDecoder().feed(member.received[0]) == [UserMessage(room_name, user_id, content)]


# --- Directory --------------------------------------------------------------------

DETAILS = (
    RoomDetail("zeta", "last letter"),
    RoomDetail("alpha", "first letter"),
    RoomDetail("mid", "middle"),
)


def manager_of(details: tuple[RoomDetail, ...]) -> tuple[Directory, MemoryBus]:
    bus = MemoryBus()
    return Directory(iter(details), bus, OUTBOX, OUTBOX.stats), bus


def join(manager: Directory, room: str, member: FakeMember) -> UserSessionHandle:
    outcome: list[UserSessionHandle | RoomError] = []
    manager.join_room(room, member.mailbox, outcome.append)
    assert len(outcome) == 1 and isinstance(outcome[0], UserSessionHandle), outcome
    return outcome[0]


def test_manager_rooms_in_file_order() -> None:
    manager, bus = manager_of(DETAILS)
    assert manager.details == DETAILS
    assert list(manager.rooms) == ["zeta", "alpha", "mid"]
    for detail in DETAILS:
        room = manager.rooms[detail.name]
        assert room.name == detail.name
        assert room.description == detail.description
        assert bus.presence.users(room) == ()


def test_manager_unknown_room() -> None:
    manager, _ = manager_of(DETAILS)
    alice = FakeMember("alice")
    outcome: list[object] = []
    with pytest.raises(UnknownRoom):
        manager.join_room("nope", alice.mailbox, outcome.append)
    with pytest.raises(RoomError):
        manager.join_room("ZETA", alice.mailbox, outcome.append)
    assert alice.received == []
    assert outcome == []


def test_manager_join_twice_raises_already_joined() -> None:
    manager, _ = manager_of(DETAILS)
    alice = FakeMember("alice")
    join(manager, "alpha", alice)
    with pytest.raises(AlreadyJoined):
        manager.join_room("alpha", alice.mailbox, lambda outcome: None)
    # joining another room is fine
    handle = join(manager, "mid", alice)
    assert handle.room is manager.rooms["mid"]


def test_manager_join_routes_to_room() -> None:
    manager, _ = manager_of(DETAILS)
    alice = FakeMember("alice")
    handle = join(manager, "zeta", alice)
    assert handle.room is manager.rooms["zeta"]
    assert manager.rooms["zeta"].holds(alice.mailbox)
    assert not manager.rooms["alpha"].holds(alice.mailbox)
    assert alice.events() == [
        UserJoinedRoom("zeta", ("alice",)),
        RoomParticipation("zeta", "alice", "joined"),
    ]


def test_drop_user_session_handle_gives_back_membership() -> None:
    manager, bus = manager_of(DETAILS)
    alice, bob = FakeMember("alice"), FakeMember("bob")
    handle = join(manager, "alpha", alice)
    join(manager, "alpha", bob)
    alice.events()
    bob.events()
    manager.drop_user_session_handle(handle)
    assert not manager.rooms["alpha"].holds(alice.mailbox)
    assert bus.presence.users(manager.rooms["alpha"]) == ("bob",)
    assert alice.events() == []
    assert bob.events() == [RoomParticipation("alpha", "alice", "left")]
    # The membership was given back: dropping again is an error, joining again works.
    with pytest.raises(NotJoined):
        manager.drop_user_session_handle(handle)
    join(manager, "alpha", alice)
    assert manager.rooms["alpha"].holds(alice.mailbox)


# --- rooms file ---------------------------------------------------------------------


def test_parse_rooms_valid() -> None:
    data = (
        b'[{"name": "b", "description": "bee"},'
        b' {"name": "a", "description": "", "extra": 1},'
        b' {"name": "r\xc3\xbcm", "description": "\xf0\x9f\x91\x8b"}]'
    )
    assert parse_rooms(data) == (
        RoomDetail("b", "bee"),
        RoomDetail("a", ""),
        RoomDetail("rüm", "👋"),
    )


def test_load_rooms_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "rooms.json"
    path.write_text('[{"name": "one", "description": "1"}, {"name": "two", "description": "2"}]')
    assert load_rooms(path) == (RoomDetail("one", "1"), RoomDetail("two", "2"))


def test_load_rooms_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(RoomsFileError, match="does not exist") as info:
        load_rooms(path)
    assert "missing.json" in str(info.value)


def test_load_rooms_directory(tmp_path: Path) -> None:
    with pytest.raises(RoomsFileError, match="is a directory") as info:
        load_rooms(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_rooms_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(b'[{"name": "a", ')
    with pytest.raises(RoomsFileError) as info:
        load_rooms(path)
    message = str(info.value)
    assert "broken.json" in message
    assert "not a valid rooms list" in message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json at all", "malformed"),
        (b"", "not a valid rooms list"),
        (b'{"name": "a", "description": "b"}', "array"),
        (b'[{"name": "a"}]', "description"),
        (b'[{"description": "b"}]', "name"),
        (b'[{"name": 5, "description": "b"}]', "name"),
        (b'[{"name": "a", "description": null}]', "description"),
        (b'["general"]', "object"),
        (b"\xff\xfe", "not a valid rooms list"),
        (
            b'[{"name": "a", "description": "1"}, {"name": "a", "description": "2"}]',
            "duplicate room name 'a'",
        ),
        (b'[{"name": "", "description": "b"}]', "room #1 has an empty name"),
        (
            b'[{"name": "ok", "description": "b"}, {"name": "  ", "description": "b"}]',
            "room #2 has an empty name",
        ),
        (b"[]", "empty"),
    ],
)
def test_parse_rooms_errors(data: bytes, fragment: str) -> None:
    with pytest.raises(RoomsFileError) as info:
        parse_rooms(data, source="my-rooms")
    message = str(info.value)
    assert message.startswith("my-rooms: ")
    assert fragment in message


def test_packaged_rooms_file_loads() -> None:
    assert default_rooms_path().is_file()
    rooms = load_rooms()
    assert rooms == load_rooms(default_rooms_path())
    assert len(rooms) >= 20
    names = [room.name for room in rooms]
    assert len(set(names)) == len(names)
    for room in rooms:
        assert room.name.strip()
        assert room.description.strip()
    manager, _ = manager_of(rooms)
    assert list(manager.rooms) == names


class RecordedTurns:
    """The outbox's side of a room's turn, recorded (rooms.Turns)."""

    def __init__(self) -> None:
        self.active: list[str] = []
        self.early: list[str] = []

    def room_active(self, room: ChatRoom) -> None:
        self.active.append(room.name)

    def flush_room(self, room: ChatRoom) -> None:
        self.early.append(room.name)


def test_fan_out_tells_the_outbox_once_per_turn_and_keeps_the_turns_bytes() -> None:
    turns = RecordedTurns()
    manager = Directory([RoomDetail(ROOM, "a room")], MemoryBus(), turns, ServerStats())
    members = [FakeMember(f"u{n}") for n in range(3)]
    for member in members:
        join(manager, ROOM, member)
    room = manager.rooms[ROOM]
    room.distribute()  # the joins' turn ends
    for member in members:
        member.received.clear()
    turns.active.clear()
    written = [len(member._written) for member in members]
    fanned = room.fanned_bytes
    room.post(b"event\r\n")
    room.post(b"again\r\n")
    assert turns.active == [ROOM]  # once per turn, not once per fan-out or member
    assert room.turn_bytes == 14 and turns.early == []
    room.distribute()
    assert (room.turn_bytes, room.fanned_bytes) == (0, fanned + 14)
    assert room.members == [member.mailbox for member in members]
    # Queued, not written: writing out is the outbox's job, at the end of the turn.
    assert [len(member._written) for member in members] == written
    assert all(member.received == [b"event\r\n", b"again\r\n"] for member in members)


def test_a_run_posted_again_and_refused_is_not_skipped_twice() -> None:
    # The Redis bus posts again a run this instance fanned out during an outage
    # (replayed: when it comes back numbered, only the numbering moves on). A refused
    # post (OOM) is held again (unreplayed) and posted again later (replayed): it is
    # skipped once, and the same bytes posted anew after it are delivered.
    room = make_room()
    alice = FakeMember("alice")
    room.join(alice)
    alice.events()
    event = encode(UserMessage(ROOM, "bob", "held"))
    room.room.replayed(event)
    room.room.unreplayed(event)
    room.room.replayed(event)
    room.room.deliver(1, 0, event)
    assert alice.events() == []
    room.room.deliver(2, 0, event)
    assert alice.events() == [UserMessage(ROOM, "bob", "held")]
