"""The hello limiter's buckets (flood.py): a burst, the rate, and bounded memory."""

from __future__ import annotations

from roomchat.server.core.flood import HelloLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_per_name() -> None:
    clock = Clock()
    limiter = HelloLimiter(rate=0.5, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")  # another name has its own bucket
    clock.now = 1.0  # half a token: not yet
    assert not limiter.allow("a")
    clock.now = 2.0
    assert limiter.allow("a")
    assert not limiter.allow("a")


def test_buckets_of_names_gone_quiet_are_dropped() -> None:
    clock = Clock()
    limiter = HelloLimiter(rate=1.0, burst=2, clock=clock)
    for n in range(4096):
        limiter.allow(f"name{n}")
    assert len(limiter) == 4096
    clock.now = 10.0  # every bucket is full again
    limiter.allow("late")
    assert len(limiter) == 1
    # A name still over its budget survives the pruning.
    limiter.allow("late")
    limiter.allow("late")
    for n in range(4096):
        limiter.allow(f"again{n}")
    assert not limiter.allow("late")
