"""Flood control: a token bucket of commands per session (docs/protocol.md, "Flood
control").

The session charges the bucket once per decoded batch (``tokens -= len(items)``, inline
in Session.receive_data: no call per command); only when that goes negative does it ask
:meth:`Bucket.refill` how long to stop reading. Refilling is lazy: the tokens earned
since the last refill are added then, up to the burst.

:class:`HelloLimiter` is the same bucket per name, for v2 hellos: a client that
reconnects in a loop under one name is refused with ``rate_limited`` past its burst.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Bucket", "HelloLimiter", "UserBucket", "UserBuckets"]

#: Buckets kept before full ones (names not seen for a while) are dropped.
_PRUNE_AT = 4096


class Bucket:
    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._last = clock()
        #: What is left; the session subtracts the commands it read.
        self.tokens = burst

    def refill(self) -> float:
        """Add what was earned since the last refill; the seconds to wait until the
        bucket is back at zero (0.0: no wait)."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 0:
            return 0.0
        return -self.tokens / self.rate


class HelloLimiter:
    """One bucket of hellos per name (ignoring case): ``allow`` takes one token."""

    __slots__ = ("_buckets", "_clock", "_prune_at", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, Bucket] = {}
        self._prune_at = _PRUNE_AT

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str) -> bool:
        """Whether a hello for the name ``key`` (name_key) may go on now."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune()
            bucket = self._buckets[key] = Bucket(self.rate, self.burst, self._clock)
        bucket.refill()
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _prune(self) -> None:
        """Drop the buckets that are full again (they would start full anyway): memory
        stays bounded by the names seen within burst / rate seconds."""
        for key, bucket in list(self._buckets.items()):
            bucket.refill()
            if bucket.tokens >= bucket.burst:
                del self._buckets[key]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))


#: Seconds between two reports of a user's spending to the shared store (Redis).
REPORT_EVERY = 0.1
#: The window over which the store adds up a user's spending on every instance.
WINDOW = 1.0


class UserBucket(Bucket):
    """One user's bucket on this instance, shared by its sessions here
    (:class:`UserBuckets`). ``spent``: commands not yet reported to the shared store;
    ``total``: the user's spending in the current window on every instance, as the
    store last answered (for tests and logs)."""

    __slots__ = ("_owner", "key", "reporting", "sessions", "spent", "total")

    def __init__(self, key: str, owner: UserBuckets) -> None:
        super().__init__(owner.rate, owner.burst, owner.clock)
        self._owner = owner
        self.key = key
        self.sessions = 0
        self.spent = 0
        self.total = 0
        self.reporting = False

    def charge(self, count: int) -> None:
        """``count`` commands read for the user (by any of its sessions here)."""
        self.tokens -= count
        self._owner.charged(self, count)


#: What a shared store (bus/redis/limits.py) is asked: add ``count`` commands of user
#: ``key`` in window ``window``; ``answer`` gets the user's total in that window.
Report = Callable[[str, int, int, Callable[[int], None]], None]


class UserBuckets:
    """Per-user send limits (docs/moderation.md, "Per-user limits"): every session of a
    user on this instance charges one :class:`UserBucket`; with a ``report`` (a shared
    bus), each instance adds its users' spending up in the store every REPORT_EVERY
    seconds, and a user whose total in the window passes ``rate * WINDOW + burst`` is
    charged the excess here too, so that the next read of any of its sessions stops
    reading it (the server never drops what was read)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
        wall: Callable[[], float],
        report: Report | None = None,
    ) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._call_later = call_later
        #: The wall clock the shared windows are numbered by (every instance counts a
        #: user's spending in the same WINDOW-long windows of it).
        self.wall = wall
        self._report = report
        self._buckets: dict[str, UserBucket] = {}

    def of(self, key: str) -> UserBucket | None:
        """The bucket of the user ``key`` (a name key), if it has sessions here."""
        return self._buckets.get(key)

    def take(self, key: str) -> UserBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = UserBucket(key, self)
        bucket.sessions += 1
        return bucket

    def drop(self, bucket: UserBucket) -> None:
        bucket.sessions -= 1
        if bucket.sessions <= 0 and not bucket.reporting:
            self._buckets.pop(bucket.key, None)

    def charged(self, bucket: UserBucket, count: int) -> None:
        """``count`` commands charged to ``bucket``: reported to the shared store soon."""
        if self._report is None:
            return
        bucket.spent += count
        if not bucket.reporting:
            bucket.reporting = True
            self._call_later(REPORT_EVERY, lambda: self._send(bucket))

    def _send(self, bucket: UserBucket) -> None:
        bucket.reporting = False
        spent, bucket.spent = bucket.spent, 0
        if spent and self._report is not None:
            self._report(
                bucket.key, spent, int(self.wall() // WINDOW), lambda t: self._told(bucket, t)
            )
        if bucket.sessions <= 0:
            self._buckets.pop(bucket.key, None)

    def _told(self, bucket: UserBucket, total: int) -> None:
        bucket.total = total
        excess = total - (self.rate * WINDOW + self.burst)
        if excess > 0:
            bucket.refill()
            bucket.tokens = min(bucket.tokens, -excess)
