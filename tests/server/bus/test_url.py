"""parse_redis_url (bus/redis/url.py): every accepted form of a bus URL, and every error
with the message the operator sees (``roomchat serve --bus URL`` prints it)."""

from __future__ import annotations

import re

import pytest

from roomchat.server.bus import BusError
from roomchat.server.bus.redis import RedisBus, RedisTarget, parse_redis_url


class _NoWakeups:
    def watch(self, fd: int) -> None:
        pass

    def unwatch(self, fd: int) -> None:
        pass


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://h", RedisTarget(False, (("h", 6379),), 0, None, None)),
        ("redis://h:1234", RedisTarget(False, (("h", 1234),), 0, None, None)),
        ("redis://127.0.0.1:6380/5", RedisTarget(False, (("127.0.0.1", 6380),), 5, None, None)),
        ("redis://h:1234/", RedisTarget(False, (("h", 1234),), 0, None, None)),
        ("redis://h/0", RedisTarget(False, (("h", 6379),), 0, None, None)),
        ("REDIS://h", RedisTarget(False, (("h", 6379),), 0, None, None)),
        ("redis://[::1]:6380", RedisTarget(False, (("::1", 6380),), 0, None, None)),
        # Credentials: "user:password", ":password", and a bare word is a password.
        ("redis://u:pw@h", RedisTarget(False, (("h", 6379),), 0, "u", "pw")),
        ("redis://:pw@h:1", RedisTarget(False, (("h", 1),), 0, None, "pw")),
        ("redis://pw@h", RedisTarget(False, (("h", 6379),), 0, None, "pw")),
        ("redis://u:@h", RedisTarget(False, (("h", 6379),), 0, "u", "")),
        # Percent-encoding, and an "@" in the password (the last "@" ends the
        # credentials).
        ("redis://us%40er:p%3Aw%2F@h", RedisTarget(False, (("h", 6379),), 0, "us@er", "p:w/")),
        ("redis://u:p@ss@h", RedisTarget(False, (("h", 6379),), 0, "u", "p@ss")),
        # A cluster: one seed or several, spaces around them ignored, default port.
        ("redis+cluster://a:7001", RedisTarget(True, (("a", 7001),), 0, None, None)),
        (
            "redis+cluster://a:7001, b:7002,c",
            RedisTarget(True, (("a", 7001), ("b", 7002), ("c", 6379)), 0, None, None),
        ),
        (
            "Redis+Cluster://u:pw@a:7001,b:7002/",
            RedisTarget(True, (("a", 7001), ("b", 7002)), 0, "u", "pw"),
        ),
        # Sentinels: the master's name (and database) in the path, the credentials are
        # the master's, the sentinels' own password an option; port 26379 by default.
        (
            "redis+sentinel://s1,s2:26380/chat",
            RedisTarget(False, (("s1", 26379), ("s2", 26380)), 0, None, None, "chat"),
        ),
        (
            "redis+sentinel://u:pw@s1/chat/2?sentinel_password=p%40ss",
            RedisTarget(False, (("s1", 26379),), 2, "u", "pw", "chat", "p@ss"),
        ),
    ],
)
def test_accepted_forms(url: str, target: RedisTarget) -> None:
    assert parse_redis_url(url) == target


@pytest.mark.parametrize(
    ("url", "display"),
    [
        ("redis://u:secret@h:1/3", "redis://h:1/3"),
        ("redis://:secret@h", "redis://h:6379"),
        ("redis://h:1/0", "redis://h:1"),
        ("redis+cluster://u:secret@a:1,b:2", "redis+cluster://a:1,b:2"),
        (
            "redis+sentinel://u:secret@a,b:2/chat/1?sentinel_password=x",
            "redis+sentinel://a:26379,b:2/chat/1",
        ),
    ],
)
def test_display_has_no_credentials(url: str, display: str) -> None:
    assert parse_redis_url(url).display == display


EXPECTED = "expected redis://, redis+cluster:// or redis+sentinel://"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1", EXPECTED),
        ("memory://", EXPECTED),
        ("rediss://h:1", EXPECTED),
        ("h:6379", EXPECTED),
        ("redis://", "no host"),
        ("redis://:6379", "no host"),
        ("redis://u:pw@", "no host"),
        ("redis+cluster://a:1,,b:2", "no host"),
        ("redis+cluster://a:1,", "no host"),
        ("redis://h:abc", "port 'abc' is not a number"),
        ("redis://h:", "port '' is not a number"),
        ("redis://h:0", "port 0 out of range"),
        ("redis://h:65536", "port 65536 out of range"),
        ("redis://h:-1", "port -1 out of range"),
        ("redis://a:1,b:2", "one host for redis://, several need redis+cluster://"),
        ("redis+cluster://a:1/0", "a Redis Cluster has no databases"),
        ("redis://h/x", "database 'x' is not a number"),
        ("redis://h/1/2", "database '1/2' is not a number"),
        ("redis+sentinel://s1", "name the master: redis+sentinel://HOST/SERVICE"),
        ("redis+sentinel://s1/", "name the master: redis+sentinel://HOST/SERVICE"),
        ("redis+sentinel://s1/chat/x", "database 'x' is not a number"),
        ("redis+sentinel://s1/chat?password=x", "unknown option 'password'"),
        ("redis://h?sentinel_password=x", "options (?...) are for redis+sentinel:// only"),
    ],
)
def test_errors(url: str, message: str) -> None:
    with pytest.raises(BusError) as caught:
        parse_redis_url(url)
    # Every message names the URL first, then what is wrong with it.
    assert str(caught.value) == f"bus URL {url!r}: {message}"


def test_the_bus_refuses_a_bad_url_before_connecting() -> None:
    with pytest.raises(BusError, match=re.escape("port 'x' is not a number")):
        RedisBus("redis://h:x", wakeups=_NoWakeups(), lease=10, history=0)
