"""Sessions on the in-process bus against a model, step by random step (hypothesis).

A :class:`~hypothesis.stateful.RuleBasedStateMachine` drives several sessions (two of
them, and any that connect later, may share a user id) with random joins, leaves,
messages, quits, bad lines, lines too long, half-closes, bursts of commands in one
packet split at a random byte, and lost connections. After every step it checks the
real sessions against a simple model: who is in which room (members and presence), and
that every session's output is *exactly* the events the model predicts, in the order
promised (``user_joined_room`` lists; ``joined`` and ``left`` once per user, not per
session; messages; each room's events in order, nothing ordered across rooms: see
:func:`promised_order`), with at most one write per session per turn and the right close
or abort.

It runs a modest number of examples in ``make test``. To run it longer, use the "long"
settings profile registered in tests/conftest.py::

    HYPOTHESIS_PROFILE=long .venv/bin/pytest tests/server/core/test_session_model.py
    .venv/bin/pytest tests/server/core/test_session_model.py --hypothesis-profile=long

(a thousand examples of 60 steps: a couple of minutes). To replay or vary a run, add
``--hypothesis-seed=N``; when the model and the sessions disagree, hypothesis prints
the failing steps, shrunk.
"""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from roomchat.protocol import (
    EventDecoder,
    JoinRoom,
    LeaveRoom,
    LoginSuccessful,
    Quit,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.server.core.presence import joined_event, left_event
from tests.session_harness import DETAILS, ROOMS, Call, Client, World

DEFAULT_RUN = settings.get_current_profile_name() == "default"
if DEFAULT_RUN:  # a few seconds
    RUN = settings(max_examples=60, stateful_step_count=30, deadline=None)
else:  # "long" (or any profile chosen on purpose): its numbers decide
    RUN = settings(deadline=None)

_LOG = logging.getLogger("roomchat.server")
MAX_LINE = 200
USERS = ("ann", "bob", "cat")
ROOM_NAMES = st.sampled_from((*ROOMS, "nowhere"))
CONTENT = st.text(max_size=12)
SPLIT = st.integers(min_value=0, max_value=400)
WHO = st.integers(min_value=0, max_value=31)
BAD_LINES = st.sampled_from(
    [
        b"not json",
        b'{"_ct":"dance"}',
        b'{"_ct":"join_room"}',
        b'{"_ct":"join_room","r":1}',
        b'{"_ct":"send_message","r":"general"}',
        b'{"_ct":"join_room","r":"\xff"}',
        b"[" * 150,
        b"   ",
        b"",
    ]
)

Op = tuple[str, ...]
OPS = st.one_of(
    st.tuples(st.just("join"), ROOM_NAMES),
    st.tuples(st.just("leave"), ROOM_NAMES),
    st.tuples(st.just("send"), ROOM_NAMES, CONTENT),
    st.tuples(st.just("quit")),
)


_ROOM_EVENTS = (b'{"_et":"user_message",', b'{"_et":"room_participation",')


def _room_of(line: bytes) -> str:
    room: str = json.loads(line)["r"]
    return room


def promised_order(lines: list[bytes]) -> list[bytes]:
    """A session's lines as far as their order is promised (docs/protocol.md: each room's
    events in the room's order, nothing ordered across rooms): between two events of its
    own (``login_successful``, ``user_joined_room``), which nothing overtakes, the rooms'
    events grouped by room, each room's in the order received (a stable sort)."""
    out: list[bytes] = []
    run: list[bytes] = []
    for line in lines:
        if line.startswith(_ROOM_EVENTS):
            run.append(line)
            continue
        out += sorted(run, key=_room_of)
        run.clear()
        out.append(line)
    return out + sorted(run, key=_room_of)


def wire(op: Op) -> bytes:
    kind = op[0]
    if kind == "join":
        return encode(JoinRoom(op[1]))
    if kind == "leave":
        return encode(LeaveRoom(op[1]))
    if kind == "send":
        return encode(SendMessage(op[1], op[2]))
    assert kind == "quit", op
    return encode(Quit())


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Every ignored command logs a warning: thousands per run, and slow to shrink.
        self._log_level = _LOG.level
        _LOG.setLevel(logging.ERROR)
        self.world = World(max_line_length=MAX_LINE)
        self.clients: list[Client] = []
        # The model.
        self.users: dict[str, dict[str, int]] = {room: {} for room in ROOMS}  # presence
        self.members: dict[str, list[int]] = {room: [] for room in ROOMS}
        self.joined: list[list[str]] = []  # per session, rooms in the order joined
        self.pending: list[list[bytes]] = []  # queued this turn
        self.written: list[list[bytes]] = []
        self.ended: list[list[Call]] = []
        self.closed: list[bool] = []
        self.ending: list[int] = []  # closed or aborted this turn: the transport goes next
        self.turn_writes: list[int] = []
        for user in ("ann", "bob", "ann"):  # two sessions of one user from the start
            self._connect(user)

    def teardown(self) -> None:
        _LOG.setLevel(self._log_level)

    # -- the model ---------------------------------------------------------------------
    def _connect(self, user: str) -> None:
        index = len(self.clients)
        key = f"s{index}"
        self.clients.append(self.world.client(user, key))
        self.joined.append([])
        self.pending.append([])
        self.written.append([encode(LoginSuccessful(key, user, DETAILS))])
        self.ended.append([])
        self.closed.append(False)

    def _user(self, index: int) -> str:
        return self.clients[index].user_id

    def _fan_out(self, room: str, event: bytes) -> None:
        for member in self.members[room]:
            self.pending[member].append(event)

    def m_join(self, index: int, room: str) -> None:
        if room not in self.members or room in self.joined[index]:
            return  # unknown room, or already joined: ignored
        users = self.users[room]
        user = self._user(index)
        sessions = users.get(user, 0)
        users[user] = sessions + 1
        self.pending[index].append(encode(UserJoinedRoom(room, tuple(users))))
        self.members[room].append(index)
        self.joined[index].append(room)
        if not sessions:
            self._fan_out(room, joined_event(room, user))

    def m_leave(self, index: int, room: str) -> None:
        if room not in self.joined[index]:
            return
        self.joined[index].remove(room)
        self.members[room].remove(index)
        users = self.users[room]
        user = self._user(index)
        users[user] -= 1
        if not users[user]:
            del users[user]
            self._fan_out(room, left_event(room, user))

    def m_send(self, index: int, room: str, content: str) -> None:
        if room in self.joined[index]:
            self._fan_out(room, encode(UserMessage(room, self._user(index), content)))

    def m_end(self, index: int, call: Call | None) -> None:
        """close (queued output written), abort (dropped), or the connection lost."""
        for room in list(self.joined[index]):
            self.m_leave(index, room)
        if call is not None and call[0] == "close":
            self.written[index] += self.pending[index]
        self.pending[index] = []
        if call is not None:
            self.ended[index].append(call)
            self.ending.append(index)
        self.closed[index] = True

    def m_op(self, index: int, op: Op) -> None:
        if self.closed[index]:
            return  # nothing after the end is carried out
        kind = op[0]
        if kind == "join":
            self.m_join(index, op[1])
        elif kind == "leave":
            self.m_leave(index, op[1])
        elif kind == "send":
            self.m_send(index, op[1], op[2])
        else:
            self.m_end(index, ("close", "quit"))

    # -- driving the sessions -------------------------------------------------------
    def _open(self, who: int) -> int:
        indices = [i for i, closed in enumerate(self.closed) if not closed]
        return indices[who % len(indices)]

    def _any_open(self) -> bool:
        return not all(self.closed)

    def _begin(self) -> None:
        self.turn_writes = [len(client.writes) for client in self.clients]

    def _feed(self, index: int, data: bytes, split: int) -> None:
        self._begin()
        cut = split % (len(data) + 1)
        session = self.clients[index].session
        session.receive_data(data[:cut])
        session.receive_data(data[cut:])

    def _end_turn(self) -> None:
        self.world.turn()
        for index in self.ending:  # the transport closes: connection_lost follows
            self.clients[index].session.connection_lost()
        self.ending = []
        for index, pending in enumerate(self.pending):
            self.written[index] += pending
            pending.clear()
        for client, before in zip(self.clients, self.turn_writes, strict=False):
            assert len(client.writes) - before <= 1, "more than one write in a turn"

    # -- rules -----------------------------------------------------------------------
    @precondition(lambda self: self.closed.count(False) < 6)
    @rule(user=st.sampled_from(USERS))
    def connect(self, user: str) -> None:
        self._begin()
        self._connect(user)
        self._end_turn()

    @precondition(_any_open)
    @rule(who=WHO, room=ROOM_NAMES, split=SPLIT)
    def join(self, who: int, room: str, split: int) -> None:
        self.burst(who, [("join", room)], split)

    @precondition(_any_open)
    @rule(who=WHO, room=ROOM_NAMES, split=SPLIT)
    def leave(self, who: int, room: str, split: int) -> None:
        self.burst(who, [("leave", room)], split)

    @precondition(_any_open)
    @rule(who=WHO, room=ROOM_NAMES, content=CONTENT, split=SPLIT)
    def send(self, who: int, room: str, content: str, split: int) -> None:
        self.burst(who, [("send", room, content)], split)

    @precondition(_any_open)
    @rule(who=WHO, split=SPLIT)
    def quit(self, who: int, split: int) -> None:
        self.burst(who, [("quit",)], split)

    @precondition(_any_open)
    @rule(who=WHO, ops=st.lists(OPS, min_size=2, max_size=6), split=SPLIT)
    def burst(self, who: int, ops: list[Op], split: int) -> None:
        """Several commands in one packet (one turn), split at a random byte."""
        index = self._open(who)
        self._feed(index, b"".join(wire(op) for op in ops), split)
        for op in ops:
            self.m_op(index, op)
        self._end_turn()

    @precondition(_any_open)
    @rule(who=WHO, line=BAD_LINES, split=SPLIT)
    def bad_line(self, who: int, line: bytes, split: int) -> None:
        index = self._open(who)
        self._feed(index, line + b"\r\n", split)
        self._end_turn()

    @precondition(_any_open)
    @rule(who=WHO, before=st.lists(OPS, max_size=2), split=SPLIT)
    def line_too_long(self, who: int, before: list[Op], split: int) -> None:
        """Commands, then a line that never ends: their output to this session is lost."""
        index = self._open(who)
        data = b"".join(wire(op) for op in before) + b'{"_ct":"send_message","c":"'
        self._feed(index, data + b"x" * MAX_LINE, split)
        for op in before:
            self.m_op(index, op)
        if not self.closed[index]:
            self.m_end(index, ("abort", "line too long"))
        self._end_turn()

    @precondition(_any_open)
    @rule(who=WHO, last=st.none() | OPS, split=SPLIT)
    def half_close(self, who: int, last: Op | None, split: int) -> None:
        """The client closes its side, perhaps after an unterminated last command."""
        index = self._open(who)
        self._feed(index, wire(last)[:-2] if last is not None else b"", split)
        self.clients[index].session.receive_eof()
        if last is not None:
            self.m_op(index, last)
        if not self.closed[index]:
            self.m_end(index, ("close", "client closed its side"))
        self._end_turn()

    @precondition(_any_open)
    @rule(who=WHO, queued=st.booleans())
    def disconnect(self, who: int, queued: bool) -> None:
        """The connection is lost, perhaps with output queued for it this turn."""
        index = self._open(who)
        self._begin()
        if queued and self.joined[index]:
            # Someone else's message to one of its rooms, queued and never written to it.
            room = self.joined[index][0]
            others = [i for i in self.members[room] if i != index]
            sender = others[0] if others else index
            self.clients[sender].session.receive_data(encode(SendMessage(room, "bye?")))
            self.m_send(sender, room, "bye?")
        self.clients[index].session.connection_lost()
        self.m_end(index, None)
        self._end_turn()

    # -- checks ------------------------------------------------------------------------
    @invariant()
    def output_is_exactly_the_models(self) -> None:
        for index, client in enumerate(self.clients):
            assert promised_order(client.lines()) == promised_order(self.written[index]), client
            assert client.connection.calls == self.ended[index], client
            assert client.session.closed == self.closed[index], client
            assert client.mailbox.closed == self.closed[index], client

    @invariant()
    def rooms_are_the_models(self) -> None:
        presence = self.world.presence
        for room in ROOMS:
            chat = self.world.room(room)
            # Each member once; the order of a room's members is the room's business.
            members = [self.clients[i].mailbox for i in self.members[room]]
            assert len(chat.members) == len(members), room
            assert set(chat.members) == set(members), room
            assert presence.users(chat) == tuple(self.users[room]), room
        for index, client in enumerate(self.clients):
            assert client.session.rooms == self.joined[index], client

    @invariant()
    def each_stream_is_consistent_on_its_own(self) -> None:
        """Model-free: in what a session received, per room, "joined" only for a user
        not there, "left" only for one who is (own "joined" right after the list)."""
        for client in self.clients:
            present: dict[str, set[str]] = {}
            own_joined_may_follow: set[str] = set()
            for line in client.lines():
                event = EventDecoder().feed(line)[0]
                if isinstance(event, UserJoinedRoom):
                    assert len(set(event.users)) == len(event.users), event
                    assert client.user_id in event.users, event
                    present[event.room] = set(event.users)
                    own_joined_may_follow.add(event.room)
                elif isinstance(event, RoomParticipation):
                    users = present[event.room]
                    if event.status == "left":
                        assert event.user_id in users, (client, event)
                        users.discard(event.user_id)
                    elif event.user_id == client.user_id and event.room in own_joined_may_follow:
                        pass
                    else:
                        assert event.user_id not in users, (client, event)
                        users.add(event.user_id)
                    own_joined_may_follow.discard(event.room)
                elif isinstance(event, UserMessage):
                    assert event.user_id in present[event.room], (client, event)
                    own_joined_may_follow.discard(event.room)


class TestSessionsAgainstTheModel(SessionMachine.TestCase):  # type: ignore[misc,name-defined]
    settings = RUN
    # A passing run takes seconds; shrinking a failure can take minutes (hypothesis caps
    # it at about five), and a long run takes as long as it takes.
    pytestmark = pytest.mark.timeout(600 if DEFAULT_RUN else 0)
