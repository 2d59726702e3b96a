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

__all__ = ["Bucket", "HelloLimiter"]

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
