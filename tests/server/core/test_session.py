"""The sans-I/O Session (server/core/session.py), driven without sockets or an event loop.

Every session here has a real Mailbox in a real Outbox whose loop turns the test ends
(``World.turn``), and a fake connection recording pause/resume/close/abort; see
tests/session_harness.py. The second half drives the asynchronous join path with a
presence that answers when the test says so (``LatePresence``), as Redis does.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from roomchat.protocol import (
    EventDecoder,
    JoinRoom,
    LeaveRoom,
    Quit,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.server.core import session as session_module
from roomchat.server.core.rooms import RoomError
from tests.session_harness import MAX_LINE, Client, LatePresence, World

# --- expected events --------------------------------------------------------------------


def users_of(room: str, *users: str) -> UserJoinedRoom:
    return UserJoinedRoom(room, users)


def joined(room: str, user: str) -> RoomParticipation:
    return RoomParticipation(room, user, "joined")


def left(room: str, user: str) -> RoomParticipation:
    return RoomParticipation(room, user, "left")


def said(room: str, user: str, content: str) -> UserMessage:
    return UserMessage(room, user, content)


def unterminated(command: JoinRoom | LeaveRoom | SendMessage | Quit) -> bytes:
    return encode(command)[:-2]


def in_room(world: World, room: str, *clients: Client) -> None:
    """Join everyone to a room (synchronous presence) and forget the output."""
    for client in clients:
        client.feed(JoinRoom(room))
        assert room in client.session.rooms
    for client in clients:
        client.new_lines()


@pytest.fixture
def world() -> World:
    return World()


# --- login --------------------------------------------------------------------------


def test_login_is_the_first_write_with_exact_bytes() -> None:
    world = World()
    alice = world.client("alice", "sess-1", login=False)
    alice.session.start(world.rooms.details)
    assert alice.writes == [], "queued for the end of the turn, not written at once"
    world.turn()
    assert alice.writes == [
        b'{"_et":"login_successful","s":"sess-1","u":"alice","rs":['
        b'{"n":"general","d":"Anything goes"},'
        b'{"n":"random","d":"Off-topic"},'
        b'{"n":"python","d":"asyncio and friends"}]}\r\n'
    ]
    assert alice.connection.calls == []
    assert alice.session.session_id == "sess-1" and alice.session.user_id == "alice"


def test_login_and_join_in_one_turn_are_one_write() -> None:
    world = World()
    alice = world.client("alice", login=False)
    alice.session.start(world.rooms.details)
    alice.feed(JoinRoom("general"))
    assert len(alice.writes) == 1
    assert [type(event).__name__ for event in alice.events()] == [
        "LoginSuccessful",
        "UserJoinedRoom",
        "RoomParticipation",
    ]


# --- join, leave, send, quit ------------------------------------------------------------


def test_join_replies_then_announces_to_everyone(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    alice.feed(JoinRoom("general"))
    assert alice.events() == [users_of("general", "alice"), joined("general", "alice")]
    bob.feed(JoinRoom("general"))
    assert bob.events() == [users_of("general", "alice", "bob"), joined("general", "bob")]
    assert alice.events() == [joined("general", "bob")]
    assert alice.session.rooms == ["general"] and bob.session.rooms == ["general"]
    assert world.room("general").members == [alice.mailbox, bob.mailbox]
    assert alice.connection.calls == [] and bob.connection.calls == []


def test_leave_announces_to_the_others_only(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    alice.feed(LeaveRoom("general"))
    assert alice.events() == []
    assert bob.events() == [left("general", "alice")]
    assert alice.session.rooms == []
    assert not world.room("general").holds(alice.mailbox)
    bob.feed(SendMessage("general", "anyone?"))
    assert alice.events() == []


def test_send_reaches_every_member_and_no_one_else(world: World) -> None:
    alice, bob, carol = world.client("alice"), world.client("bob"), world.client("carol")
    in_room(world, "general", alice, bob)
    in_room(world, "random", carol)
    alice.feed(SendMessage("general", "one"), SendMessage("general", "two"))
    bob.feed(SendMessage("general", "three"))
    expected = [said("general", "alice", "one"), said("general", "alice", "two")]
    expected.append(said("general", "bob", "three"))
    assert alice.events() == expected
    assert bob.events() == expected
    assert carol.events() == []


def test_a_message_then_a_leave_in_one_read_is_still_echoed_that_turn(world: World) -> None:
    # Found by the model (test_session_model): the room no longer flushed the leaver.
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    alice.feed(SendMessage("general", "bye"), LeaveRoom("general"))
    assert alice.events() == [said("general", "alice", "bye")]
    assert bob.events() == [said("general", "alice", "bye"), left("general", "alice")]


def test_runs_of_messages_to_rooms_keep_each_rooms_order_of_the_read(world: World) -> None:
    # Each room's events keep their order; nothing is ordered across rooms (docs/protocol.md):
    # a turn's events reach a member room by room.
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    in_room(world, "random", alice, bob)
    names = ["general", "general", "random", "random", "random", "general", "nowhere", "general"]
    alice.feed(*[SendMessage(room, f"{n}") for n, room in enumerate(names)])
    expected = [said(room, "alice", f"{n}") for n, room in enumerate(names) if room != "nowhere"]
    for client in (alice, bob):
        events = client.events()
        assert sorted(events, key=expected.index) == expected  # each once, nothing else
        for room in ("general", "random"):
            assert [e for e in events if e.room == room] == [e for e in expected if e.room == room]


def test_a_run_that_is_the_rest_of_the_read_after_other_commands(world: World) -> None:
    # The rest of a read to one room is taken at once (Session._handle): after a message
    # to another room and a leave, and not when a different room's message ends it.
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    in_room(world, "random", alice, bob)
    rest = [SendMessage("general", f"g{n}") for n in range(5)]
    alice.feed(SendMessage("random", "r"), LeaveRoom("random"), *rest)
    expected = [said("random", "alice", "r"), *[said("general", "alice", m.content) for m in rest]]
    assert alice.events() == expected
    assert bob.events() == [expected[0], left("random", "alice"), *expected[1:]]
    alice.feed(*rest[:3], SendMessage("random", "not joined"), SendMessage("general", "last"))
    expected = [*[said("general", "alice", m.content) for m in rest[:3]]]
    expected.append(said("general", "alice", "last"))
    assert alice.events() == expected
    assert bob.events() == expected


def test_a_read_alternating_rooms_is_scanned_for_one_run_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Looking for "the rest of the read is one run" is tried once per read: a read that
    # alternates rooms must not cost a pass over the rest for each of its runs.
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    in_room(world, "random", alice, bob)
    scans = []
    scan = session_module._contents_of_run

    def counted(items: list[object], start: int, room: str) -> list[str] | None:
        scans.append(start)
        return scan(items, start, room)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module, "_contents_of_run", counted)
    names = ["general", "general", "random", "random"] * 50
    alice.feed(*[SendMessage(room, f"{n}") for n, room in enumerate(names)])
    assert scans == [0]
    for client in (alice, bob):
        events = client.events()
        for room in ("general", "random"):
            assert [e.content for e in events if e.room == room] == [
                f"{n}" for n, name in enumerate(names) if name == room
            ]


def test_one_write_per_session_per_turn(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    before = len(bob.writes)
    alice.feed(*[SendMessage("general", str(n)) for n in range(50)])
    assert len(bob.writes) == before + 1
    assert [m.content for m in bob.events() if isinstance(m, UserMessage)] == [
        str(n) for n in range(50)
    ]


# --- a turn's events: a room keeps them, each member gets them once, at the turn's end --


def test_a_session_joining_during_a_turn_gets_only_what_follows_its_join(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    carol = world.client("carol")
    in_room(world, "general", alice, bob)
    alice.feed(SendMessage("general", "before"), turn=False)
    carol.feed(JoinRoom("general"), turn=False)
    alice.feed(SendMessage("general", "after"))  # the turn ends
    assert carol.events() == [
        users_of("general", "alice", "bob", "carol"),
        joined("general", "carol"),
        said("general", "alice", "after"),
    ]
    everyone_saw = [said("general", "alice", "before"), joined("general", "carol")]
    assert bob.events() == [*everyone_saw, said("general", "alice", "after")]
    assert len(carol.writes) == 1 + 1  # the login, then the whole turn in one write


def test_a_session_leaving_during_a_turn_gets_what_came_before_its_leave(world: World) -> None:
    alice, bob, carol = world.client("alice"), world.client("bob"), world.client("carol")
    in_room(world, "general", alice, bob, carol)
    alice.feed(SendMessage("general", "1"), turn=False)
    bob.feed(LeaveRoom("general"), turn=False)
    alice.feed(SendMessage("general", "2"))
    assert bob.events() == [said("general", "alice", "1")]
    expected = [
        said("general", "alice", "1"),
        left("general", "bob"),
        said("general", "alice", "2"),
    ]
    assert carol.events() == expected
    assert alice.events() == expected


def test_an_event_of_its_own_does_not_overtake_a_rooms_events(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    alice.feed(SendMessage("general", "hi"), turn=False)
    bob.feed(JoinRoom("python"))  # its reply is queued after "hi", in the same turn
    assert bob.events() == [
        said("general", "alice", "hi"),
        users_of("python", "bob"),
        joined("python", "bob"),
    ]


def test_quit_leaves_every_room_flushes_then_closes(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    in_room(world, "random", alice, bob)
    alice.feed(SendMessage("general", "bye"), Quit(), SendMessage("general", "never"))
    assert bob.events() == [
        said("general", "alice", "bye"),
        left("general", "alice"),
        left("random", "alice"),
    ]
    assert alice.events() == [said("general", "alice", "bye")]
    assert alice.connection.calls == [("close", "quit")]
    assert isinstance(alice.timeline[-2], bytes), "the queued output went out before the close"
    assert alice.timeline[-1] == ("close", "quit")
    assert alice.session.closed and alice.session.rooms == []
    assert world.room("general").members == [bob.mailbox]


def test_quit_outside_any_room(world: World) -> None:
    alice = world.client("alice")
    alice.feed(Quit())
    assert alice.connection.calls == [("close", "quit")]
    alice.feed(JoinRoom("general"))  # anything after the end is ignored
    assert alice.connection.calls == [("close", "quit")]
    assert not world.room("general").holds(alice.mailbox)


# --- bad input ----------------------------------------------------------------------

BAD_LINES = [
    b"this is not json",
    b'{"_ct":"join_room","r":"general"',  # truncated
    b'{"_ct":"dance"}',  # unknown command
    b'{"_ct":"join_room"}',  # missing field
    b'{"_ct":"send_message","r":"general"}',  # missing content
    b'{"_ct":"join_room","r":42}',  # wrongly typed field
    b'{"_ct":"send_message","r":"general","c":7}',
    b'{"r":"general"}',  # no tag
    b'["join_room","general"]',
    b'{"_ct":"join_room","r":"\xff\xfe"}',  # invalid UTF-8
    b"\xc3\x28",
    b"\x00\x01\x02",
    b'{"_ct":"quit","x":' + b"[" * 5000,  # nested deeper than the decoder's stack
    b'{"_et":"user_message","r":"general","u":"x","c":"forged event"}',
]


@pytest.mark.parametrize("line", BAD_LINES, ids=lambda b: repr(b[:24]))
def test_bad_line_is_ignored_and_the_session_stays_open(world: World, line: bytes) -> None:
    assert len(line) <= MAX_LINE
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    alice.feed(line + b"\r\n")
    assert alice.events() == [] and bob.events() == []
    assert alice.connection.calls == [] and not alice.session.closed
    assert alice.session.rooms == ["general"]
    alice.feed(SendMessage("general", "still here"))
    assert bob.events() == [said("general", "alice", "still here")]


@pytest.mark.parametrize(
    "command",
    [
        JoinRoom("no-such-room"),
        JoinRoom("General"),
        JoinRoom("general"),  # already joined
        LeaveRoom("random"),  # not joined
        LeaveRoom("no-such-room"),
        SendMessage("random", "not a member"),
        SendMessage("no-such-room", "x"),
    ],
    ids=repr,
)
def test_room_command_that_cannot_be_carried_out_is_ignored(
    world: World, command: JoinRoom | LeaveRoom | SendMessage
) -> None:
    alice, watcher = world.client("alice"), world.client("watcher")
    in_room(world, "general", alice)
    in_room(world, "random", watcher)
    alice.feed(command)
    assert alice.events() == [] and watcher.events() == []
    assert alice.connection.calls == [] and alice.session.rooms == ["general"]
    assert world.room("random").members == [watcher.mailbox]
    assert world.presence.users(world.room("general")) == ("alice",)
    alice.feed(SendMessage("general", "fine"))
    assert alice.events() == [said("general", "alice", "fine")]


def test_blank_lines_are_skipped(world: World) -> None:
    alice = world.client("alice")
    alice.feed(b"\r\n\n   \r\n\t\n\r\n")
    assert alice.events() == [] and alice.connection.calls == []
    alice.feed(b"\n\n" + encode(JoinRoom("general")) + b"\r\n \n")
    assert alice.events() == [users_of("general", "alice"), joined("general", "alice")]
    assert alice.connection.calls == []


def test_line_too_long_aborts_and_leaves_every_room(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", alice, bob)
    in_room(world, "random", alice, bob)
    # A message (echoed to alice, queued) and then a line that never ends, in one packet.
    alice.feed(
        SendMessage("general", "last words"), b'{"_ct":"send_message","c":"' + b"x" * MAX_LINE
    )
    assert alice.connection.calls == [("abort", "line too long")]
    assert alice.events() == [], "the queued output was dropped, not written"
    assert alice.mailbox.closed and alice.session.closed and alice.session.rooms == []
    assert bob.events() == [
        said("general", "alice", "last words"),
        left("general", "alice"),
        left("random", "alice"),
    ]
    for name in ("general", "random"):
        assert world.room(name).members == [bob.mailbox]
        assert world.presence.users(world.room(name)) == ("bob",)
    alice.feed(b"\r\n" + encode(JoinRoom("python")))  # nothing more is read
    assert alice.connection.calls == [("abort", "line too long")]
    assert not world.room("python").holds(alice.mailbox)


def test_line_of_exactly_the_limit_is_fine(world: World) -> None:
    alice = world.client("alice")
    in_room(world, "general", alice)
    prefix = b'{"_ct":"send_message","r":"general","c":"'
    content = "y" * (MAX_LINE - len(prefix) - 2)
    alice.feed(prefix + content.encode() + b'"}\r\n')
    assert alice.events() == [said("general", "alice", content)]
    assert alice.connection.calls == []


# --- the end of the input ---------------------------------------------------------------


def test_eof_carries_out_the_last_unterminated_command_then_closes(world: World) -> None:
    alice, bob = world.client("alice"), world.client("bob")
    in_room(world, "general", bob)
    alice.feed(JoinRoom("general"), unterminated(SendMessage("general", "bye")))
    assert bob.events() == [joined("general", "alice")]  # the join, not the message yet
    alice.session.receive_eof()
    world.turn()
    assert alice.events() == [
        users_of("general", "bob", "alice"),
        joined("general", "alice"),
        said("general", "alice", "bye"),
    ]
    assert bob.events() == [said("general", "alice", "bye"), left("general", "alice")]
    assert alice.connection.calls == [("close", "client closed its side")]
    assert alice.timeline[-1] == ("close", "client closed its side")
    assert alice.session.closed and alice.session.rooms == []


@pytest.mark.parametrize("tail", [b"", b"  ", b'{"_ct":"send_mess'], ids=repr)
def test_eof_without_a_command_closes(world: World, tail: bytes) -> None:
    alice = world.client("alice")
    alice.feed(tail)
    alice.session.receive_eof()
    world.turn()
    assert alice.events() == []
    assert alice.connection.calls == [("close", "client closed its side")]


def test_eof_after_an_unterminated_quit_closes_once(world: World) -> None:
    alice = world.client("alice")
    alice.feed(unterminated(Quit()))
    alice.session.receive_eof()
    assert alice.connection.calls == [("close", "quit")]


# --- framing --------------------------------------------------------------------------

SCRIPT: list[tuple[str, bytes]] = [
    ("alice", encode(JoinRoom("general"))),
    ("bob", b"\r\n" + encode(JoinRoom("general")) + b"not json\n"),
    ("alice", encode(SendMessage("general", 'héllo 👋 \n \\ "')) + encode(JoinRoom("random"))),
    ("bob", encode(SendMessage("random", "not a member")) + encode(LeaveRoom("general"))),
    ("alice", b'{"_ct":"send_message","r":"general","c":"\\u00e9\\n"}\n'),
    ("bob", encode(JoinRoom("random")) + encode(SendMessage("random", "hi")) + encode(Quit())),
    ("alice", encode(SendMessage("random", "after bob"))),
]


def _run_script(
    chunks_of: Callable[[bytes], list[bytes]],
) -> tuple[list[list[bytes]], list[list[tuple[str, ...]]]]:
    """Play SCRIPT, each step's bytes split by ``chunks_of`` (a function of the bytes)."""
    world = World()
    clients = {"alice": world.client("alice", "a"), "bob": world.client("bob", "b")}
    for who, data in SCRIPT:
        for chunk in chunks_of(data):
            clients[who].feed(chunk)
    world.turn()
    ordered = list(clients.values())
    return [c.lines() for c in ordered], [list(c.connection.calls) for c in ordered]


