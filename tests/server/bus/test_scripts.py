"""scripts.py: each Lua script run with EVALSHA on a real redis-server, and posting's
transaction (commands.py ``Posting``, as the bus sends it), checking the keys they
write and what they publish on the room's channel (read on another connection).

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
from roomchat.server.bus.redis.commands import (
    MULTI,
    REGISTRY_PREFIX,
    Posting,
    RoomKeys,
    numbered_runs,
)
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

    async def post_reply(self, history: int, *runs: tuple[int, int, bytes]) -> Any:
        """EXEC's reply to posting ``runs`` ((count, ts, lines) each) in one transaction,
        as the bus does: per run INCRBY's and (with history) RPUSH's and PUBLISH's."""
        posting = Posting(self.keys, b"PUBLISH", history)
        body = b"".join(posting.run(count, ts, lines) for count, ts, lines in runs)
        self.cmd.send_many(MULTI + body, [lambda reply: None] * (1 + posting.size * len(runs)))
        return await self.cmd.call("EXEC")

    async def post(self, history: int, count: int, ts: int, lines: bytes) -> Any:
        """The number of the run's first message (and RPUSH's error, if any)."""
        last, *rest = await self.post_reply(history, (count, ts, lines))
        first = last - count + 1
        return [first, rest[0]] if rest and isinstance(rest[0], Exception) else first

    async def recent(self) -> list[tuple[int, int, bytes]]:
        """The room's recent runs, numbered as JOIN's and CATCH_UP's readers do."""
        entries = await self.cmd.call("LRANGE", self.keys.recent, 0, -1)
        return numbered_runs(int(await self.get(self.keys.counter) or 0), entries)

    async def marker(self, seq: int, session: str) -> bytes:
        """A join's marker (a sync point): J<seq> <epoch> <session key>\\n."""
        return b"J%d %s %s\n" % (seq, await self.get(self.keys.epoch), session.encode())

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
    assert await r.published() == await r.marker(0, "s1") + JOINED["alice"]
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
    assert await r.published() == await r.marker(0, "s2")
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
        await r.marker(0, "s1") + JOINED["bob"],
        await r.marker(0, "s2") + JOINED["alice"],
        await r.marker(0, "s3"),
        await r.marker(0, "s4") + JOINED["carol"],
    ]
    assert await r.get(r.keys.arrivals) == b"3"


async def test_join_of_a_session_already_there_counts_nothing(r: Redis) -> None:
    await join(r, "s1", "alice")
    await r.published()
    assert await join(r, "s1", "alice") == [[b"alice"], 0, []]
    assert await r.published() == await r.marker(0, "s1")
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
    # The last N runs, oldest first, as they were published (numbered from the counter).
    users, seq, entries = await join(r, "s2", "bob", mode=b"h", count=2)
    assert (users, seq) == ([b"alice", b"bob"], 4)
    assert entries == [b"M1001\nb\r\nc\r\n", b"M1002\nd\r\n"]
    assert numbered_runs(seq, entries) == [(2, 1001, b"b\r\nc\r\n"), (4, 1002, b"d\r\n")]
    # "After a number": the same read (N runs); the room keeps those after the number,
    # since a run holding it may start before it.
    _, _, after = await join(r, "s3", "carol", mode=b"a", count=2, after=2)
    assert after == entries
    _, _, everything = await join(r, "s4", "carol", mode=b"h", count=100)
    assert [first for first, _, _ in numbered_runs(4, everything)] == [1, 2, 4]


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


# -- posting (a transaction, not a script) ----------------------------------------------


async def test_post_numbers_runs_and_keeps_them(r: Redis) -> None:
    assert await r.post(100, 1, 1700, b"one\r\n") == 1
    assert await r.published() == b"M1700\none\r\n"
    assert await r.post(100, 3, 1701, b"a\r\nb\r\nc\r\n") == 2
    assert await r.published() == b"M1701\na\r\nb\r\nc\r\n"
    assert await r.post(100, 1, 1702, b"last\r\n") == 5
    assert await r.published() == b"M1702\nlast\r\n"
    assert await r.get(r.keys.counter) == b"5"
    assert await r.recent() == [
        (1, 1700, b"one\r\n"),
        (2, 1701, b"a\r\nb\r\nc\r\n"),
        (5, 1702, b"last\r\n"),
    ]


