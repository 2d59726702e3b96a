"""The client's sans-I/O ClientProtocol: bytes in, events, replies and bytes out.

No socket, no event loop, no clock. Every test that feeds bytes runs twice: with each
input whole, and again one byte at a time (as h11's tests/test_io.py does), to prove
that partial reads change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roomchat.client import (
    ClientProtocol,
    HelloRefused,
    JoinAnswered,
    JoinRefused,
    JoinResult,
    PongAnswered,
    ProtocolViolation,
    Reply,
    State,
)
from roomchat.client.protocol import HEARTBEAT_ID, HELLO_ID
from roomchat.protocol import (
    FEATURES,
    Error,
    Event,
    Hello,
    History,
    HistoryMessage,
    JoinRoom,
    LeaveRoom,
    LoginSuccessful,
    Ping,
    Pong,
    Quit,
    RoomAdded,
    RoomDetail,
    RoomListing,
    RoomRemoved,
    Rooms,
    SendMessage,
    ServerPing,
    ServerPong,
    UserJoinedRoom,
    UserMessage,
    Welcome,
    encode,
)

LOGIN = LoginSuccessful("s1", "rnd01", (RoomDetail("general", "talk"),))
#: A v2 server from before the community features: no ``rooms`` event after welcome.
OLDER_FEATURES = tuple(f for f in FEATURES if f not in ("rooms", "moderation", "direct_messages"))
WELCOME = Welcome(2, "s1", "alice", "tok", OLDER_FEATURES, 30, HELLO_ID)
MESSAGE = UserMessage("general", "bob", "hi", 1, 1000)


class Driver:
    """Feeds a ClientProtocol and gathers everything it gives back."""

    def __init__(self, protocol: ClientProtocol, bytewise: bool) -> None:
        self.protocol = protocol
        self.bytewise = bytewise
        self.events: list[Event] = []
        self.replies: list[Reply] = []
        self.raw = bytearray()
        self.sent = bytearray()

    def feed(self, *messages: Event | bytes) -> Driver:
        data = b"".join(m if isinstance(m, bytes) else encode(m) for m in messages)
        pieces = [data[i : i + 1] for i in range(len(data))] if self.bytewise else [data]
        for piece in pieces:
            self.protocol.receive_data(piece)
            self.collect()
        return self

    def collect(self) -> None:
        self.events += self.protocol.events_received()
        self.replies += self.protocol.replies_received()
        self.raw += self.protocol.raw_received()
        self.sent += self.protocol.data_to_send()

    def take(self) -> tuple[list[Event], list[Reply], bytes]:
        """Events, replies and sent bytes so far (then forgotten)."""
        self.collect()
        out = (self.events, self.replies, bytes(self.sent))
        self.events, self.replies, self.sent = [], [], bytearray()
        return out


MakeDriver = Callable[..., Driver]


@pytest.fixture(params=["whole", "bytewise"])
def make(request: pytest.FixtureRequest) -> MakeDriver:
    def factory(**kwargs: Any) -> Driver:
        return Driver(ClientProtocol(**kwargs), request.param == "bytewise")

    return factory


def v2_session(make: MakeDriver, welcome: Welcome = WELCOME, **kwargs: Any) -> Driver:
    driver = make(v2=True, **kwargs).feed(LOGIN, welcome)
    driver.take()
    return driver


# -- login first ----------------------------------------------------------------------------


def test_v1_login_then_events(make: MakeDriver) -> None:
    driver = make()
    assert driver.protocol.state is State.LOGIN
    driver.feed(LOGIN, MESSAGE)
    assert driver.protocol.state is State.OPEN
    assert driver.protocol.login == LOGIN
    assert (driver.protocol.version, driver.protocol.welcome) == (1, None)
    assert driver.take() == ([MESSAGE], [], b"")  # the login itself is not an event


def test_anything_before_the_login_is_a_protocol_violation(make: MakeDriver) -> None:
    driver = make().feed(MESSAGE, LOGIN, MESSAGE)
    protocol = driver.protocol
    assert protocol.state is State.FAILED
    assert isinstance(protocol.failure, ProtocolViolation)
    assert "expected login_successful first" in str(protocol.failure)
    assert protocol.login is None
    assert driver.take() == ([], [], b"")  # and whatever follows is dropped


def test_garbage_before_the_login_is_counted_not_fatal(make: MakeDriver) -> None:
    driver = make().feed(b"not json\r\n", b"\r\n", LOGIN, b'{"_et":"nope"}\r\n', MESSAGE)
    assert driver.protocol.state is State.OPEN
    assert driver.protocol.protocol_errors == 2  # the blank line is no error
    assert driver.take()[0] == [MESSAGE]


def test_over_long_lines_are_counted_and_skipped(make: MakeDriver) -> None:
    driver = make(max_line_length=100).feed(LOGIN, b"x" * 150 + b"\r\n", MESSAGE)
    assert driver.protocol.protocol_errors == 1
    assert driver.take()[0] == [MESSAGE]


def test_a_name_needs_v2() -> None:
    with pytest.raises(ValueError):
        ClientProtocol(name="alice")
    with pytest.raises(ValueError):
        ClientProtocol(token="t")


# -- the v2 handshake -----------------------------------------------------------------------


def test_hello_after_the_login_and_welcome(make: MakeDriver) -> None:
    driver = make(v2=True, name="alice", token="tok")
    assert driver.take()[2] == b""  # nothing is said before the login
    driver.feed(LOGIN)
    assert driver.protocol.state is State.HELLO
    assert driver.take() == ([], [], encode(Hello(2, "alice", "tok", HELLO_ID)))
    driver.feed(WELCOME, MESSAGE)
    protocol = driver.protocol
    assert protocol.state is State.OPEN and protocol.handshake_done
    assert (protocol.version, protocol.welcome) == (2, WELCOME)
    assert driver.take() == ([MESSAGE], [], b"")  # the welcome is not an event


def test_with_the_rooms_feature_the_handshake_ends_with_the_rooms_event(
    make: MakeDriver,
) -> None:
    driver = make(v2=True, name="alice")
    driver.feed(LOGIN)
    driver.take()
    welcome = Welcome(2, "s1", "alice", "tok", FEATURES, 30, HELLO_ID)
    driver.feed(welcome)
    protocol = driver.protocol
    assert protocol.state is State.HELLO and not protocol.handshake_done
    general = RoomListing("general", "talk")
    secret = RoomListing("secret", "", True, None, "owner")
    driver.feed(Rooms((general,)), RoomAdded(secret), MESSAGE)
    assert protocol.state is State.OPEN
    assert protocol.listing == {"general": general, "secret": secret}
    events, _, _ = driver.take()
    assert events == [RoomAdded(secret), MESSAGE]  # rooms is the handshake's own
    driver.feed(RoomRemoved("secret", "archived"))
    assert list(protocol.listing) == ["general"]
    assert driver.take()[0] == [RoomRemoved("secret", "archived")]


def test_community_commands_are_v2_only_and_exact(make: MakeDriver) -> None:
    v1 = make().feed(LOGIN)
    with pytest.raises(RuntimeError):
        v1.protocol.kick("general", "bob")
    driver = make(v2=True).feed(LOGIN, WELCOME)
    driver.take()
    protocol = driver.protocol
    protocol.create_room("games", "board games", private=True, id="c1")
    protocol.kick("games", "bob", why="rude")
    protocol.ban("bob", "games", seconds=60)
    protocol.mute("bob")
    protocol.open_dm("bob")
    protocol.set_role("games", "carol", "moderator")
    assert driver.take()[2] == (
        b'{"_ct":"create_room","r":"games","d":"board games","p":true,"id":"c1"}\r\n'
        b'{"_ct":"kick","r":"games","u":"bob","why":"rude"}\r\n'
        b'{"_ct":"ban","u":"bob","r":"games","s":60}\r\n'
        b'{"_ct":"mute","u":"bob"}\r\n'
        b'{"_ct":"open_dm","u":"bob"}\r\n'
        b'{"_ct":"set_role","r":"games","u":"carol","role":"moderator"}\r\n'
    )


def test_a_refused_hello_fails_the_session(make: MakeDriver) -> None:
    refusal = Error("name_taken", "taken", "hello", HELLO_ID)
    driver = make(v2=True, name="alice").feed(LOGIN, refusal, MESSAGE)
    protocol = driver.protocol
    assert protocol.state is State.FAILED and protocol.handshake_done
    assert isinstance(protocol.failure, HelloRefused)
    assert protocol.failure.error == refusal
    assert driver.take()[0] == []


def test_no_answer_to_hello_falls_back_to_v1(make: MakeDriver) -> None:
    driver = make(v2=True, name="alice").feed(LOGIN)
    driver.protocol.hello_timed_out()
    protocol = driver.protocol
    assert protocol.state is State.OPEN and protocol.version == 1
    driver.feed(MESSAGE)
    assert driver.take()[0] == [MESSAGE]
    # v1 commands drop v2's fields
    protocol.join("general", history=5, id="1")
    protocol.leave("general", id="2")
    protocol.send_message("general", "x", id="3")
    assert driver.take()[2] == b"".join(
        map(encode, [JoinRoom("general"), LeaveRoom("general"), SendMessage("general", "x")])
    )
    with pytest.raises(RuntimeError):
        protocol.ping("4")
    # A late welcome still switches to v2; a late refusal is just an event.
    late_refusal = Error("name_taken", "taken", "hello", HELLO_ID)
    driver.feed(WELCOME, late_refusal)
    assert protocol.version == 2 and protocol.state is State.OPEN
    assert driver.take()[0] == [late_refusal]


def test_hello_timed_out_after_the_welcome_changes_nothing(make: MakeDriver) -> None:
    driver = v2_session(make)
    driver.protocol.hello_timed_out()
    assert driver.protocol.state is State.OPEN and driver.protocol.version == 2


# -- what the protocol answers itself -------------------------------------------------------


@pytest.mark.parametrize("v2", [False, True])
def test_server_pings_are_answered_and_not_delivered(make: MakeDriver, v2: bool) -> None:
    driver = v2_session(make) if v2 else make().feed(LOGIN)
    driver.take()
    driver.feed(ServerPing(), MESSAGE, ServerPing())
    assert driver.take() == ([MESSAGE], [], encode(Pong()) * 2)


def test_pongs_are_correlated_with_pings(make: MakeDriver) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    protocol.ping("7")
    protocol.ping("8")
    assert driver.take()[2] == encode(Ping("7")) + encode(Ping("8"))
    protocol.cancel_pong("8")  # its waiter gave up: the pong is just an event
    driver.feed(ServerPong("7"), ServerPong("8"), ServerPong(HEARTBEAT_ID), ServerPong())
    assert driver.take() == ([ServerPong("8"), ServerPong()], [PongAnswered("7")], b"")
    driver.feed(ServerPong("7"))  # answered already
    assert driver.take()[0] == [ServerPong("7")]


# -- joins ------------------------------------------------------------------------------------


def test_a_v2_join_is_answered_by_its_history(make: MakeDriver) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    protocol.expect_join("general", "1")
    assert protocol.joining("general")
    protocol.join("general", history=2, id="1")
    assert driver.take()[2] == encode(JoinRoom("general", 2, None, "1"))
    joined = UserJoinedRoom("general", ("alice",))
    history = History("general", (HistoryMessage("bob", "m", 3, 1),), 3, False)
    driver.feed(joined)
    assert driver.take()[:2] == ([joined], [])  # the history is still to come
    driver.feed(MESSAGE, history)
    events, replies, _ = driver.take()
    assert events == [MESSAGE, history]
    assert replies == [JoinAnswered("general", JoinResult(joined, history))]
    assert not protocol.joining("general")


def test_without_history_the_join_is_answered_by_user_joined_room(make: MakeDriver) -> None:
    driver = make().feed(LOGIN)
    driver.protocol.expect_join("general", None)
    joined = UserJoinedRoom("general", ("rnd01",))
    driver.feed(UserJoinedRoom("other", ()), joined)
    assert driver.take()[1] == [JoinAnswered("general", JoinResult(joined, None))]


def test_a_v2_error_with_the_joins_id_refuses_it(make: MakeDriver) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    protocol.expect_join("nowhere", "1")
    protocol.expect_join("general", "2")
    other = Error("unknown_room", "no room", "join_room", "9")
    refusal = Error("unknown_room", "no room named 'nowhere'", "join_room", "1")
    driver.feed(other, refusal)
    events, replies, _ = driver.take()
    assert events == [other, refusal]  # errors are events as well
    assert replies == [JoinRefused("nowhere", refusal)]
    assert protocol.joining("general") and not protocol.joining("nowhere")


def test_one_join_of_a_room_at_a_time_and_cancelling(make: MakeDriver) -> None:
    driver = make().feed(LOGIN)
    protocol = driver.protocol
    protocol.expect_join("general", None)
    with pytest.raises(RuntimeError):
        protocol.expect_join("general", None)
    protocol.cancel_join("general")
    driver.feed(UserJoinedRoom("general", ()))
    assert driver.take()[1] == []


def test_eof_forgets_what_was_awaited(make: MakeDriver) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    protocol.expect_join("general", "1")
    protocol.ping("2")
    driver.feed(encode(MESSAGE)[:-5])  # an unterminated last line
    driver.take()
    protocol.receive_eof()
    assert protocol.state is State.CLOSED
    assert not protocol.joining("general")
    driver.feed(UserJoinedRoom("general", ()), ServerPong("2"), MESSAGE)
    assert driver.take() == ([], [], b"")


def test_commands_are_encoded_in_order(make: MakeDriver) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    protocol.join("general", after=4, id="1")
    protocol.send_message("general", "hello", id="2")
    protocol.send_message("general", "no id")
    protocol.leave("general", id="3")
    protocol.quit()
    expected = [
        JoinRoom("general", None, 4, "1"),
        SendMessage("general", "hello", "2"),
        SendMessage("general", "no id"),
        LeaveRoom("general", "3"),
        Quit(),
    ]
    assert driver.take()[2] == b"".join(map(encode, expected))
    assert protocol.data_to_send() == b""
    with pytest.raises(ValueError):
        protocol.join("general", history=1, after=1)


# -- the heartbeat watchdog -------------------------------------------------------------------


def test_the_watchdog_pings_after_one_silent_heartbeat_and_gives_up_after_two(
    make: MakeDriver,
) -> None:
    driver = v2_session(make)
    protocol = driver.protocol
    assert protocol.heartbeat_interval == 15  # half of the welcome's hb
    tick = protocol.heartbeat_tick
    assert tick(data_seen=False) is None
    assert driver.take()[2] == b""
    assert tick(data_seen=False) is None  # a heartbeat of silence: ask
    assert driver.take()[2] == encode(Ping(HEARTBEAT_ID))
    assert tick(data_seen=False) is None
    assert tick(data_seen=False) == "nothing from the server for 60 s"


def test_data_or_paused_reading_resets_the_watchdog(make: MakeDriver) -> None:
    protocol = v2_session(make).protocol
    outcomes = [
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False),  # (pings)
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=True),  # the server spoke: all is well
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False, reading_paused=True),  # we were not reading
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False),
        protocol.heartbeat_tick(data_seen=False),
    ]
    assert outcomes == [None] * len(outcomes)
    assert protocol.data_to_send() == encode(Ping(HEARTBEAT_ID)) * 3
    assert protocol.heartbeat_tick(data_seen=False) is not None


@pytest.mark.parametrize(
    "welcome",
    [
        Welcome(2, "s1", "alice", "tok", OLDER_FEATURES, 0, HELLO_ID),
        Welcome(2, "s1", "alice", "tok", ("errors", "names"), 30, HELLO_ID),
    ],
)
def test_no_watchdog_without_heartbeats(make: MakeDriver, welcome: Welcome) -> None:
    assert v2_session(make, welcome).protocol.heartbeat_interval is None
    assert make().feed(LOGIN).protocol.heartbeat_interval is None  # v1


# -- raw mode ---------------------------------------------------------------------------------


def test_raw_bytes_are_handed_over_right_after_the_login(make: MakeDriver) -> None:
    first = encode(MESSAGE)
    second = encode(UserMessage("general", "bob", "second", 2, 2000))
    driver = make(raw=True).feed(b"not json\r\n", LOGIN, first, second[:10])
    assert driver.protocol.raw_open
    assert driver.protocol.protocol_errors == 1  # the line before the login
    driver.feed(second[10:], ServerPing())
    assert bytes(driver.raw) == first + second + encode(ServerPing())
    assert driver.take() == ([], [], b"")  # nothing decoded after the hand-over


def test_in_v2_raw_bytes_are_handed_over_after_the_welcome(make: MakeDriver) -> None:
    driver = make(v2=True, raw=True).feed(LOGIN, ServerPing(), MESSAGE)
    assert not driver.protocol.raw_open and driver.raw == b""
    events, _, sent = driver.take()
    assert events == [MESSAGE]  # before the welcome, events are decoded
    assert sent == encode(Hello(2, None, None, HELLO_ID)) + encode(Pong())
    driver.feed(WELCOME, MESSAGE)
    assert driver.protocol.raw_open and driver.protocol.version == 2
    assert bytes(driver.raw) == encode(MESSAGE)
    assert driver.take()[0] == []


def test_in_raw_mode_a_hello_timeout_hands_over_what_follows(make: MakeDriver) -> None:
    driver = make(v2=True, raw=True).feed(LOGIN)
    driver.protocol.hello_timed_out()
    driver.feed(MESSAGE)
    assert bytes(driver.raw) == encode(MESSAGE)


def test_raw_mode_after_a_violation_hands_over_nothing(make: MakeDriver) -> None:
    driver = make(raw=True).feed(MESSAGE, LOGIN, MESSAGE)
    assert driver.protocol.state is State.FAILED
    assert not driver.protocol.raw_open and driver.raw == b""