def _every_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        end = start + rng.randint(1, 7)
        out.append(data[start:end])
        start = end
    return out


def test_commands_split_at_every_byte_give_the_same_result() -> None:
    whole = _run_script(lambda data: [data])
    alice, bob = ([EventDecoder().feed(line)[0] for line in lines[1:]] for lines in whole[0])
    hello = said("general", "alice", 'héllo 👋 \n \\ "')
    assert alice == [
        users_of("general", "alice"),
        joined("general", "alice"),
        joined("general", "bob"),
        hello,
        users_of("random", "alice"),
        joined("random", "alice"),
        left("general", "bob"),
        said("general", "alice", "é\n"),
        joined("random", "bob"),
        said("random", "bob", "hi"),
        left("random", "bob"),
        said("random", "alice", "after bob"),
    ]
    assert bob == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        hello,
        users_of("random", "alice", "bob"),
        joined("random", "bob"),
        said("random", "bob", "hi"),
    ]
    assert whole[1] == [[], [("close", "quit")]]
    assert _run_script(_every_byte) == whole
    rng = random.Random(1)
    for _ in range(20):
        assert _run_script(lambda data: _random_chunks(data, rng)) == whole


# --- the connection going away ---------------------------------------------------------


def test_connection_lost_leaves_every_room_and_drops_queued_output(world: World) -> None:
    alice, bob, carol = world.client("alice"), world.client("bob"), world.client("carol")
    in_room(world, "general", alice, bob, carol)
    in_room(world, "random", alice, bob)
    written = len(alice.writes)
    carol.feed(SendMessage("general", "queued for alice"), turn=False)
    alice.session.connection_lost()
    world.turn()
    assert len(alice.writes) == written, "what was queued for alice was dropped"
    assert alice.connection.calls == [], "nothing asked of a connection that is gone"
    assert alice.mailbox.closed and alice.session.closed and alice.session.rooms == []
    assert bob.events() == [
        said("general", "carol", "queued for alice"),
        left("general", "alice"),
        left("random", "alice"),
    ]
    assert carol.events() == [
        said("general", "carol", "queued for alice"),
        left("general", "alice"),
    ]
    assert world.room("general").members == [bob.mailbox, carol.mailbox]
    assert world.room("random").members == [bob.mailbox]
    bob.feed(SendMessage("general", "later"))
    assert len(alice.writes) == written


