"""What every session of a server shares: its rooms and counters, the limits, and the v2
settings (names, tokens, heartbeats, flood control, shutdown) with their small helpers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from roomchat.server.auth import Authenticator
from roomchat.server.config import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_SHUTDOWN_RECONNECT_MS,
    DEFAULT_TOKEN_TTL,
    HELLO_BURST,
)
from roomchat.server.core.community import Community, MemoryStore
from roomchat.server.core.directory import Directory
from roomchat.server.core.flood import HelloLimiter, Report, UserBuckets
from roomchat.server.core.keeping import Keeper
from roomchat.server.core.liveness import Liveness
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.ports import Archiving, CommunityStore
from roomchat.server.core.rooms import ChatRoom
from roomchat.server.core.stats import ServerStats

__all__ = ["SessionContext"]


def _no_timer(delay: float, callback: Callable[[], None]) -> object:
    raise RuntimeError("no timers in this context (give SessionContext a call_later)")


def _relay_here(room: ChatRoom, event: bytes) -> None:
    room.relay(event)


@dataclass(eq=False)
class SessionContext:
    """The server's side of every session. ``rooms``, ``stats`` and ``names`` are the
    server's own (no defaults: a session wired to the wrong ones would count and route
    into nowhere); the settings default to ``roomchat serve``'s defaults (config.py),
    and the heartbeats and flood control are off unless asked for."""

    rooms: Directory
    stats: ServerStats
    names: NameRegistry
    #: Longest command line in bytes; a longer one ends the session.
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    #: HMAC secret for tokens: the --auth-secret-file's, else random per process.
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: Tokens-required mode: every chosen name needs a valid token.
    require_tokens: bool = False
    #: JWT logins (--jwt-key-file, --jwt-jwks-file), or None: roomchat's tokens only.
    authenticator: Authenticator | None = None
    token_ttl: int = DEFAULT_TOKEN_TTL
    #: Seconds without input before a ``ping`` (0: none) and before ``idle_timeout``.
    heartbeat: float = 0.0
    idle_timeout: float = 0.0
    #: Commands per second and burst of each session's bucket (rate 0: no flood control).
    flood_rate: float = 0.0
    flood_burst: float = 0.0
    #: v2 hellos per second per name after a burst (0: no limit): hello_limiter.
    hello_rate: float = 0.0
    #: The shutdown notice's advice to clients.
    reconnect_ms: int = DEFAULT_SHUTDOWN_RECONNECT_MS
    shutdown_msg: str = "server shutting down"
    clock: Callable[[], float] = time.monotonic
    call_later: Callable[[float, Callable[[], None]], object] = _no_timer
    #: Where rooms, policies and audit logs live: None is this process (MemoryStore);
    #: with Redis, the bus's (bus/redis/community.py).
    store: CommunityStore | None = None
    #: Whether users may create rooms (--user-rooms); server admins (--admin NAME).
    user_rooms: bool = False
    admins: tuple[str, ...] = ()
    #: Per-user send limits (--user-rate, --user-burst; rate 0: off), and where the
    #: instances add their users' spending up (the bus's; None: this process only).
    user_rate: float = 0.0
    user_burst: float = 0.0
    user_report: Report | None = None
    #: The lasting history (server/store/archive.Archive; None: none, the v2 commands
    #: about it are refused with unavailable), and how the bus relays a v2-only event
    #: to a room's members on every instance (None: this process's room itself).
    archive: Archiving | None = None
    relay: Callable[[ChatRoom, bytes], None] | None = None
    #: How an admin's purge reaches every instance's rooms (None: this process's room).
    forget: Callable[[ChatRoom], None] | None = None
    keeper: Keeper = field(init=False)
    user_buckets: UserBuckets | None = field(init=False, default=None)
    community: Community = field(init=False)
    liveness: Liveness | None = field(init=False, default=None)
    hello_limiter: HelloLimiter | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.community = Community(
            self.rooms,
            self.store if self.store is not None else MemoryStore(),
            user_rooms=self.user_rooms,
            admins=self.admins,
        )
        self.keeper = Keeper(
            self.rooms, self.archive, self.relay or _relay_here, self.clock, self.forget
        )
        if self.heartbeat > 0 or self.idle_timeout > 0:
            self.liveness = Liveness(self.heartbeat, self.idle_timeout, self.clock, self.call_later)
        if self.user_rate > 0:
            self.user_buckets = UserBuckets(
                self.user_rate,
                max(1.0, self.user_burst),
                self.clock,
                self.call_later,
                time.time,
                self.user_report,
            )
        if self.hello_rate > 0:
            self.hello_limiter = HelloLimiter(self.hello_rate, HELLO_BURST, self.clock)

    @property
    def announced_heartbeat(self) -> int:
        """``welcome``'s ``hb``: whole seconds, at least 1 when heartbeats are on."""
        if self.heartbeat <= 0:
            return 0
        return max(1, round(self.heartbeat))
