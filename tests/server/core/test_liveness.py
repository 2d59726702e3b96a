"""The heartbeat sweep (liveness.py) on a fake clock and a fake call_later: quiet
sessions are pinged once per quiet spell and timed out at the idle timeout; hearing from
a client starts its quiet spell again; one sweep per period, none once nobody is left."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from roomchat.server.core.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Handle:
    def __init__(self, delay: float, callback: Callable[[], None]) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """A fake ``call_later``: records each timer; :meth:`fire` runs the pending one."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.handles: list[Handle] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(delay, callback)
        self.handles.append(handle)
        return handle

    @property
    def pending(self) -> list[Handle]:
        return [h for h in self.handles if not h.cancelled and not h.fired]

    def fire(self) -> None:
        """Advance the clock by the pending timer's delay and run it (exactly one)."""
        (handle,) = self.pending
        self.clock.now += handle.delay
        handle.fired = True
        handle.callback()


class FakeSession:
    def __init__(self) -> None:
        # What Liveness.add must overwrite:
        self.heard = True
        self.quiet_since = -1.0
        self.pinged = True
        self.pings = 0
        self.timeouts: list[float] = []

    def send_ping(self) -> None:
        self.pings += 1

    def idle_timeout(self, quiet: float) -> None:
        self.timeouts.append(quiet)


def setup(heartbeat: float, idle: float) -> tuple[Liveness, Clock, Timers]:
    clock = Clock()
    timers = Timers(clock)
    return Liveness(heartbeat, idle, clock, timers), clock, timers


def sweeps(timers: Timers, count: int) -> None:
    for _ in range(count):
        timers.fire()


# -- the period ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heartbeat", "idle", "period"),
    [
        (30.0, 90.0, 1.0),  # the usual values: once a second
        (4.0, 12.0, 1.0),
        (2.0, 6.0, 0.5),  # small test values: a quarter of the shortest
        (0.4, 2.0, 0.1),
        (0.0, 2.0, 0.5),  # no pings: the idle timeout alone
        (3.0, 0.2, 0.05),  # the idle timeout shorter than the heartbeat
        # No idle timeout: the heartbeat alone decides, as the idle timeout does alone.
        (30.0, 0.0, 1.0),
        (2.0, 0.0, 0.5),
        (0.2, 0.0, 0.05),
    ],
)
def test_period(heartbeat: float, idle: float, period: float) -> None:
    liveness, _, _ = setup(heartbeat, idle)
    assert liveness.period == pytest.approx(period)
    assert liveness.heartbeat == heartbeat
    assert liveness.idle == idle


# -- the sweep -----------------------------------------------------------------------


def test_nothing_is_scheduled_before_a_session_and_one_sweep_after() -> None:
    liveness, clock, timers = setup(2.0, 6.0)
    assert timers.handles == []
    session = FakeSession()
    liveness.add(session)
    assert len(liveness) == 1
    assert (session.heard, session.quiet_since, session.pinged) == (False, clock.now, False)
    assert [h.delay for h in timers.pending] == [0.5]
    liveness.add(FakeSession())  # a second session shares the sweep
    assert len(timers.handles) == 1
    assert len(liveness) == 2


def test_a_quiet_session_is_pinged_once_at_the_heartbeat_then_timed_out() -> None:
    liveness, clock, timers = setup(2.0, 6.0)
    session = FakeSession()
    liveness.add(session)
    start = clock.now
    sweeps(timers, 3)  # 1.5 s
    assert session.pings == 0
    timers.fire()  # 2.0 s: the heartbeat
    assert clock.now - start == pytest.approx(2.0)
    assert session.pings == 1
    assert session.pinged
    sweeps(timers, 7)  # 5.5 s: pinged once per quiet spell
    assert session.pings == 1
    assert session.timeouts == []
    timers.fire()  # 6.0 s: the idle timeout
    assert session.timeouts == [pytest.approx(6.0)]
    assert len(liveness) == 0
    assert timers.pending == []  # nobody left: the sweep stops rescheduling


def test_hearing_from_the_client_starts_the_quiet_spell_again() -> None:
    liveness, clock, timers = setup(2.0, 6.0)
    session = FakeSession()
    liveness.add(session)
    sweeps(timers, 4)  # 2.0 s: pinged
    assert session.pings == 1
    session.heard = True  # the pong (or anything) came in
    timers.fire()  # 2.5 s: quiet since now
    assert (session.heard, session.pinged) == (False, False)
    assert session.quiet_since == clock.now
    sweeps(timers, 3)  # 1.5 s quiet
    assert session.pings == 1
    timers.fire()  # 2.0 s quiet: a new quiet spell's ping
    assert session.pings == 2
    sweeps(timers, 8)  # 6.0 s quiet
    assert session.timeouts == [pytest.approx(6.0)]


def test_a_session_heard_every_sweep_is_never_pinged_nor_timed_out() -> None:
    liveness, _, timers = setup(2.0, 6.0)
    session = FakeSession()
    liveness.add(session)
    for _ in range(100):
        session.heard = True
        timers.fire()
    assert session.pings == 0
    assert session.timeouts == []
    assert len(liveness) == 1
    assert len(timers.pending) == 1