def test_second_session_of_a_user_leaving_is_not_announced(world: World) -> None:
    first, second, bob = world.client("alice"), world.client("alice"), world.client("bob")
    in_room(world, "general", first, bob)
    second.feed(JoinRoom("general"))
    assert second.events() == [users_of("general", "alice", "bob")]
    assert first.events() == [] and bob.events() == []
    first.session.connection_lost()
    world.turn()
    assert bob.events() == [] and second.events() == []
    second.feed(Quit())
    assert bob.events() == [left("general", "alice")]


# --- asynchronous joins (a presence that answers later) -------------------------------

ORDERS = ["reply-first", "marker-first"]


def late_world() -> tuple[World, LatePresence]:
    presence = LatePresence()
    return World(presence), presence


def joined_late(world: World, presence: LatePresence, room: str, *clients: Client) -> None:
    """Join and answer at once, then forget the output."""
    for client in clients:
        client.feed(JoinRoom(room))
        presence.pop().answer()
        world.turn()
        assert not client.connection.paused
    for client in clients:
        client.new_lines()


@pytest.mark.parametrize("order", ORDERS)
def test_send_right_after_a_pending_join_goes_to_the_joined_room(order: str) -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    bob.feed(JoinRoom("general"), SendMessage("general", "hi all"))
    assert bob.connection.calls == [("pause_reading",)]
    assert alice.events() == [] and bob.events() == []
    presence.pop().answer(order)
    world.turn()
    assert bob.events() == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        said("general", "bob", "hi all"),
    ]
    assert alice.events() == [joined("general", "bob"), said("general", "bob", "hi all")]
    assert bob.connection.calls == [("pause_reading",), ("resume_reading",)]
    assert bob.session.rooms == ["general"]


