"""Flood control: a token bucket of commands per session (docs/protocol.md, "Flood
control").

The session charges the bucket once per decoded batch (``tokens -= len(items)``, inline
in Session.receive_data: no call per command); only when that goes negative does it ask
:meth:`Bucket.refill` how long to stop reading. Refilling is lazy: the tokens earned
since the last refill are added then, up to the burst.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Bucket"]


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
