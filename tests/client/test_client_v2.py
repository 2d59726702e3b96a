"""The client library speaking v2 (against a fake v2 server, tests/fake_v2.py) and
falling back to v1 (against the fake with its v2 turned off, which ignores hello as
rust-chat-server does). The real server's v2 is tests/server/test_server_v2.py's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roomchat.client import (
    ClientEvent,
    CommandError,
    ConnectionClosed,
    Disconnected,
    HelloRefused,
    MissedMessages,
    Reconnected,
    ReconnectingClient,
    connect,
)
from roomchat.protocol import (
    FEATURES,
    Error,
    Hello,
    History,
    HistoryMessage,
    JoinRoom,
    Pong,
    RoomParticipation,
    ServerPing,
    Shutdown,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from tests.fake_v2 import TS, FakeV2Server
from tests.helpers import TIMEOUT, joined, messages

# --- one connection ------------------------------------------------------------------


async def test_hello_and_welcome() -> None:
    async with FakeV2Server() as server:
        client = await connect("127.0.0.1", server.port, v2=True, name="alice", timeout=TIMEOUT)
        assert client.version == 2
        assert client.user_id == "alice"
        assert client.token == "tok-alice"
        assert client.features == frozenset(FEATURES)
        assert client.login.user_id == "rnd01"  # v1's login still came first
        session = server.all_sessions[0]
        assert session.raw[0] == b'{"_ct":"hello","v":2,"name":"alice","id":"hello"}\r\n'
        client.close()


async def test_anonymous_v2_keeps_the_random_id() -> None:
    async with FakeV2Server() as server:
        client = await connect("127.0.0.1", server.port, v2=True, timeout=TIMEOUT)
        assert (client.version, client.user_id, client.token) == (2, "rnd01", "tok-rnd01")
        assert server.hellos() == [Hello(2, None, None, "hello")]
        client.close()


async def test_refused_hello_raises() -> None:
    async with FakeV2Server() as server:
        server.refuse["alice"] = "name_taken"
        with pytest.raises(HelloRefused) as refused:
            await connect("127.0.0.1", server.port, v2=True, name="alice", timeout=TIMEOUT)
        assert refused.value.error == Error("name_taken", "refused", "hello", "hello")


async def test_name_needs_v2() -> None:
    with pytest.raises(ValueError):
        await connect("127.0.0.1", 1, name="alice")


async def test_join_and_wait_returns_the_reply_and_the_history() -> None:
    async with FakeV2Server() as server:
        for n in range(3):
            server.post("general", "bob", f"m{n}")
        client = await connect("127.0.0.1", server.port, v2=True, name="alice", timeout=TIMEOUT)
        result = await client.join_and_wait("general", history=2, timeout=TIMEOUT)
        assert result.joined == UserJoinedRoom("general", ("alice",))
        assert result.history == History(
            "general",
            (HistoryMessage("bob", "m1", 2, TS + 2), HistoryMessage("bob", "m2", 3, TS + 3)),
            3,
            False,
        )
        assert server.joins() == [JoinRoom("general", 2, None, "1")]
        # ... and the events are in the stream as well, in the documented order
        assert await client.next_event(TIMEOUT) == result.joined
        assert await client.next_event(TIMEOUT) == result.history
        own = await client.next_event(TIMEOUT)
        assert own == RoomParticipation("general", "alice", "joined", TS)
        await client.send("general", "hi")
        assert await client.next_event(TIMEOUT) == UserMessage("general", "alice", "hi", 4, TS + 4)
        client.close()


async def test_a_refused_join_raises_and_the_error_is_an_event() -> None:
    async with FakeV2Server() as server:
        client = await connect("127.0.0.1", server.port, v2=True, timeout=TIMEOUT)
        with pytest.raises(CommandError) as refused:
            await client.join_and_wait("nowhere", timeout=TIMEOUT)
        error = Error("unknown_room", "no room named 'nowhere'", "join_room", "1")
        assert refused.value.error == error
        assert await client.next_event(TIMEOUT) == error
        client.close()


async def test_server_pings_are_answered_and_not_delivered() -> None:
    async with FakeV2Server() as server:
        client = await connect("127.0.0.1", server.port, v2=True, timeout=TIMEOUT)
        session = server.sessions[0]
        session.writer.write(encode(ServerPing()) + encode(Shutdown(10, "bye")))
        assert await client.next_event(TIMEOUT) == Shutdown(10, "bye")
        async with asyncio.timeout(TIMEOUT):
            while Pong() not in session.commands:
                await asyncio.sleep(0.01)
        client.close()


async def test_ping_measures_the_round_trip() -> None:
    async with FakeV2Server() as server:
        client = await connect("127.0.0.1", server.port, v2=True, timeout=TIMEOUT)
        rtt = await client.ping(TIMEOUT)
        assert 0 <= rtt < TIMEOUT
        client.close()


async def test_a_silent_server_is_given_up_after_two_heartbeats() -> None:
    async with FakeV2Server(heartbeat=1) as server:
        server.answer_pings = False
        client = await connect("127.0.0.1", server.port, v2=True, timeout=TIMEOUT)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert 1.5 <= loop.time() - started <= 3.5
        assert client.close_reason == "nothing from the server for 2 s"
        # it asked before giving up
        assert any(b'"_ct":"ping"' in line for line in server.all_sessions[0].raw)


async def test_a_late_welcome_still_upgrades_the_client() -> None:
    async with FakeV2Server() as server:
        server.welcome_delay = 0.3
        client = await connect(
            "127.0.0.1", server.port, v2=True, name="slow", hello_timeout=0.05, timeout=TIMEOUT
        )
        assert client.version == 1
        async with asyncio.timeout(TIMEOUT):
            while client.version == 1:
                await asyncio.sleep(0.01)
        assert client.user_id == "slow"
        client.close()


async def test_a_v1_client_of_a_v2_server_sees_v1_only() -> None:
    async with FakeV2Server() as server:
        v1 = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        v2 = await connect("127.0.0.1", server.port, v2=True, name="alice", timeout=TIMEOUT)
        await v1.join("general")
        await v2.join("general")
        await v2.send("general", "hi")
        seen = [await v1.next_event(TIMEOUT) for _ in range(4)]
        assert seen == [
            UserJoinedRoom("general", ("rnd01",)),
            RoomParticipation("general", "rnd01", "joined"),
            RoomParticipation("general", "alice", "joined"),
            UserMessage("general", "alice", "hi"),
        ]
        v1.close()
        v2.close()


# --- falling back to v1 against a server without v2 ---------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[FakeV2Server]:
    """A server that ignores hello (v1 only)."""
    async with FakeV2Server() as fake:
        fake.speaks_v2 = False
        yield fake


async def test_fallback_to_v1_against_a_server_without_v2(server: FakeV2Server) -> None:
    client = await connect(
        "127.0.0.1", server.port, v2=True, name="alice", hello_timeout=0.2, timeout=TIMEOUT
    )
    assert client.version == 1
    assert client.user_id == client.login.user_id != "alice"
    assert client.token is None
    assert client.features == frozenset()
    await joined(client, "general")
    await client.send("general", "still v1", id="ignored")
    [message] = await messages(client, 1)
    assert message == UserMessage("general", client.user_id, "still v1")
    result = await client.join_and_wait("other", history=5, timeout=TIMEOUT)
    assert result.history is None
    assert result.joined.room == "other"
    with pytest.raises(RuntimeError):
        await client.ping()
    client.close()


async def test_reconnecting_client_falls_back_to_v1(server: FakeV2Server) -> None:
    async with ReconnectingClient("127.0.0.1", server.port, hello_timeout=0.2) as rc:
        assert rc.version == 1
        await rc.join("general")
        await rc.send("general", "v1")
        events = [await rc.next_event(TIMEOUT) for _ in range(3)]
        assert events[2] == UserMessage("general", rc.user_id or "", "v1")


# --- reconnecting with catch-up ------------------------------------------------------------


async def _until(rc: ReconnectingClient, kind: type, count: int = 1) -> list[ClientEvent]:
    """Events up to and including the ``count``-th of type ``kind``."""
    out: list[ClientEvent] = []
    while sum(isinstance(e, kind) for e in out) < count:
        out.append(await rc.next_event(TIMEOUT))
    return out


def _contents(events: list[ClientEvent]) -> list[tuple[int | None, str]]:
    return [(e.seq, e.content) for e in events if isinstance(e, UserMessage)]


async def test_reconnect_catches_up_on_what_was_missed() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, name="alice", backoff_initial=0.05) as rc,
    ):
        for n in (1, 2, 3):
            server.post("general", "bob", f"m{n}")
        await rc.join("general", history=2)
        assert _contents(await _until(rc, RoomParticipation)) == [(2, "m2"), (3, "m3")]
        server.post("general", "bob", "m4")
        assert _contents(await _until(rc, UserMessage)) == [(4, "m4")]

        server.drop_all()
        server.post("general", "bob", "m5")  # nobody is there to get these live
        server.post("general", "bob", "m6")
        events = await _until(rc, RoomParticipation)
        assert isinstance(events[0], Disconnected)
        assert events[1] == Reconnected(2, "alice")
        assert events[2] == UserJoinedRoom("general", ("alice",))
        assert _contents(events) == [(5, "m5"), (6, "m6")]
        assert rc.reconnects == 1
        # hello with the name and the token of the last welcome; join with after
        assert server.hellos()[-1] == Hello(2, "alice", "tok-alice", "hello")
        assert server.joins()[-1] == JoinRoom("general", after=4, id="1")

        server.post("general", "bob", "m7")
        assert _contents(await _until(rc, UserMessage)) == [(7, "m7")]
        assert rc.last_seq == {"general": 7}


async def test_messages_already_delivered_are_skipped() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, backoff_initial=0.05) as rc,
    ):
        server.ignore_after = True  # the history repeats what the client has
        await rc.join("general")
        await _until(rc, RoomParticipation)
        server.post("general", "bob", "m1")
        server.post("general", "bob", "m2")
        await _until(rc, UserMessage, 2)
        server.drop_all()
        server.post("general", "bob", "m3")
        events = await _until(rc, RoomParticipation)
        assert _contents(events) == [(3, "m3")]
        # an anonymous user keeps its random id across reconnects
        assert server.hellos()[-1] == Hello(2, "rnd01", "tok-rnd01", "hello")


async def test_a_gap_is_reported() -> None:
    async with (
        FakeV2Server(history_limit=2) as server,
        ReconnectingClient("127.0.0.1", server.port, backoff_initial=0.05) as rc,
    ):
        await rc.join("general")
        await _until(rc, RoomParticipation)
        server.post("general", "bob", "m1")
        await _until(rc, UserMessage)
        server.drop_all()
        for n in (2, 3, 4, 5):
            server.post("general", "bob", f"m{n}")
        events = await _until(rc, RoomParticipation)
        assert MissedMessages("general", 1) in events
        assert _contents(events) == [(4, "m4"), (5, "m5")]


async def test_a_shutdown_notice_sets_the_reconnect_delay() -> None:
    async with FakeV2Server() as server, ReconnectingClient("127.0.0.1", server.port) as rc:
        session = server.sessions[0]
        session.writer.write(encode(Shutdown(200, "server restarting")))
        await session.writer.drain()
        server.drop_all()
        assert await rc.next_event(TIMEOUT) == Shutdown(200, "server restarting")
        disconnected = await rc.next_event(TIMEOUT)
        assert isinstance(disconnected, Disconnected)
        assert 0.2 <= disconnected.retry_in <= 0.3
        assert isinstance(await rc.next_event(TIMEOUT), Reconnected)


async def test_reconnecting_to_a_server_without_v2_reports_the_loss() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, backoff_initial=0.05, hello_timeout=0.2) as rc,
    ):
        await rc.join("general")
        await _until(rc, RoomParticipation)
        server.speaks_v2 = False
        server.drop_all()
        events = await _until(rc, RoomParticipation)
        assert Reconnected(1, "rnd02") in events
        assert MissedMessages("general", 0) in events


async def test_a_name_taken_meanwhile_ends_reconnecting() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, name="alice", backoff_initial=0.05) as rc,
    ):
        server.refuse["alice"] = "name_taken"
        server.drop_all()
        assert isinstance(await rc.next_event(TIMEOUT), Disconnected)
        with pytest.raises(HelloRefused):
            await rc.next_event(TIMEOUT)
        with pytest.raises(ConnectionClosed):
            await rc.send("general", "no")


async def test_a_restarted_count_is_a_gap_and_everything_is_new() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, backoff_initial=0.05) as rc,
    ):
        await rc.join("general")
        await _until(rc, RoomParticipation)
        for n in (1, 2, 3):
            server.post("general", "bob", f"m{n}")
        await _until(rc, UserMessage, 3)
        server.drop_all()
        server.log["general"].clear()  # the server lost the room's history
        server.post("general", "carol", "new")
        events = await _until(rc, RoomParticipation)
        assert MissedMessages("general", 3) in events
        assert _contents(events) == [(1, "new")]
        server.post("general", "carol", "next")
        assert _contents(await _until(rc, UserMessage)) == [(2, "next")]


async def test_a_room_that_does_not_exist_is_not_joined_again() -> None:
    async with (
        FakeV2Server() as server,
        ReconnectingClient("127.0.0.1", server.port, backoff_initial=0.05) as rc,
    ):
        await rc.join("nowhere")
        error = await rc.next_event(TIMEOUT)
        assert isinstance(error, Error) and error.code == "unknown_room"
        assert rc.rooms == {}