@pytest.mark.parametrize("order", ORDERS)
def test_commands_after_a_pending_join_are_held_in_order(order: str) -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    bob.feed(
        JoinRoom("general"),
        SendMessage("general", "first"),
        JoinRoom("random"),
        SendMessage("random", "r1"),
        SendMessage("general", "second"),
    )
    assert bob.connection.calls == [("pause_reading",)]
    general = presence.pop()
    assert general.room.name == "general", "the second join waits for the first"
    # Bytes already on their way when reading stopped are held behind the rest.
    bob.feed(SendMessage("general", "third"), b"not json\r\n", LeaveRoom("python"))
    assert alice.events() == [] and bob.events() == []

    general.answer(order)
    world.turn()
    assert bob.events() == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        said("general", "bob", "first"),
    ]
    assert alice.events() == [joined("general", "bob"), said("general", "bob", "first")]
    # Stopped again, at the second join.
    assert bob.connection.calls == [("pause_reading",)] * 2 and bob.connection.paused

    rand = presence.pop()
    assert rand.room.name == "random"
    rand.answer(order)
    world.turn()
    assert bob.events() == [
        users_of("random", "bob"),
        joined("random", "bob"),
        said("random", "bob", "r1"),
        said("general", "bob", "second"),
        said("general", "bob", "third"),
    ]
    assert alice.events() == [said("general", "bob", "second"), said("general", "bob", "third")]
    assert bob.connection.calls == [("pause_reading",)] * 2 + [("resume_reading",)]
    assert bob.session.rooms == ["general", "random"]
    # Reading again: a command now is carried out at once.
    bob.feed(SendMessage("random", "now"))
    assert bob.events() == [said("random", "bob", "now")]


