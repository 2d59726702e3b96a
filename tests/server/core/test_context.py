"""What every session of a server shares (context.py): the defaults, the heartbeat sweep
and the hello limiter made only when asked for, the announced heartbeat, and the
default call_later that refuses to make timers."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from roomchat.server.bus import MemoryBus
from roomchat.server.config import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_SHUTDOWN_RECONNECT_MS,
    DEFAULT_TOKEN_TTL,
    HELLO_BURST,
)
from roomchat.server.core.context import SessionContext
from roomchat.server.core.directory import Directory
from roomchat.server.core.liveness import Liveness
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.stats import ServerStats
from tests.session_harness import DETAILS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Sweep:
    """What a Liveness asks of a session."""

    def __init__(self) -> None:
        self.heard = False
        self.quiet_since = 0.0
        self.pinged = False

    def send_ping(self) -> None:
        pass

    def idle_timeout(self, quiet: float) -> None:
        pass


def context(**settings: object) -> SessionContext:
    """A context on real rooms, counters and names (as tests/session_harness.World)."""
    stats = ServerStats()
    outbox = Outbox(lambda callback: None, stats, 0.0)
    rooms = Directory(DETAILS, MemoryBus(), outbox, stats)
    return SessionContext(rooms=rooms, stats=stats, names=NameRegistry(), **settings)  # type: ignore[arg-type]


def test_the_defaults_are_the_servers() -> None:
    ctx = context()
    assert ctx.max_line_length == DEFAULT_MAX_LINE_LENGTH
    assert ctx.token_ttl == DEFAULT_TOKEN_TTL
    assert ctx.reconnect_ms == DEFAULT_SHUTDOWN_RECONNECT_MS
    assert ctx.require_tokens is False
    assert (ctx.heartbeat, ctx.idle_timeout) == (0.0, 0.0)
    assert (ctx.flood_rate, ctx.flood_burst, ctx.hello_rate) == (0.0, 0.0, 0.0)
    assert ctx.shutdown_msg == "server shutting down"


def test_the_secret_is_random_per_context() -> None:
    first, second = context(), context()
    assert len(first.secret) == 32
    assert first.secret != second.secret
    assert context(secret=b"given").secret == b"given"


def test_no_liveness_and_no_hello_limiter_unless_asked() -> None:
    ctx = context()
    assert ctx.liveness is None
    assert ctx.hello_limiter is None
    assert ctx.announced_heartbeat == 0


@pytest.mark.parametrize(("heartbeat", "idle"), [(30.0, 0.0), (0.0, 90.0), (30.0, 90.0)])
def test_liveness_is_made_when_either_limit_is_on(heartbeat: float, idle: float) -> None:
    clock = Clock()
    timers: list[tuple[float, Callable[[], None]]] = []

    def call_later(delay: float, callback: Callable[[], None]) -> None:
        timers.append((delay, callback))

    ctx = context(heartbeat=heartbeat, idle_timeout=idle, clock=clock, call_later=call_later)
    liveness = ctx.liveness
    assert isinstance(liveness, Liveness)
    assert (liveness.heartbeat, liveness.idle) == (heartbeat, idle)
    # It runs on the context's clock and timers.
    clock.now = 42.0
    session = Sweep()
    liveness.add(session)
    assert session.quiet_since == 42.0
    assert [delay for delay, _ in timers] == [liveness.period]


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_limits_of_zero_or_less_make_no_liveness(value: float) -> None:
    assert context(heartbeat=value, idle_timeout=value).liveness is None


def test_the_hello_limiter_is_made_when_a_rate_is_given() -> None:
    clock = Clock()
    ctx = context(hello_rate=2.0, clock=clock)
    limiter = ctx.hello_limiter
    assert limiter is not None
    assert (limiter.rate, limiter.burst) == (2.0, HELLO_BURST)
    assert ctx.liveness is None  # one does not bring the other
    # It runs on the context's clock: the burst, then nothing until the clock moves.
    allowed = [limiter.allow("alice") for _ in range(int(HELLO_BURST) + 1)]
    assert allowed == [True] * int(HELLO_BURST) + [False]
    clock.now += 0.5  # one token at 2 per second
    assert limiter.allow("alice")
    assert not limiter.allow("alice")


def test_no_hello_limiter_for_a_rate_of_zero_or_less() -> None:
    assert context(hello_rate=0.0).hello_limiter is None
    assert context(hello_rate=-1.0).hello_limiter is None


def test_liveness_and_limiter_are_not_constructor_arguments() -> None:
    with pytest.raises(TypeError):
        context(liveness=None)
    with pytest.raises(TypeError):
        context(hello_limiter=None)


@pytest.mark.parametrize(
    ("heartbeat", "announced"),
    [
        (0.0, 0),  # off
        (-5.0, 0),
        (0.01, 1),  # sub-second values: at least 1 while heartbeats are on
        (0.2, 1),
        (0.5, 1),
        (0.99, 1),
        (1.0, 1),
        (1.4, 1),
        (1.6, 2),
        (2.5, 2),  # round() rounds halves to even
        (3.5, 4),
        (30.0, 30),
    ],
)
def test_announced_heartbeat(heartbeat: float, announced: int) -> None:
    ctx = context(heartbeat=heartbeat, call_later=lambda delay, callback: None)
    assert ctx.announced_heartbeat == announced
    assert type(ctx.announced_heartbeat) is int


def test_the_default_call_later_refuses_with_a_clear_error() -> None:
    ctx = context()
    called: list[bool] = []
    with pytest.raises(RuntimeError, match=r"no timers in this context.*call_later"):
        ctx.call_later(1.0, lambda: called.append(True))
    assert called == []


def test_heartbeats_without_a_call_later_fail_on_the_first_session() -> None:
    # Making the context is fine; the sweep's first timer is what needs call_later.
    ctx = context(heartbeat=1.0)
    assert ctx.liveness is not None
    with pytest.raises(RuntimeError, match="give SessionContext a call_later"):
        ctx.liveness.add(Sweep())


def test_contexts_compare_by_identity() -> None:
    ctx = context()
    assert ctx == ctx
    assert ctx != context()
    assert len({ctx, ctx, context()}) == 2  # hashable (eq=False)
