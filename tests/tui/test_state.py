"""ChatState: every event type, unread counts, the history bound, reset."""

from __future__ import annotations

import pytest

from roomchat.protocol import (
    LoginSuccessful,
    RoomDetail,
    RoomParticipation,
    UserJoinedRoom,
    UserMessage,
)
from roomchat.tui.state import DEFAULT_HISTORY_LIMIT, ChatLine, ChatState

ME = "me001"
LOGIN = LoginSuccessful(
    session_id="session-1",
    user_id=ME,
    rooms=(
        RoomDetail("random", "Off-topic"),
        RoomDetail("general", "Anything goes"),
        RoomDetail("help", "Ask here"),
    ),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> ChatState:
    chat = ChatState(clock=clock)
    chat.apply(LOGIN)
    return chat


def join(state: ChatState, room: str, *others: str) -> None:
    """What the server sends the joiner: user_joined_room, then its own "joined"."""
    assert state.activate(room) is True
    state.apply(UserJoinedRoom(room, (ME, *others)))
    state.apply(RoomParticipation(room, ME, "joined"))


def test_login_lists_rooms_sorted_and_nothing_joined(state: ChatState) -> None:
    assert state.connected
    assert state.user_id == ME
    assert state.session_id == "session-1"
    assert [room.name for room in state.sorted_rooms()] == ["general", "help", "random"]
    assert state.rooms["general"].description == "Anything goes"
    assert not any(room.joined for room in state.rooms.values())
    assert state.active_room is None
    assert state.active is None


def test_seconds_connected_follow_the_clock(state: ChatState, clock: FakeClock) -> None:
    assert state.seconds_connected() == 0
    clock.now += 42.7
    assert state.seconds_connected() == 42


def test_user_joined_room_marks_joined_with_members(state: ChatState) -> None:
    update = state.apply(UserJoinedRoom("general", (ME, "alice")))
    room = state.rooms["general"]
    assert room.joined
    assert room.sorted_members() == ["alice", ME]
    assert update.room == "general"
    assert update.line is None


def test_participation_adds_and_removes_members_with_notices(state: ChatState) -> None:
    join(state, "general")
    joined = state.apply(RoomParticipation("general", "bob", "joined"))
    assert state.rooms["general"].members == {ME, "bob"}
    assert joined.line == ChatLine("joined", "bob")
    left = state.apply(RoomParticipation("general", "bob", "left"))
    assert state.rooms["general"].members == {ME}
    assert left.line == ChatLine("left", "bob")
    kinds = [(line.kind, line.user_id, line.own) for line in state.rooms["general"].lines]
    assert kinds == [("joined", ME, True), ("joined", "bob", False), ("left", "bob", False)]


def test_user_message_is_recorded_and_own_messages_are_marked(state: ChatState) -> None:
    join(state, "general", "alice")
    state.apply(UserMessage("general", "alice", "hi"))
    state.apply(UserMessage("general", ME, "hello"))
    messages = [line for line in state.rooms["general"].lines if line.kind == "message"]
    assert messages == [
        ChatLine("message", "alice", "hi"),
        ChatLine("message", ME, "hello", own=True),
    ]


def test_unread_counts_only_other_users_messages_in_inactive_rooms(state: ChatState) -> None:
    join(state, "help", "alice")
    join(state, "general", "alice")  # general is now the active room
    state.apply(UserMessage("help", "alice", "one"))
    state.apply(UserMessage("help", "alice", "two"))
    state.apply(UserMessage("help", ME, "mine, from another session"))
    state.apply(RoomParticipation("help", "bob", "joined"))
    state.apply(UserMessage("general", "alice", "in the active room"))
    assert state.rooms["help"].unread == 2
    assert state.rooms["general"].unread == 0
    assert state.activate("help") is False  # already joined: no join_room needed
    assert state.rooms["help"].unread == 0
    assert state.active_room == "help"


def test_history_is_bounded_per_room(state: ChatState) -> None:
    join(state, "general", "alice")
    for number in range(DEFAULT_HISTORY_LIMIT + 50):
        state.apply(UserMessage("general", "alice", f"message {number}"))
    lines = state.rooms["general"].lines
    assert len(lines) == DEFAULT_HISTORY_LIMIT
    assert lines[0].content == "message 50"
    assert lines[-1].content == f"message {DEFAULT_HISTORY_LIMIT + 49}"


def test_a_smaller_history_limit_is_honoured(clock: FakeClock) -> None:
    state = ChatState(history_limit=3, clock=clock)
    state.apply(LOGIN)
    state.apply(UserJoinedRoom("general", (ME,)))
    for number in range(5):
        state.apply(UserMessage("general", "alice", str(number)))
    assert [line.content for line in state.rooms["general"].lines] == ["2", "3", "4"]
    with pytest.raises(ValueError):
        ChatState(history_limit=0)


def test_leaving_clears_membership_and_the_active_room(state: ChatState) -> None:
    join(state, "general", "alice")
    update = state.mark_left("general")
    room = state.rooms["general"]
    assert not room.joined
    assert room.members == set()
    assert state.active_room is None
    assert update.line == ChatLine("left", ME, own=True)
    assert state.activate("general") is True  # re-opening it needs a new join


def test_events_still_on_their_way_after_leaving_are_ignored(state: ChatState) -> None:
    join(state, "general", "alice")
    state.activate("random")
    state.mark_left("general")
    lines = list(state.rooms["general"].lines)
    assert not state.apply(UserMessage("general", "alice", "sent before the leave")).changed
    assert not state.apply(RoomParticipation("general", "bob", "joined")).changed
    room = state.rooms["general"]
    assert (room.unread, room.members, list(room.lines)) == (0, set(), lines)


def test_events_for_unknown_rooms_are_ignored(state: ChatState) -> None:
    update = state.apply(UserMessage("nowhere", "alice", "hi"))
    assert not update.changed
    assert "nowhere" not in state.rooms
    assert not state.apply(RoomParticipation("nowhere", "alice", "joined")).changed
    assert not state.apply(UserJoinedRoom("nowhere", ("alice",))).changed
    with pytest.raises(KeyError):
        state.activate("nowhere")


def test_reset_forgets_everything(state: ChatState) -> None:
    join(state, "general", "alice")
    state.apply(UserMessage("general", "alice", "hi"))
    state.reset()
    assert not state.connected
    assert state.user_id is None
    assert state.session_id is None
    assert state.rooms == {}
    assert state.active_room is None
    assert state.seconds_connected() == 0


def test_a_new_login_replaces_the_old_session(state: ChatState) -> None:
    join(state, "general", "alice")
    update = state.apply(
        LoginSuccessful("session-2", "other", (RoomDetail("general", "Anything goes"),))
    )
    assert update.room is None
    assert state.user_id == "other"
    assert not state.rooms["general"].joined
    assert list(state.rooms["general"].lines) == []
    assert state.active_room is None