def test_quit_held_behind_a_pending_join_runs_after_it() -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    bob.feed(JoinRoom("general"), SendMessage("general", "hello"), Quit())
    presence.pop().answer()
    world.turn()
    assert bob.events() == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        said("general", "bob", "hello"),
    ]
    assert bob.connection.calls == [("pause_reading",), ("close", "quit")]
    assert alice.events() == [
        joined("general", "bob"),
        said("general", "bob", "hello"),
        left("general", "bob"),
    ]


def test_events_between_marker_and_reply_follow_user_joined_room_in_order() -> None:
    world, presence = late_world()
    alice, carol, bob = world.client("alice"), world.client("carol"), world.client("bob")
    joined_late(world, presence, "general", alice, carol)
    bob.feed(JoinRoom("general"))
    pending = presence.pop()
    alice.feed(SendMessage("general", "before the marker"))

    pending.marker()
    world.turn()
    # Everyone else hears of bob at the marker, his place in the room's stream.
    assert alice.events() == [
        said("general", "alice", "before the marker"),
        joined("general", "bob"),
    ]
    alice.feed(SendMessage("general", "between 1"))
    carol.feed(SendMessage("general", "between 2"), LeaveRoom("general"))
    assert bob.events() == [], "nothing goes to bob before his user_joined_room"

    pending.reply()
    world.turn()
    assert bob.events() == [
        users_of("general", "alice", "carol", "bob"),  # the users at the join
        joined("general", "bob"),
        said("general", "alice", "between 1"),
        said("general", "carol", "between 2"),
        left("general", "carol"),
    ]
    alice.feed(SendMessage("general", "after"))
    assert bob.events() == [said("general", "alice", "after")]
    assert bob.connection.calls == [("pause_reading",), ("resume_reading",)]