async def test_runs_of_several_rooms_share_one_transaction(r: Redis) -> None:
    # Two runs in one MULTI/EXEC: each INCRBY's result is its run's last number.
    reply = await r.post_reply(100, (2, 10, b"a\r\nb\r\n"), (1, 11, b"c\r\n"))
    assert reply == [2, 1, 1, 3, 2, 1]  # INCRBY, RPUSH, PUBLISH (1 subscriber), twice
    assert [await r.published(), await r.published()] == [b"M10\na\r\nb\r\n", b"M11\nc\r\n"]


async def test_post_without_history_keeps_nothing(r: Redis) -> None:
    assert await r.post(0, 2, 5, b"x\r\ny\r\n") == 1
    assert await r.published() == b"M5\nx\r\ny\r\n"
    assert await r.get(r.keys.counter) == b"2"
    assert await r.cmd.call("EXISTS", r.keys.recent) == 0


async def test_trim_keeps_the_last_runs(r: Redis) -> None:
    for ts in range(50):
        await r.post(10, 1, ts, b"m\r\n")
    r.cmd.send(Posting(r.keys, b"PUBLISH", 10).trim)  # as the bus queues it now and then
    assert [first for first, _, _ in await r.recent()] == list(range(41, 51))


async def test_post_goes_on_when_the_history_refuses_the_run(r: Redis) -> None:
    # The recent runs' key holds something else: RPUSH fails inside the transaction,
    # the message is still numbered and published, and the error is in EXEC's reply
    # (the bus counts and logs it: never swallowed).
    await r.cmd.call("SET", r.keys.recent, "not a list")
    number, error = await r.post(100, 1, 7, b"new\r\n")
    assert number == 1 and "WRONGTYPE" in str(error)
    assert await r.published() == b"M7\nnew\r\n"


# -- epochs, catch-up and changes --------------------------------------------------------


async def catch_up(r: Redis, last: int, epoch: bytes, count: int = 100) -> Any:
    """CATCH_UP for instance i1 that delivered up to ``last`` in ``epoch``."""
    return await r.room("catch_up", "i1", "PUBLISH", "i1-", count, last, epoch)


async def test_join_and_catch_up_agree_on_the_epoch_and_a_lost_counter_makes_a_new_one(
    r: Redis,
) -> None:
    epoch = (await join_reply(r, "s1", "alice", instance="i1"))[3]
    assert epoch.startswith(b"i1-")
    await r.published()
    await r.post(100, 1, 5, b"m\r\n")
    await r.published()
    assert (await join_reply(r, "s2", "bob", instance="i2"))[3] == epoch  # not i2's
    assert await r.published() == await r.marker(1, "s2") + JOINED["bob"]
    # A catch-up in the same numbering: the epoch, the number, the runs, and a sync
    # point in the channel at that place.
    assert await catch_up(r, 0, epoch) == [epoch, 1, [b"M5\nm\r\n"]]
    assert await r.published() == b"C1 %s i1" % epoch
    # Redis lost the room (a restart without persistence): the numbering restarts, and
    # so does the epoch, whoever comes first.
    await r.cmd.call("DEL", r.keys.counter, r.keys.epoch, r.keys.recent)
    again, seq, entries = await catch_up(r, 1, epoch)
    assert again != epoch and again.startswith(b"i1-") and (seq, entries) == (0, [])
    assert await r.published() == b"C0 %s i1" % again


async def test_a_counter_behind_what_was_delivered_starts_a_new_epoch(r: Redis) -> None:
    # A failover to a replica that had not got the last writes: the counter is at 1
    # where the instance delivered 3. Numbers must not repeat in one epoch: a new one,
    # and the runs and changes numbered in the old one go.
    epoch = (await join_reply(r, "s1", "alice"))[3]
    await r.post(100, 1, 5, b"m\r\n")
    await r.room("change", "PUBLISH", 1, b'{"_et":"message_deleted"}')
    fresh, seq, entries = await catch_up(r, 3, epoch)
    assert fresh != epoch and (seq, entries) == (1, [])
    assert await r.get(r.keys.epoch) == fresh
    assert await r.cmd.call("EXISTS", r.keys.recent, r.keys.changes) == 0
    # An instance that was behind (delivered less than the counter) changes nothing.
    await r.post(100, 1, 6, b"n\r\n")
    assert await catch_up(r, 0, fresh) == [fresh, 2, [b"M6\nn\r\n"]]


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
