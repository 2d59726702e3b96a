"""Rooms at run time, private rooms, moderation and direct messages through the real
server (docs/moderation.md), on both buses (conftest.bus_url): every command over a
socket, the events each side sees, and each refusal's error code.

"Nothing else came" is checked with a barrier: a ``ping`` whose ``pong`` comes after
everything the server queued for the session before it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from roomchat import tokens
from roomchat.server import ChatServer, ServerConfig
from tests.helpers import raw_login, raw_socket, read_line, wait_eof

SECRET = b"0123456789abcdef0123456789abcdef"


def config(bus_url: str, **changes: Any) -> ServerConfig:
    base = ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url, user_rooms=True)
    return replace(base, **changes)


@pytest.fixture
async def server(bus_url: str, tmp_path: Any) -> AsyncIterator[ChatServer]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    srv = await ChatServer.start(
        config(bus_url, admins=("root",), auth_secret_file=secret, require_tokens=False)
    )
    try:
        yield srv
    finally:
        await srv.close()


#: Events an expected error may come after (the traffic of the rooms one is in).
_PASSING = ("room_participation", "user_message", "history", "user_joined_room")


class Peer:
    """One v2 (or v1) session over a raw socket, reading events as they come."""

    def __init__(self, sock: socket.socket, buffer: bytearray, user: str) -> None:
        self.sock, self.buffer, self.user = sock, buffer, user
        self.login: dict[str, Any] = {}
        self._pings = 0

    async def send(self, **command: Any) -> None:
        line = json.dumps(command).encode() + b"\n"
        await asyncio.get_running_loop().sock_sendall(self.sock, line)

    async def event(self) -> dict[str, Any]:
        line = await read_line(self.sock, self.buffer)
        assert line, f"{self.user}: connection closed"
        event: dict[str, Any] = json.loads(line)
        return event

    async def next(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next event of type ``kind`` with these fields (others are skipped)."""
        while True:
            event = await self.event()
            if event["_et"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def error(self, code: str) -> dict[str, Any]:
        """The next event, which must be an error with ``code``."""
        while True:
            event = await self.event()
            if event["_et"] in (
                "room_participation",
                "user_message",
                "history",
                "user_joined_room",
                "message_edited",
                "message_deleted",
                "typing",
            ):
                continue
            assert event["_et"] == "error", event
            assert event["code"] == code, event
            return event

    async def drain(self) -> list[dict[str, Any]]:
        """Every event queued before a barrier (a ping's pong)."""
        self._pings += 1
        ident = f"barrier{self._pings}"
        await self.send(_ct="ping", id=ident)
        events = []
        while True:
            event = await self.event()
            if event["_et"] == "pong" and event.get("id") == ident:
                return events
            events.append(event)

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        await self.send(_ct="join_room", r=room, **extra)
        return await self.next("user_joined_room", r=room)

    async def say(self, room: str, content: str) -> None:
        await self.send(_ct="send_message", r=room, c=content)

    def close(self) -> None:
        self.sock.close()


async def peer(server: ChatServer, name: str | None = None, *, proven: bool = False) -> Peer:
    sock, buffer, user = await raw_login(server)
    conn = Peer(sock, buffer, user)
    if name is None:
        return conn  # v1
    hello: dict[str, Any] = {"_ct": "hello", "v": 2, "name": name}
    if proven:
        hello["token"] = tokens.mint(SECRET, name, int(time.time()) + 600)
    await conn.send(**hello)
    welcome = await conn.event()
    assert welcome["_et"] == "welcome", welcome
    assert {"rooms", "moderation", "direct_messages"} <= set(welcome["f"])
    conn.user = welcome["u"]
    rooms = await conn.event()
    assert rooms["_et"] == "rooms", rooms
    conn.login = rooms
    return conn


def names_of(rooms: list[dict[str, Any]]) -> list[str]:
    return [room["n"] for room in rooms]


# -- rooms at run time -------------------------------------------------------------------


async def test_v2_login_lists_the_rooms_and_a_created_room_reaches_everyone(
    server: ChatServer,
) -> None:
    alice, bob = await peer(server, "alice"), await peer(server, "bob")
    assert names_of(alice.login["rs"]) == [d.name for d in server.rooms.details]
    await alice.send(_ct="create_room", r="games", d="board games")
    for conn in (alice, bob):
        added = await conn.next("room_added")
        expected = {"n": "games", "d": "board games"}
        assert added["rm"] == ({**expected, "role": "owner"} if conn is alice else expected)
    # A v1 session logging in later is told of it, and can join it.
    sock = await raw_socket(server)
    v1 = Peer(sock, bytearray(), "")
    login = json.loads(await read_line(v1.sock, v1.buffer))
    assert login["_et"] == "login_successful"
    assert login["rs"][-1] == {"n": "games", "d": "board games"}
    v1.user = login["u"]
    await v1.send(_ct="join_room", r="games")
    line = await read_line(v1.sock, v1.buffer)
    assert json.loads(line) == {"_et": "user_joined_room", "r": "games", "us": [v1.user]}


async def test_v1_joins_a_room_created_after_its_login(server: ChatServer) -> None:
    v1 = await peer(server)
    alice = await peer(server, "alice")
    await alice.send(_ct="create_room", r="late", d="")
    await alice.next("room_added")
    await v1.send(_ct="join_room", r="late")
    joined = json.loads(await read_line(v1.sock, v1.buffer))
    assert joined["_et"] == "user_joined_room" and joined["r"] == "late"


async def test_room_name_rules(server: ChatServer) -> None:
    alice = await peer(server, "alice")
    for bad in ("", "has space", "dm:alice+bob", "x" * 33, "-dash", "é"):
        await alice.send(_ct="create_room", r=bad)
        error = await alice.error("room_invalid")
        assert error["cmd"] == "create_room"
    await alice.send(_ct="create_room", r="Chess")
    await alice.next("room_added")
    await alice.send(_ct="create_room", r="chess", id="c2")
    error = await alice.error("room_exists")
    assert error["id"] == "c2"
    first = server.rooms.details[0].name
    await alice.send(_ct="create_room", r=first.upper())
    await alice.error("room_exists")


async def test_creating_rooms_can_be_for_admins_only(bus_url: str, tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    srv = await ChatServer.start(
        config(
            bus_url,
            user_rooms=False,
            admins=("root",),
            auth_secret_file=secret,
            require_tokens=False,
        )
    )
    try:
        alice = await peer(srv, "alice")
        await alice.send(_ct="create_room", r="mine")
        await alice.error("not_authorised")
        root = await peer(srv, "root", proven=True)
        await root.send(_ct="create_room", r="official", d="news")
        await root.next("room_added")
        assert (await alice.next("room_added"))["rm"]["n"] == "official"
        # The name "root" without its token is no admin.
        fake = await peer(srv, "Root2")
        await fake.send(_ct="create_room", r="fake")
        await fake.error("not_authorised")
    finally:
        await srv.close()


# -- private rooms -----------------------------------------------------------------------


async def test_private_room_is_hidden_and_closed_until_an_invitation(server: ChatServer) -> None:
    alice, bob = await peer(server, "alice"), await peer(server, "bob")
    v1 = await peer(server)
    await alice.send(_ct="create_room", r="secret", d="shh", p=True)
    added = await alice.next("room_added")
    assert added["rm"] == {"n": "secret", "d": "shh", "p": True, "role": "owner"}
    assert not [e for e in await bob.drain() if e["_et"] == "room_added"]
    # Neither listed nor joinable for others.
    carol = await peer(server, "carol")
    assert "secret" not in names_of(carol.login["rs"])
    await bob.send(_ct="join_room", r="secret")
    await bob.error("not_authorised")
    await v1.send(_ct="join_room", r="secret")  # v1: ignored, as an unknown room
    late = await peer(server)
    assert "secret" not in [d.name for d in server.rooms.details]
    late.close()
    # Invited: told, listed, joinable.
    await alice.join("secret")
    await alice.send(_ct="invite", r="secret", u="bob")
    invited = await bob.next("room_added")
    assert invited["rm"]["n"] == "secret"
    await bob.join("secret")
    await alice.say("secret", "welcome bob")
    message = await bob.next("user_message")
    assert message["c"] == "welcome bob"
    # The v1 session got nothing at all for its join of the private room.
    await v1.send(_ct="join_room", r=server.rooms.details[0].name)
    joined = json.loads(await read_line(v1.sock, v1.buffer))
    assert joined["_et"] == "user_joined_room" and joined["r"] == server.rooms.details[0].name


# -- moderation --------------------------------------------------------------------------


async def room_with(server: ChatServer, room: str = "club") -> tuple[Peer, Peer, Peer]:
    """alice owns ``room``; bob and carol are in it."""
    alice, bob, carol = [await peer(server, n) for n in ("alice", "bob", "carol")]
    await alice.send(_ct="create_room", r=room)
    await alice.next("room_added")
    for conn in (alice, bob, carol):
        await conn.join(room)
    return alice, bob, carol


async def test_kick_removes_the_user_who_is_told_why_and_others_see_left(
    server: ChatServer,
) -> None:
    alice, bob, carol = await room_with(server)
    await alice.send(_ct="kick", r="club", u="bob", why="be nice")
    for conn in (alice, bob, carol):
        event = await conn.next("moderation")
        assert (event["r"], event["by"], event["what"], event["u"], event["why"]) == (
            "club",
            "alice",
            "kick",
            "bob",
            "be nice",
        )
    left = await carol.next("room_participation", s="left")
    assert left["u"] == "bob"
    await bob.say("club", "still here?")
    await bob.error("not_member")
    await bob.join("club")  # a kick is not a ban


async def test_ban_refuses_joins_until_lifted_and_is_timed(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await alice.send(_ct="ban", r="club", u="bob", s=3600, why="spam")
    event = await bob.next("moderation", what="ban")
    assert event["until"] > time.time() * 1000
    await carol.next("room_participation", s="left", u="bob")
    await bob.send(_ct="join_room", r="club")
    error = await bob.error("banned")
    assert "banned" in error["msg"]
    await alice.send(_ct="unban", r="club", u="bob")
    await alice.next("moderation", what="unban")
    await bob.join("club")


async def test_mute_lets_read_but_not_send(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await alice.send(_ct="mute", r="club", u="bob", why="cool down")
    assert (await bob.next("moderation", what="mute"))["why"] == "cool down"
    await carol.drain()
    await bob.say("club", "hello?")
    await bob.error("muted")
    await alice.say("club", "you can read this")
    assert (await bob.next("user_message"))["c"] == "you can read this"
    assert not [e for e in await carol.drain() if e.get("c") == "hello?"]
    await alice.send(_ct="unmute", r="club", u="bob")
    await bob.next("moderation", what="unmute")
    await bob.say("club", "back")
    assert (await carol.next("user_message"))["c"] == "back"


async def test_slow_mode(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await alice.send(_ct="slow_mode", r="club", s=60)
    assert (await bob.next("moderation", what="slow_mode"))["s"] == 60
    await bob.say("club", "one")
    await bob.say("club", "two")
    error = await bob.error("slow_mode")
    assert "wait" in error["msg"]
    events = await carol.drain()
    assert [e["c"] for e in events if e["_et"] == "user_message"] == ["one"]
    await alice.send(_ct="slow_mode", r="club", s=0)
    await bob.next("moderation", what="slow_mode")
    await bob.say("club", "three")
    await bob.say("club", "four")
    assert (await carol.next("user_message"))["c"] == "three"
    assert (await carol.next("user_message"))["c"] == "four"


async def test_refusals_of_moderation(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await bob.send(_ct="kick", r="club", u="carol", id="k1")
    error = await bob.error("not_authorised")
    assert error["id"] == "k1" and error["cmd"] == "kick"
    await alice.send(_ct="kick", r="club", u="not a name")
    await alice.error("bad_command")
    await alice.send(_ct="ban", r="club", u="alice")
    await alice.error("bad_command")
    await alice.send(_ct="kick", r="nowhere", u="bob")
    await alice.error("unknown_room")
    # A moderator cannot act on the owner; only owners give roles.
    await alice.send(_ct="set_role", r="club", u="bob", role="moderator")
    assert (await carol.next("moderation", what="role"))["role"] == "moderator"
    await bob.next("moderation", what="role")
    await bob.send(_ct="ban", r="club", u="alice")
    await bob.error("not_authorised")
    await bob.send(_ct="set_role", r="club", u="carol", role="owner")
    await bob.error("not_authorised")
    await bob.send(_ct="mute", r="club", u="carol")
    await carol.next("moderation", what="mute")
    # The last owner cannot be demoted, even by an admin; a server ban needs an admin.
    root = await peer(server, "root", proven=True)
    await root.send(_ct="set_role", r="club", u="alice", role="member")
    await root.error("bad_command")
    await alice.drain()
    await alice.send(_ct="ban", u="carol")
    await alice.error("not_authorised")
    # Moderation commands v1 ignores entirely.
    await carol.drain()
    v1 = await peer(server)
    await v1.send(_ct="kick", r="club", u="bob")
    assert not [e for e in await carol.drain() if e["_et"] == "moderation"]
    v1.close()


async def test_audit_log_records_each_action_for_moderators_only(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await alice.send(_ct="mute", r="club", u="bob", s=60, why="noise")
    await alice.send(_ct="kick", r="club", u="carol")
    await carol.next("moderation", what="kick")
    await alice.send(_ct="audit_log", r="club", id="a1")
    audit = await alice.next("audit")
    assert audit["id"] == "a1" and audit["r"] == "club"
    entries = [(e["by"], e["what"], e.get("u"), e.get("why")) for e in audit["es"]]
    assert entries == [
        ("alice", "create", None, None),
        ("alice", "mute", "bob", "noise"),
        ("alice", "kick", "carol", None),
    ]
    assert all(isinstance(e["ts"], int) for e in audit["es"])
    await bob.drain()
    await bob.send(_ct="audit_log", r="club")
    await bob.error("not_authorised")


async def test_archive_removes_everyone_and_refuses_joins(server: ChatServer) -> None:
    alice, bob, carol = await room_with(server)
    await bob.send(_ct="archive_room", r="club")
    await bob.error("not_authorised")
    await alice.send(_ct="archive_room", r="club", why="season over")
    for conn in (bob, carol):
        removed = await conn.next("room_removed")
        assert removed == {"_et": "room_removed", "r": "club", "why": "season over"}
    await bob.send(_ct="join_room", r="club")
    await bob.error("archived")
    later = await peer(server, "dave")
    assert "club" not in names_of(later.login["rs"])
    assert "club" not in [d.name for d in server.rooms.details]


async def test_server_wide_ban_disconnects_and_refuses_the_name(server: ChatServer) -> None:
    root = await peer(server, "root", proven=True)
    bob = await peer(server, "bob")
    await root.send(_ct="ban", u="bob", why="abuse")
    error = await bob.error("banned")
    assert error["msg"] == "abuse"
    await wait_eof(bob.sock)
    sock, buffer, _ = await raw_login(server)
    again = Peer(sock, buffer, "")
    await again.send(_ct="hello", v=2, name="bob")
    await again.error("banned")
    await root.send(_ct="unban", u="bob")
    await root.next("moderation", what="unban")
    back = await peer(server, "bob")
    back.close()


# -- direct messages ---------------------------------------------------------------------


async def dm_got(conn: Peer, room: str, content: str) -> None:
    """A direct message's receiver, opening it, gets ``content``: in the history of its
    join, or live just after it (which of the two depends on the bus's timing)."""
    history = await conn.next("history", r=room)
    if content in [message["c"] for message in history["ms"]]:
        return
    assert (await conn.next("user_message", r=room))["c"] == content


async def test_direct_message_reaches_the_receiver_with_its_first_message(
    server: ChatServer,
) -> None:
    alice, bob = await peer(server, "alice"), await peer(server, "Bob")
    await alice.send(_ct="open_dm", u="bob")
    added = await alice.next("room_added")
    room = added["rm"]["n"]
    assert room == "dm:alice+bob" and added["rm"]["dm"] == "bob" and added["rm"]["p"]
    await alice.next("user_joined_room", r=room)
    assert not [e for e in await bob.drain() if e["_et"] == "room_added"]
    await alice.say(room, "psst")
    told = await bob.next("room_added")
    assert told["rm"]["dm"] == "alice"
    await bob.next("user_joined_room", r=room)
    await dm_got(bob, room, "psst")
    await bob.say(room, "hi alice")
    await alice.next("user_message", c="hi alice")
    # A third user can neither join it nor see it.
    carol = await peer(server, "carol")
    assert room not in names_of(carol.login["rs"])
    await carol.send(_ct="join_room", r=room)
    await carol.error("not_authorised")
    # Reconnecting, the DM is listed and joined again.
    bob.close()
    bob2 = await peer(server, "bob")
    assert room in names_of(bob2.login["rs"])
    await bob2.next("user_joined_room", r=room)
    # Closed on one side: left, gone from its list; the next message reopens it.
    await bob2.send(_ct="close_dm", u="alice")
    assert (await bob2.next("room_removed"))["r"] == room
    await alice.next("room_participation", s="left")
    await alice.say(room, "come back")
    await bob2.next("room_added")
    await dm_got(bob2, room, "come back")


async def test_direct_message_refusals(server: ChatServer) -> None:
    alice = await peer(server, "alice")
    await alice.send(_ct="open_dm", u="alice")
    await alice.error("bad_command")
    await alice.send(_ct="open_dm", u="no such name")
    await alice.error("bad_command")
    await alice.send(_ct="close_dm", u="bob")
    await alice.error("bad_command")


async def test_v1_bytes_stay_exact_beside_moderation(server: ChatServer) -> None:
    """A v1 session in a moderated room sees the v1 lines it always saw (joined, left,
    messages), byte for byte, and nothing of the community's events."""
    alice, _, _ = await room_with(server)
    sock = await raw_socket(server)
    v1 = Peer(sock, bytearray(), "")
    login = json.loads(await read_line(v1.sock, v1.buffer))
    v1.user = login["u"]
    await v1.send(_ct="join_room", r="club")
    joined = await read_line(v1.sock, v1.buffer)
    assert joined.startswith(b'{"_et":"user_joined_room","r":"club","us":[')
    await alice.send(_ct="mute", r="club", u="bob")
    await alice.send(_ct="kick", r="club", u="carol", why="x")
    await alice.send(_ct="invite", r="club", u="dave")
    await alice.say("club", "after")
    lines = []
    while not lines or b"after" not in lines[-1]:
        lines.append(await read_line(v1.sock, v1.buffer))
    own = b'{"_et":"room_participation","r":"club","u":"%s","s":"joined"}' % v1.user.encode()
    assert lines == [
        own,
        b'{"_et":"room_participation","r":"club","u":"carol","s":"left"}',
        b'{"_et":"user_message","r":"club","u":"alice","c":"after"}',
    ]