def test_events_between_reply_and_marker_are_not_the_joiners() -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    bob.feed(JoinRoom("general"))
    pending = presence.pop()
    pending.reply()
    alice.feed(SendMessage("general", "before the marker"))
    assert bob.events() == []
    pending.marker()
    alice.feed(SendMessage("general", "after the marker"))
    assert bob.events() == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        said("general", "alice", "after the marker"),
    ]
    assert alice.events() == [
        said("general", "alice", "before the marker"),
        joined("general", "bob"),
        said("general", "alice", "after the marker"),
    ]


@pytest.mark.parametrize("answered", ["nothing", "reply", "marker"])
def test_connection_lost_during_a_pending_join_leaves_cleanly(answered: str) -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    room = world.room("general")
    login = bob.lines()
    bob.feed(JoinRoom("general"), SendMessage("general", "held"))
    pending = presence.pop()
    if answered == "reply":
        pending.reply()
    elif answered == "marker":
        pending.marker()
    world.turn()
    assert alice.events() == ([joined("general", "bob")] if answered == "marker" else [])

    # On a real bus the session's leave comes after its join's marker in the room's
    # stream: hold the "left" until the late facts have been handed over.
    presence.hold_left = True
    bob.session.connection_lost()
    assert bob.session.closed and bob.mailbox.closed and bob.session.rooms == []
    assert not room.holds(bob.mailbox) and room.members == [alice.mailbox]
    assert presence.leaves == [("general", bob.key)]

    if answered != "reply":
        pending.reply()
    if answered != "marker":
        pending.marker()
    presence.release_left()
    world.turn()
    # The late facts did not bring bob back.
    assert not room.holds(bob.mailbox) and room.members == [alice.mailbox]
    assert room.member_count == 1
    assert presence.users(room) == ("alice",)
    assert bob.lines() == login
    assert bob.connection.calls == [("pause_reading",)]
    alice.feed(SendMessage("general", "still here"))
    # alice heard of bob once each way, and never of the held message.
    assert alice.events() == [
        *([] if answered == "marker" else [joined("general", "bob")]),
        left("general", "bob"),
        said("general", "alice", "still here"),
    ]
    assert bob.lines() == login


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("last_is_join", [False, True])
def test_eof_during_a_pending_join_runs_the_held_commands_then_closes(
    order: str, last_is_join: bool
) -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "general", alice)
    if last_is_join:
        bob.feed(unterminated(JoinRoom("general")))
    else:
        bob.feed(JoinRoom("general"), SendMessage("general", "one"))
        bob.feed(unterminated(SendMessage("general", "two")))
    bob.session.receive_eof()
    world.turn()
    assert bob.connection.calls == [("pause_reading",)], "no close while the join is pending"
    presence.pop().answer(order)
    world.turn()
    messages = (
        [] if last_is_join else [said("general", "bob", "one"), said("general", "bob", "two")]
    )
    assert bob.events() == [
        users_of("general", "alice", "bob"),
        joined("general", "bob"),
        *messages,
    ]
    assert alice.events() == [joined("general", "bob"), *messages, left("general", "bob")]
    assert bob.connection.calls == [("pause_reading",), ("close", "client closed its side")]
    assert bob.timeline[-1] == ("close", "client closed its side")
    assert isinstance(bob.timeline[-2], bytes), "the output went out before the close"


