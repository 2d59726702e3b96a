"""scripts.py: each Lua script run with EVALSHA on a real redis-server, checking the
keys it writes and what it publishes on the room's channel (read on another connection).

"Nothing published" is checked deterministically: the test publishes a sentinel on the
same channel after the script's reply, and the next message must be that sentinel
(Redis delivers one channel's messages in the order it ran the commands).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from roomchat.protocol import joined_event, left_event, name_key
from roomchat.server.bus.redis.commands import REGISTRY_PREFIX, RoomKeys
from roomchat.server.bus.redis.nodes import load_scripts
from roomchat.server.bus.redis.resp import RespConnection, command, open_connection
from tests.helpers import TIMEOUT
from tests.redis_servers import HOST, RedisServer

ROOM = "general"
SENTINEL = b"-- sentinel --"


def _ignore_lost(connection: RespConnection, exc: Exception | None) -> None:
    pass


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    srv = RedisServer.launch()
    try:
        yield srv
    finally:
        srv.close(kill=True)


class Redis:
    """A command connection with the scripts loaded, and the room's channel read on a
    subscriber connection."""

    def __init__(
        self,
        cmd: RespConnection,
        sub: RespConnection,
        shas: dict[str, bytes],
        pushes: asyncio.Queue[list[Any]],
    ) -> None:
        self.cmd, self.sub, self.shas, self.pushes = cmd, sub, shas, pushes
        self.keys = RoomKeys(ROOM)

    async def run(self, name: str, keys: tuple[bytes, ...], *args: bytes | str | int) -> Any:
        return await self.cmd.call("EVALSHA", self.shas[name], len(keys), *keys, *args)

    async def room(self, name: str, *args: bytes | str | int) -> Any:
        """A presence script (JOIN, LEAVE, ASSERT) on the room's keys."""
        return await self.run(name, self.keys.script_keys, *args)

    async def post_reply(self, history: int, count: int, ts: int, lines: bytes) -> Any:
        """POST's whole reply: [first number, epoch] or [first, epoch, the stream's error]."""
        return await self.run(
            "post", self.keys.post_keys, history, "PUBLISH", "i1-", count, ts, lines
        )

    async def post(self, history: int, count: int, ts: int, lines: bytes) -> Any:
        """POST's number (and the stream's error, if any), without the epoch."""
        reply = await self.post_reply(history, count, ts, lines)
        return reply[0] if len(reply) == 2 else [reply[0], reply[2]]

    async def published(self) -> bytes:
        """The next message on the room's channel."""
        async with asyncio.timeout(TIMEOUT):
            kind, channel, payload = await self.pushes.get()
        assert (kind, channel) == (b"message", self.keys.channel)
        return bytes(payload)

    async def nothing_more(self) -> None:
        """Nothing was published since the last message read."""
        await self.cmd.call("PUBLISH", self.keys.channel, SENTINEL)
        assert await self.published() == SENTINEL

    async def hash(self, key: bytes) -> dict[bytes, bytes]:
        flat = await self.cmd.call("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def get(self, key: bytes) -> Any:
        return await self.cmd.call("GET", key)


@pytest.fixture
async def r(redis: RedisServer) -> AsyncIterator[Redis]:
    redis.command("FLUSHALL")
    cmd = await open_connection(HOST, redis.port, _ignore_lost)
    shas = await load_scripts(cmd)
    pushes: asyncio.Queue[list[Any]] = asyncio.Queue()
    sub = await open_connection(HOST, redis.port, _ignore_lost, pushes.put_nowait)
    state = Redis(cmd, sub, shas, pushes)
    sub.subscribe_write(command("SUBSCRIBE", state.keys.channel))
    async with asyncio.timeout(TIMEOUT):
        assert await state.pushes.get() == [b"subscribe", state.keys.channel, 1]
    try:
        yield state
    finally:
        cmd.close()
        sub.close()


JOINED = {user: joined_event(ROOM, user) for user in ("alice", "bob", "carol")}
LEFT = {user: left_event(ROOM, user) for user in ("alice", "bob", "carol")}


async def join_reply(
    r: Redis,
    session: str,
    user: str,
    instance: str = "i1",
    mode: bytes = b"",
    count: int = 0,
    after: int = 0,
) -> Any:
    """JOIN's whole reply: users, latest number, entries, epoch, changes."""
    return await r.room(
        "join",
        session,
        instance,
        user,
        "PUBLISH",
        JOINED[user],
        LEFT[user],
        mode,
        count,
        after,
        instance + "-",
    )


async def join(
    r: Redis,
    session: str,
    user: str,
    instance: str = "i1",
    mode: bytes = b"",
    count: int = 0,
    after: int = 0,
) -> Any:
    """JOIN's users, latest number and entries."""
    return (await join_reply(r, session, user, instance, mode, count, after))[:3]


# -- JOIN --------------------------------------------------------------------------------


async def test_join_first_session_announces(r: Redis) -> None:
    assert await join(r, "s1", "alice") == [[b"alice"], 0, []]
    assert await r.published() == b"Js1\n" + JOINED["alice"]
    assert await r.hash(r.keys.sessions) == {b"s1": b"i1\nalice"}
    assert await r.hash(r.keys.users) == {b"alice": b"1"}
    assert await r.cmd.call("ZRANGE", r.keys.order, 0, -1, "WITHSCORES") == [b"alice", b"1"]
    assert await r.get(r.keys.arrivals) == b"1"
    assert await r.hash(r.keys.left) == {b"alice": LEFT["alice"]}
    await r.nothing_more()


async def test_join_second_session_does_not_announce(r: Redis) -> None:
    await join(r, "s1", "alice")
    await r.published()
    # Another session of the same user, on another instance: a marker, no "joined".
    assert await join(r, "s2", "alice", instance="i2") == [[b"alice"], 0, []]
    assert await r.published() == b"Js2\n"
    assert await r.hash(r.keys.sessions) == {b"s1": b"i1\nalice", b"s2": b"i2\nalice"}
    assert await r.hash(r.keys.users) == {b"alice": b"2"}
    assert await r.get(r.keys.arrivals) == b"1"
    await r.nothing_more()


async def test_join_lists_users_in_arrival_order(r: Redis) -> None:
    await join(r, "s1", "bob")
    await join(r, "s2", "alice")
    await join(r, "s3", "bob")
    assert await join(r, "s4", "carol") == [[b"bob", b"alice", b"carol"], 0, []]
    assert [await r.published() for _ in range(4)] == [
        b"Js1\n" + JOINED["bob"],
        b"Js2\n" + JOINED["alice"],
        b"Js3\n",
        b"Js4\n" + JOINED["carol"],
    ]
    assert await r.get(r.keys.arrivals) == b"3"


async def test_join_of_a_session_already_there_counts_nothing(r: Redis) -> None:
    await join(r, "s1", "alice")
    await r.published()
    assert await join(r, "s1", "alice") == [[b"alice"], 0, []]
    assert await r.published() == b"Js1\n"
    assert await r.hash(r.keys.users) == {b"alice": b"1"}


async def posted(r: Redis, runs: list[bytes]) -> None:
    """Post runs of messages (each ``b"line\\r\\n"`` per message) with history 100."""
    for ts, lines in enumerate(runs, start=1000):
        await r.post(100, lines.count(b"\n"), ts, lines)
        await r.published()


async def test_join_history_modes(r: Redis) -> None:
    await posted(r, [b"a\r\n", b"b\r\nc\r\n", b"d\r\n"])  # messages 1, 2-3, 4
    # No history asked: the latest number only.
    assert await join(r, "s1", "alice") == [[b"alice"], 4, []]
    # The last N entries (runs), newest first, with their fields.
    users, seq, entries = await join(r, "s2", "bob", mode=b"h", count=2)
    assert (users, seq) == ([b"alice", b"bob"], 4)
    assert entries == [
        [b"4-0", [b"t", b"1002", b"m", b"d\r\n"]],
        [b"2-0", [b"t", b"1001", b"m", b"b\r\nc\r\n"]],
    ]
    # "After a number": the same read (N entries, newest first); the room keeps those
    # after the number, since an entry holding it may start before it.
    _, _, after = await join(r, "s3", "carol", mode=b"a", count=2, after=2)
    assert after == entries
    _, _, everything = await join(r, "s4", "carol", mode=b"h", count=100)
    assert [entry[0] for entry in everything] == [b"4-0", b"2-0", b"1-0"]


# -- LEAVE -------------------------------------------------------------------------------


async def leave(r: Redis, session: str, user: str) -> Any:
    return await r.room("leave", session, user, "PUBLISH")


async def test_leave_of_an_unknown_session(r: Redis) -> None:
    assert await leave(r, "nobody", "alice") == 0
    await r.nothing_more()
    assert await r.cmd.call("KEYS", "*") == []


async def test_leave_announces_the_last_session_only(r: Redis) -> None:
    await join(r, "s1", "alice")
    await join(r, "s2", "alice", instance="i2")
    await join(r, "s3", "bob")
    for _ in range(3):
        await r.published()
    assert await leave(r, "s1", "alice") == 1
    assert await r.hash(r.keys.users) == {b"alice": b"1", b"bob": b"1"}
    await r.nothing_more()
    assert await leave(r, "s2", "alice") == 1
    assert await r.published() == LEFT["alice"]
    assert await r.hash(r.keys.sessions) == {b"s3": b"i1\nbob"}
    assert await r.hash(r.keys.users) == {b"bob": b"1"}
    assert await r.cmd.call("ZRANGE", r.keys.order, 0, -1) == [b"bob"]
    assert await r.hash(r.keys.left) == {b"bob": LEFT["bob"]}
    assert await r.get(r.keys.arrivals) == b"2"  # arrivals only count up
    # Leaving twice is a no-op.
    assert await leave(r, "s2", "alice") == 0
    await r.nothing_more()


# -- POST --------------------------------------------------------------------------------


async def test_post_numbers_runs_and_keeps_them(r: Redis) -> None:
    assert await r.post(100, 1, 1700, b"one\r\n") == 1
    assert await r.published() == b"M1 1700\none\r\n"
    assert await r.post(100, 3, 1701, b"a\r\nb\r\nc\r\n") == 2
    assert await r.published() == b"M2 1701\na\r\nb\r\nc\r\n"
    assert await r.post(100, 1, 1702, b"last\r\n") == 5
    assert await r.published() == b"M5 1702\nlast\r\n"
    assert await r.get(r.keys.counter) == b"5"
    assert await r.cmd.call("XRANGE", r.keys.stream, "-", "+") == [
        [b"1-0", [b"t", b"1700", b"m", b"one\r\n"]],
        [b"2-0", [b"t", b"1701", b"m", b"a\r\nb\r\nc\r\n"]],
        [b"5-0", [b"t", b"1702", b"m", b"last\r\n"]],
    ]


async def test_post_without_history_keeps_nothing(r: Redis) -> None:
    assert await r.post(0, 2, 5, b"x\r\ny\r\n") == 1
    assert await r.published() == b"M1 5\nx\r\ny\r\n"
    assert await r.get(r.keys.counter) == b"2"
    assert await r.cmd.call("EXISTS", r.keys.stream) == 0


async def test_post_trims_the_stream(r: Redis) -> None:
    for ts in range(500):
        await r.post(10, 1, ts, b"m\r\n")
    # MAXLEN ~: trimmed by whole stream nodes, so at least the last 10 are kept.
    length = await r.cmd.call("XLEN", r.keys.stream)
    assert 10 <= length < 500
    newest = await r.cmd.call("XREVRANGE", r.keys.stream, "+", "-", "COUNT", 10)
    assert [entry[0] for entry in newest] == [b"%d-0" % n for n in range(500, 490, -1)]


async def test_post_goes_on_when_the_stream_refuses_the_entry(r: Redis) -> None:
    # The counter lost but the stream kept (an entry id ahead of it): XADD fails inside
    # pcall, the message is still numbered and published, and the error is answered
    # (the bus counts and logs it: never swallowed).
    await r.cmd.call("XADD", r.keys.stream, "9-0", "t", "0", "m", "old\r\n")
    number, _, error = await r.post_reply(100, 1, 7, b"new\r\n")
    assert number == 1 and b"equal or smaller" in error
    assert await r.published() == b"M1 7\nnew\r\n"
    assert await r.cmd.call("XLEN", r.keys.stream) == 1


# -- epochs and changes ------------------------------------------------------------------


async def test_join_and_post_agree_on_the_epoch_and_a_lost_counter_makes_a_new_one(
    r: Redis,
) -> None:
    first = await join_reply(r, "s1", "alice", instance="i1")
    epoch = first[3]
    assert epoch.startswith(b"i1-")
    assert (await r.post_reply(100, 1, 5, b"m\r\n"))[1] == epoch
    assert (await join_reply(r, "s2", "bob", instance="i2"))[3] == epoch  # not i2's
    # Redis lost the room (a restart without persistence): the numbering restarts, and
    # so does the epoch, whoever comes first.
    await r.cmd.call("DEL", r.keys.counter, r.keys.epoch, r.keys.stream)
    number, again = await r.post_reply(100, 1, 6, b"m\r\n")
    assert number == 1 and again != epoch and again.startswith(b"i1-")


async def test_change_keeps_the_event_for_joins_and_relays_it(r: Redis) -> None:
    await r.post(100, 2, 5, b"a\r\nb\r\n")
    await r.published()
    event = b'{"_et":"message_deleted","r":"general","q":2,"u":"bob","ts":9}'
    assert await r.room("change", "PUBLISH", 2, event) == 1
    assert await r.published() == b"V" + event
    reply = await join_reply(r, "s1", "alice", mode=b"h", count=10)
    assert reply[4] == [b"2", event]
    # A join that asks no history gets no changes.
    assert (await join_reply(r, "s2", "bob"))[4] == []


# -- ASSERT ------------------------------------------------------------------------------


async def test_assert_without_sessions_purges_an_instance(r: Redis) -> None:
    await join(r, "s1", "alice", instance="dead")
    await join(r, "s2", "bob", instance="dead")
    await join(r, "s3", "alice", instance="alive")
    for _ in range(3):
        await r.published()
    assert await r.room("assert", "dead", "PUBLISH", b"") == 2
    # bob had no other session: announced, with no prefix (every instance shows it).
    assert await r.published() == LEFT["bob"]
    await r.nothing_more()
    assert await r.hash(r.keys.sessions) == {b"s3": b"alive\nalice"}
    assert await r.hash(r.keys.users) == {b"alice": b"1"}
    assert await r.cmd.call("ZRANGE", r.keys.order, 0, -1) == [b"alice"]
    assert await r.hash(r.keys.left) == {b"alice": LEFT["alice"]}
    # Purging again finds nothing.
    assert await r.room("assert", "dead", "PUBLISH", b"") == 0
    await r.nothing_more()


def sessions(*items: tuple[str, str]) -> list[bytes | str]:
    args: list[bytes | str] = []
    for key, user in items:
        args += [key, user, JOINED[user], LEFT[user]]
    return args


async def test_reassert_adds_and_removes_with_the_prefix(r: Redis) -> None:
    await join(r, "s1", "alice")
    await join(r, "s2", "bob")
    await join(r, "s9", "alice", instance="i2")
    for _ in range(3):
        await r.published()
    prefix = b"Oi1\n"
    # This instance now has s1 (alice) and s4 (carol); s2 (bob) ended during an outage.
    args = sessions(("s1", "alice"), ("s4", "carol"))
    assert await r.room("assert", "i1", "PUBLISH", prefix, *args) == 1
    # Removals first, then additions; each with the prefix (its instance skips them).
    assert await r.published() == prefix + LEFT["bob"]
    assert await r.published() == prefix + JOINED["carol"]
    await r.nothing_more()
    assert await r.hash(r.keys.sessions) == {
        b"s1": b"i1\nalice",
        b"s4": b"i1\ncarol",
        b"s9": b"i2\nalice",
    }
    assert await r.hash(r.keys.users) == {b"alice": b"2", b"carol": b"1"}
    assert await r.cmd.call("ZRANGE", r.keys.order, 0, -1) == [b"alice", b"carol"]
    assert await r.hash(r.keys.left) == {b"alice": LEFT["alice"], b"carol": LEFT["carol"]}
    assert await r.get(r.keys.arrivals) == b"3"


async def test_reassert_after_redis_lost_everything(r: Redis) -> None:
    args = sessions(("s1", "alice"), ("s2", "alice"), ("s3", "bob"))
    assert await r.room("assert", "i1", "PUBLISH", b"Oi1\n", *args) == 0
    # alice once (her second session is not news), bob once.
    assert await r.published() == b"Oi1\n" + JOINED["alice"]
    assert await r.published() == b"Oi1\n" + JOINED["bob"]
    await r.nothing_more()
    assert await r.hash(r.keys.users) == {b"alice": b"2", b"bob": b"1"}
    # The same assertion again changes nothing and announces nothing.
    assert await r.room("assert", "i1", "PUBLISH", b"Oi1\n", *args) == 0
    await r.nothing_more()
    assert await r.hash(r.keys.users) == {b"alice": b"2", b"bob": b"1"}


# -- NAME_CLAIM, NAME_RELEASE, NAME_ASSERT -----------------------------------------------

NAMES = (REGISTRY_PREFIX + "names").encode()
HOLDS = (REGISTRY_PREFIX + "holds").encode()


def held(instance: str) -> bytes:
    return (REGISTRY_PREFIX + "held:" + instance).encode()


def registry(instance: str) -> tuple[bytes, bytes, bytes]:
    return (NAMES, HOLDS, held(instance))


async def claim(r: Redis, instance: str, name: str, how: str) -> Any:
    return await r.run("name_claim", registry(instance), name_key(name), name, how)


async def release(r: Redis, instance: str, name: str) -> Any:
    return await r.run("name_release", registry(instance), name_key(name))


async def test_claim_a_free_name(r: Redis) -> None:
    for how in ("new", "name", "proven"):
        name = f"Free{how}"
        assert await claim(r, "i1", name, how) is None
        key = name_key(name).encode()
        assert (await r.hash(NAMES))[key] == name.encode()
        assert (await r.hash(HOLDS))[key] == b"1"
        assert (await r.hash(held("i1")))[key] == b"1"


async def test_claim_a_taken_name(r: Redis) -> None:
    assert await claim(r, "i1", "Alice", "name") is None
    # Taken, whatever the case: the answer is the holder's spelling.
    assert await claim(r, "i2", "ALICE", "name") == b"Alice"
    assert await claim(r, "i2", "alice", "new") == b"Alice"
    assert await claim(r, "i2", "Alice", "new") == b"Alice"  # a random id: anyone else
    assert await claim(r, "i2", "aLiCe", "proven") == b"Alice"  # another spelling
    assert await r.hash(HOLDS) == {b"alice": b"1"}
    assert await r.hash(held("i2")) == {}


async def test_proven_and_hold_share_the_name(r: Redis) -> None:
    assert await claim(r, "i1", "Alice", "name") is None
    assert await claim(r, "i2", "Alice", "proven") is None  # the same user, elsewhere
    assert await claim(r, "i1", "Alice", "hold") is None  # one more local session
    assert await r.hash(NAMES) == {b"alice": b"Alice"}
    assert await r.hash(HOLDS) == {b"alice": b"3"}
    assert await r.hash(held("i1")) == {b"alice": b"2"}
    assert await r.hash(held("i2")) == {b"alice": b"1"}


async def test_release_frees_the_name_with_its_last_hold(r: Redis) -> None:
    await claim(r, "i1", "Alice", "name")
    await claim(r, "i2", "Alice", "proven")
    assert await release(r, "i1", "Alice") == 1
    assert await r.hash(held("i1")) == {}
    assert await r.hash(HOLDS) == {b"alice": b"1"}
    assert await r.hash(NAMES) == {b"alice": b"Alice"}
    assert await release(r, "i2", "Alice") == 1
    assert await r.cmd.call("KEYS", "*") == []
    assert await claim(r, "i3", "ALICE", "name") is None  # free: a new spelling
    assert await r.hash(NAMES) == {b"alice": b"ALICE"}


async def test_release_of_a_name_not_held_here_changes_nothing(r: Redis) -> None:
    await claim(r, "i1", "Alice", "name")
    assert await claim(r, "i2", "Alice", "name") == b"Alice"  # refused
    assert await release(r, "i2", "Alice") == 0  # the refused session ends
    assert await r.hash(HOLDS) == {b"alice": b"1"}
    assert await r.hash(held("i1")) == {b"alice": b"1"}
    assert await r.hash(held("i2")) == {}


async def test_name_assert_purges_an_instance(r: Redis) -> None:
    await claim(r, "dead", "Alice", "name")
    await claim(r, "dead", "Alice", "hold")
    await claim(r, "dead", "Bob", "name")
    await claim(r, "alive", "Bob", "proven")
    assert await r.run("name_assert", registry("dead")) == 0
    assert await r.hash(NAMES) == {b"bob": b"Bob"}
    assert await r.hash(HOLDS) == {b"bob": b"1"}
    assert await r.cmd.call("EXISTS", held("dead")) == 0
    assert await r.hash(held("alive")) == {b"bob": b"1"}


async def test_name_assert_holds_exactly_the_names_given_and_counts_clashes(r: Redis) -> None:
    await claim(r, "i1", "Alice", "name")
    await claim(r, "i1", "Gone", "name")
    # During i1's outage, i2 took Bob (i1 had him too) and Carol (which i1 never had).
    await claim(r, "i2", "Bob", "name")
    await claim(r, "i2", "Carol", "name")
    args: list[str | int] = [name_key("Alice"), "Alice", 2, name_key("Bob"), "Bob", 1]
    assert await r.run("name_assert", registry("i1"), *args) == 1  # Bob: held by i2 too
    assert await r.hash(NAMES) == {b"alice": b"Alice", b"bob": b"Bob", b"carol": b"Carol"}
    assert await r.hash(HOLDS) == {b"alice": b"2", b"bob": b"2", b"carol": b"1"}
    assert await r.hash(held("i1")) == {b"alice": b"2", b"bob": b"1"}
    assert await r.hash(held("i2")) == {b"bob": b"1", b"carol": b"1"}