def test_sessions_are_swept_each_on_its_own_spell() -> None:
    liveness, _, timers = setup(2.0, 6.0)
    early = FakeSession()
    liveness.add(early)
    sweeps(timers, 2)  # 1.0 s
    late = FakeSession()
    liveness.add(late)  # quiet since 1.0 s; no second timer
    assert len(timers.pending) == 1
    sweeps(timers, 2)  # 2.0 s
    assert (early.pings, late.pings) == (1, 0)
    sweeps(timers, 2)  # 3.0 s
    assert (early.pings, late.pings) == (1, 1)
    sweeps(timers, 6)  # 6.0 s
    assert (len(early.timeouts), len(late.timeouts)) == (1, 0)
    assert len(liveness) == 1
    sweeps(timers, 2)  # 7.0 s
    assert late.timeouts == [pytest.approx(6.0)]
    assert len(liveness) == 0
    assert timers.pending == []


def test_no_pings_without_a_heartbeat() -> None:
    liveness, _, timers = setup(0.0, 2.0)
    session = FakeSession()
    liveness.add(session)
    sweeps(timers, 3)  # 1.5 s
    assert session.timeouts == []
    timers.fire()  # 2.0 s
    assert session.pings == 0
    assert session.timeouts == [pytest.approx(2.0)]


def test_no_timeout_without_an_idle_timeout() -> None:
    liveness, _, timers = setup(2.0, 0.0)
    session = FakeSession()
    liveness.add(session)
    sweeps(timers, 1000)  # 250 s
    assert session.pings == 1
    assert session.timeouts == []
    assert len(liveness) == 1


def test_an_idle_timeout_before_the_heartbeat_skips_the_ping() -> None:
    liveness, _, timers = setup(10.0, 1.0)
    session = FakeSession()
    liveness.add(session)
    sweeps(timers, 4)  # 1.0 s
    assert session.timeouts == [pytest.approx(1.0)]
    assert session.pings == 0


def test_a_late_sweep_times_out_rather_than_pings() -> None:
    # The loop was held up: the first sweep finds the session past both limits.
    liveness, clock, timers = setup(2.0, 6.0)
    session = FakeSession()
    liveness.add(session)
    clock.now += 10.0
    timers.fire()
    assert session.pings == 0
    assert session.timeouts == [pytest.approx(10.5)]


def test_a_discarded_session_is_no_longer_swept() -> None:
    liveness, _, timers = setup(2.0, 6.0)
    gone, stays = FakeSession(), FakeSession()
    liveness.add(gone)
    liveness.add(stays)
    liveness.discard(gone)
    liveness.discard(gone)  # twice: harmless
    liveness.discard(FakeSession())  # never added: harmless
    assert len(liveness) == 1
    sweeps(timers, 12)  # 6.0 s
    assert (gone.pings, gone.timeouts) == (0, [])
    assert stays.pings == 1
    assert len(stays.timeouts) == 1


def test_the_sweep_stops_once_the_last_session_is_discarded() -> None:
    liveness, _, timers = setup(2.0, 6.0)
    session = FakeSession()
    liveness.add(session)
    timers.fire()
    assert len(timers.pending) == 1
    liveness.discard(session)
    timers.fire()  # the sweep already scheduled runs, finds nobody
    assert timers.pending == []
    # A new session starts the sweep again.
    liveness.add(FakeSession())
    assert len(timers.pending) == 1


def test_a_session_timed_out_may_be_discarded_by_its_callback() -> None:
    # Session.idle_timeout closes the session, whose end discards it again.
    liveness, _, timers = setup(0.0, 1.0)

    class Closing(FakeSession):
        def idle_timeout(self, quiet: float) -> None:
            super().idle_timeout(quiet)
            liveness.discard(self)

    sessions = [Closing() for _ in range(3)]
    for session in sessions:
        liveness.add(session)
    sweeps(timers, 4)
    assert [len(session.timeouts) for session in sessions] == [1, 1, 1]
    assert len(liveness) == 0
    assert timers.pending == []


def test_stop_cancels_the_sweep() -> None:
    liveness, _, timers = setup(2.0, 6.0)
    liveness.add(FakeSession())
    (handle,) = timers.pending
    liveness.stop()
    assert handle.cancelled
    assert timers.pending == []
    liveness.stop()  # twice: harmless
    # The sessions are still there; a later add schedules a sweep again.
    assert len(liveness) == 1
    liveness.add(FakeSession())
    assert len(timers.pending) == 1


def test_stop_before_anything_was_scheduled_and_with_handles_without_cancel() -> None:
    clock = Clock()
    scheduled: list[Callable[[], None]] = []

    def call_later(delay: float, callback: Callable[[], None]) -> object:
        scheduled.append(callback)
        return None  # a call_later that returns nothing cancellable

    liveness = Liveness(2.0, 6.0, clock, call_later)
    liveness.stop()
    liveness.add(FakeSession())
    liveness.stop()
    assert len(scheduled) == 1
    # stop() forgot the handle: the next add schedules a sweep again.
    liveness.add(FakeSession())
    assert len(scheduled) == 2