def test_a_failed_join_resumes_with_the_next_command() -> None:
    world, presence = late_world()
    alice, bob = world.client("alice"), world.client("bob")
    joined_late(world, presence, "random", alice)
    bob.feed(
        JoinRoom("general"),
        SendMessage("general", "lost"),
        JoinRoom("random"),
        SendMessage("random", "kept"),
    )
    general = presence.pop()
    general.room.join_failed(bob.key, RoomError("presence is unavailable"))
    assert not general.room.holds(bob.mailbox)
    # It went on with the next commands: the message to general was ignored, and the
    # join of random is the one in progress now.
    rand = presence.pop()
    assert rand.room.name == "random"
    assert bob.connection.calls == [("pause_reading",)] * 2
    rand.answer()
    world.turn()
    assert bob.events() == [
        users_of("random", "alice", "bob"),
        joined("random", "bob"),
        said("random", "bob", "kept"),
    ]
    assert alice.events() == [joined("random", "bob"), said("random", "bob", "kept")]
    assert bob.connection.calls == [("pause_reading",)] * 2 + [("resume_reading",)]
    assert bob.session.rooms == ["random"]
    # The failed room can be joined again.
    bob.feed(JoinRoom("general"))
    presence.pop().answer()
    assert bob.session.rooms == ["random", "general"]


def test_a_failed_join_with_nothing_after_resumes_reading() -> None:
    world, presence = late_world()
    bob = world.client("bob")
    bob.feed(JoinRoom("general"))
    pending = presence.pop()
    pending.room.join_failed(bob.key, RoomError("no"))
    world.turn()
    assert bob.connection.calls == [("pause_reading",), ("resume_reading",)]
    assert bob.events() == [] and bob.session.rooms == []
    # A late answer to the failed join is ignored.
    pending.answer()
    world.turn()
    assert bob.events() == [] and not pending.room.holds(bob.mailbox)
