"""What every session of a server shares beyond its rooms: the v2 settings (names,
tokens, heartbeats, flood control, shutdown) and their small helpers."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from roomchat.protocol import HISTORY_MAX
from roomchat.server.config import HELLO_BURST
from roomchat.server.core.flood import HelloLimiter
from roomchat.server.core.liveness import Liveness
from roomchat.server.core.names import NameRegistry

__all__ = ["DEFAULT_TOKEN_TTL", "SessionContext"]

#: Lifetime of the token a ``welcome`` carries (docs/protocol.md: a day by default).
DEFAULT_TOKEN_TTL = 24 * 3600


def _no_timer(delay: float, callback: Callable[[], None]) -> object:
    raise RuntimeError("no timers in this context (give SessionContext a call_later)")


@dataclass(eq=False)
class SessionContext:
    names: NameRegistry = field(default_factory=NameRegistry)
    #: HMAC secret for tokens: the --auth-secret-file's, else random per process.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: Tokens-required mode: every chosen name needs a valid token.
    require_tokens: bool = False
    token_ttl: int = DEFAULT_TOKEN_TTL
    #: Seconds without input before a ``ping`` (0: none) and before ``idle_timeout``.
    heartbeat: float = 0.0
    idle_timeout: float = 0.0
    #: Commands per second and burst of each session's bucket (rate 0: no flood control).
    flood_rate: float = 0.0
    flood_burst: float = 0.0
    #: v2 hellos per second per name after a burst (0: no limit): hello_limiter.
    hello_rate: float = 0.0
    history: int = HISTORY_MAX
    #: The shutdown notice's advice to clients.
    reconnect_ms: int = 2000
    shutdown_msg: str = "server shutting down"
    clock: Callable[[], float] = time.monotonic
    call_later: Callable[[float, Callable[[], None]], object] = _no_timer
    liveness: Liveness | None = None
    hello_limiter: HelloLimiter | None = None
    #: Counters: "throttled" (flood episodes), "idle_timeouts", "pings", "hellos",
    #: "hellos_refused".
    stats: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.liveness is None and (self.heartbeat > 0 or self.idle_timeout > 0):
            self.liveness = Liveness(self.heartbeat, self.idle_timeout, self.clock, self.call_later)
        if self.hello_limiter is None and self.hello_rate > 0:
            self.hello_limiter = HelloLimiter(self.hello_rate, HELLO_BURST, self.clock)

    @property
    def announced_heartbeat(self) -> int:
        """``welcome``'s ``hb``: whole seconds, at least 1 when heartbeats are on."""
        if self.heartbeat <= 0:
            return 0
        return max(1, round(self.heartbeat))
