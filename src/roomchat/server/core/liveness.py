"""Heartbeats for v2 sessions (docs/protocol.md, "Heartbeats"): one periodic sweep per
server, not a timer per session.

A session notes that it heard from its client by setting ``heard`` (one attribute store
per received batch, in Session.receive_data). Every ``period`` the sweep looks at each v2
session: heard since the last sweep -> quiet since now; otherwise, quiet for ``hb``
seconds -> a ``ping`` (once per quiet spell); quiet for the idle timeout -> the session
is told ``idle_timeout`` and closed. v1 sessions are not swept: they get TCP keepalive
(connection.py), so a half-dead v1 peer is found by the kernel instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Liveness", "Swept"]


class Swept(Protocol):
    heard: bool
    quiet_since: float
    pinged: bool

    def send_ping(self) -> None: ...

    def idle_timeout(self, quiet: float) -> None: ...


class Liveness:
    __slots__ = ("_call_later", "_clock", "_handle", "_sessions", "heartbeat", "idle", "period")

    def __init__(
        self,
        heartbeat: float,
        idle_timeout: float,
        clock: Callable[[], float],
        call_later: Callable[[float, Callable[[], None]], object],
    ) -> None:
        self.heartbeat = heartbeat
        self.idle = idle_timeout
        # Once a second, or more often for small test values: the timings are kept to
        # within one period.
        limits = [x for x in (heartbeat, idle_timeout) if x > 0]
        shortest = min(limits) if limits else 4.0
        self.period = min(1.0, shortest / 4)
        self._clock = clock
        self._call_later = call_later
        self._sessions: dict[Swept, None] = {}
        self._handle: object | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, session: Swept) -> None:
        session.heard = False
        session.quiet_since = self._clock()
        session.pinged = False
        self._sessions[session] = None
        if self._handle is None:
            self._handle = self._call_later(self.period, self._sweep)

    def discard(self, session: Swept) -> None:
        self._sessions.pop(session, None)

    def stop(self) -> None:
        cancel = getattr(self._handle, "cancel", None)
        if cancel is not None:
            cancel()
        self._handle = None

    def _sweep(self) -> None:
        self._handle = None
        now = self._clock()
        heartbeat, idle = self.heartbeat, self.idle
        for session in list(self._sessions):
            if session.heard:
                session.heard = False
                session.quiet_since = now
                session.pinged = False
                continue
            quiet = now - session.quiet_since
            if idle and quiet >= idle:
                self._sessions.pop(session, None)
                session.idle_timeout(quiet)
            elif heartbeat and quiet >= heartbeat and not session.pinged:
                session.pinged = True
                session.send_ping()
        if self._sessions:
            self._handle = self._call_later(self.period, self._sweep)
