"""Server configuration and the rooms file (docs/protocol.md, "Room file")."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import msgspec

from roomchat import tokens
from roomchat.protocol import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_PORT,
    HISTORY_MAX,
    RoomDetail,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_BUS",
    "DEFAULT_BUS_LEASE",
    "DEFAULT_BUS_OUTAGE_QUEUE",
    "DEFAULT_COALESCE_WINDOW",
    "DEFAULT_FLOOD_BURST",
    "DEFAULT_FLOOD_RATE",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_HELLO_RATE",
    "DEFAULT_HISTORY",
    "DEFAULT_HOST",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PENDING_OUTPUT",
    "DEFAULT_PORT",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_SHUTDOWN_RECONNECT_MS",
    "DEFAULT_TLS_HANDSHAKE_TIMEOUT",
    "DEFAULT_TOKEN_TTL",
    "HELLO_BURST",
    "RoomsFileError",
    "SecretFileError",
    "ServerConfig",
    "default_rooms_path",
    "load_rooms",
    "load_secret",
    "parse_rooms",
]

# Every default of ``roomchat serve``, once: the flags (cli.py), ServerConfig and the
# parts that take a setting (sessions, the bus) all use these.
DEFAULT_HOST = "0.0.0.0"
#: Where rooms meet: this process.
DEFAULT_BUS = "memory://"
#: With Redis: seconds an instance stays registered without renewing its lease.
DEFAULT_BUS_LEASE = 10.0
#: Bytes of messages posted during a Redis outage kept to post once it is back.
DEFAULT_BUS_OUTAGE_QUEUE = 32 * 1024 * 1024
#: Seconds shutdown waits for sessions to flush before dropping them.
DEFAULT_SHUTDOWN_GRACE = 2.0
DEFAULT_BACKLOG = 4096
#: Seconds a client has to complete the TLS handshake.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 5.0

#: Output a session may have waiting before it counts as a slow consumer and is cut
#: off (Redis' client-output-buffer-limit and Centrifugo use the same idea).
DEFAULT_MAX_PENDING_OUTPUT = 1024 * 1024

#: ``roomchat serve``'s coalescing window, in seconds (see ServerConfig.coalesce_window).
DEFAULT_COALESCE_WINDOW = 0.003

#: Flood control per session: commands per second, and the burst allowed above that.
#: Far above what a person types or pastes (a 2000-line paste goes through at once), so
#: only scripts notice; low enough that one connection cannot take a whole CPU alone.
#: Load tests turn it off (benchmarks/run.py passes --flood-rate 0).
DEFAULT_FLOOD_RATE = 1000.0
DEFAULT_FLOOD_BURST = 2000.0
#: v2 hellos per second for one name (a client reconnecting in a loop), after a burst of
#: HELLO_BURST: beyond that the hello is refused with ``rate_limited``.
DEFAULT_HELLO_RATE = 1.0
HELLO_BURST = 10.0
#: v2: messages kept per room for history and catch-up.
DEFAULT_HISTORY = HISTORY_MAX
#: The message store: messages handed over but not yet written, at most (beyond that
#: new ones are not kept, counted and logged), and what each room keeps by default.
DEFAULT_STORE_BACKLOG = 100_000
DEFAULT_RETAIN_MESSAGES = 100_000
DEFAULT_RETAIN_DAYS = 0
#: Seconds between two retention sweeps.
DEFAULT_RETENTION_SWEEP = 60.0
#: v2: seconds without input before a ping, and before the close (docs/protocol.md).
DEFAULT_HEARTBEAT = float(DEFAULT_HEARTBEAT_S)
DEFAULT_IDLE_TIMEOUT = float(DEFAULT_IDLE_TIMEOUT_S)
#: Lifetime of the token a ``welcome`` carries (docs/protocol.md: a day).
DEFAULT_TOKEN_TTL = 24 * 3600
#: The shutdown notice's ``reconnect_ms``.
DEFAULT_SHUTDOWN_RECONNECT_MS = 2000


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``roomchat serve`` can be told. One place; the CLI fills it in."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: None: the rooms file shipped inside the package.
    rooms_path: Path | None = None
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT
    #: Seconds over which steady traffic is gathered into one loop turn (0: off).
    #: See outbox.Outbox: trades at most this much latency for far fewer wake-ups. The
    #: wait ends early for new connections and bus traffic.
    coalesce_window: float = DEFAULT_COALESCE_WINDOW
    #: Where rooms meet: "memory://" (this process) or "redis://HOST:PORT[/DB]" /
    #: "redis+cluster://HOST:PORT[,HOST:PORT...]" / "redis+sentinel://HOST:PORT/SERVICE"
    #: (instances share rooms).
    bus_url: str = DEFAULT_BUS
    #: With Redis: seconds an instance stays registered without renewing its lease (it
    #: renews every third of it). An instance that dies is purged within about this.
    bus_lease: float = DEFAULT_BUS_LEASE
    bus_outage_queue: int = DEFAULT_BUS_OUTAGE_QUEUE
    #: How long shutdown waits for sessions to flush before dropping them.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    backlog: int = DEFAULT_BACKLOG
    #: SO_REUSEPORT: several processes listen on the same port (``--workers``).
    reuse_port: bool = False
    #: TLS: the certificate chain and its private key, PEM files (both or neither).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Seconds a client has to complete the TLS handshake before it is dropped (with a
    #: log line): a plain-text client that sends nothing is gone after this.
    tls_handshake_timeout: float = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    #: Connections open at once (0: no limit but the open-files one); above it a new
    #: connection is closed at once, before its login.
    max_connections: int = 0
    #: The same, per client IP address (0: no limit).
    max_connections_per_ip: int = 0
    #: (host, port) of the HTTP endpoint for /metrics, /healthz, /readyz (port 0: any
    #: free port, see ChatServer.metrics_port); None: off.
    metrics: tuple[str, int] | None = None
    #: ``--ws HOST:PORT``: the web client and WebSocket sessions (server/shells/ws.py); "" off.
    ws: str = ""
    #: ``--ws-origin``: pages allowed to open WebSocket sessions; () same origin, "*" any.
    ws_origins: tuple[str, ...] = ()
    #: v2: messages kept per room for history and catch-up (0: none; seq still counts).
    history: int = DEFAULT_HISTORY
    #: ``--store``: where messages last (server/store/): "memory://" (this default:
    #: nothing outlives the process), "sqlite:///PATH", "postgresql://…", or None: the
    #: SQLite file in ``data_dir`` (``roomchat serve``'s default).
    store: str | None = "memory://"
    #: ``--data-dir``: the SQLite store's directory (None: the user's state directory).
    data_dir: Path | None = None
    store_backlog: int = DEFAULT_STORE_BACKLOG
    #: Retention per room (0: no limit): messages kept and days kept; a room's own
    #: setting (set_retention, the API) overrides them.
    retain_messages: int = DEFAULT_RETAIN_MESSAGES
    retain_days: int = DEFAULT_RETAIN_DAYS
    retention_sweep: float = DEFAULT_RETENTION_SWEEP
    #: v2: seconds without input before the server pings (0: no heartbeats), and before
    #: it closes the session with idle_timeout (0: never).
    heartbeat: float = DEFAULT_HEARTBEAT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Flood control, every session: commands per second and burst (rate 0: off).
    flood_rate: float = DEFAULT_FLOOD_RATE
    flood_burst: float = DEFAULT_FLOOD_BURST
    #: v2 hellos per second per name, after a burst of HELLO_BURST (0: no limit).
    hello_rate: float = DEFAULT_HELLO_RATE
    #: v2 tokens: the HMAC secret's file. None: a random secret per process (tokens do
    #: not survive a restart nor work on another instance).
    auth_secret_file: Path | None = None
    #: Tokens-required mode (every chosen name needs a token). None: on exactly when
    #: ``auth_secret_file`` is given.
    require_tokens: bool | None = None
    #: Lifetime of the tokens the server hands out in ``welcome``, seconds.
    token_ttl: int = DEFAULT_TOKEN_TTL
    #: The shutdown notice's ``reconnect_ms``.
    shutdown_reconnect_ms: int = DEFAULT_SHUTDOWN_RECONNECT_MS
    #: ``--user-rate`` / ``--user-burst``: commands per second per user, over all its
    #: sessions on all instances (rate 0: off; core/flood.py UserBuckets).
    user_rate: float = 0.0
    user_burst: float = 20.0
    #: ``--user-rooms``: users may create rooms (else admins and the API only).
    user_rooms: bool = False
    #: ``--admin NAME``: server-wide admins (when their name is proven by a token).
    admins: tuple[str, ...] = ()
    #: ``--api-key-file``: keys of the operator API (/api/v1/); None: no API.
    api_key_file: Path | None = None
    #: ``--jwt-key-file`` / ``--jwt-jwks-file``: JWT login (server/auth.py); the
    #: audience and issuer a token must name (None: not checked).
    jwt_key_file: Path | None = None
    jwt_jwks_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None


class SecretFileError(Exception):
    """The --auth-secret-file is missing, unreadable or too short."""


def load_secret(path: Path) -> bytes:
    """The token secret: the file's bytes without trailing whitespace (docs/protocol.md)."""
    try:
        secret = path.read_bytes().rstrip()
    except OSError as exc:
        raise SecretFileError(
            f"cannot read the secret file {str(path)!r}: {exc.strerror or exc}"
        ) from None
    if len(secret) < tokens.MIN_SECRET_BYTES:
        raise SecretFileError(
            f"the secret in {str(path)!r} is shorter than {tokens.MIN_SECRET_BYTES} bytes"
        )
    return secret


class RoomsFileError(Exception):
    """The rooms file is missing, unreadable or not a valid list of rooms."""


class _RoomSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    name: str
    description: str


def default_rooms_path() -> Path:
    """The rooms file packaged with roomchat (``roomchat/server/resources/rooms.json``)."""
    return Path(str(resources.files("roomchat.server") / "resources" / "rooms.json"))


def parse_rooms(data: bytes, source: str = "rooms file") -> tuple[RoomDetail, ...]:
    """Validate a rooms file's contents: a JSON list of ``{"name", "description"}``."""
    try:
        specs = msgspec.json.decode(data, type=list[_RoomSpec])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise RoomsFileError(f"{source}: not a valid rooms list: {exc}") from None
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if not spec.name.strip():
            raise RoomsFileError(f"{source}: room #{index + 1} has an empty name")
        if spec.name in seen:
            raise RoomsFileError(f"{source}: duplicate room name {spec.name!r}")
        seen.add(spec.name)
    if not specs:
        raise RoomsFileError(f"{source}: the list of rooms is empty")
    return tuple(RoomDetail(spec.name, spec.description) for spec in specs)


def load_rooms(path: Path | None = None) -> tuple[RoomDetail, ...]:
    """Read and validate the rooms file (the packaged one when ``path`` is None)."""
    path = default_rooms_path() if path is None else path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RoomsFileError(f"rooms file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise RoomsFileError(f"rooms file {str(path)!r} is a directory") from None
    except OSError as exc:
        raise RoomsFileError(f"cannot read rooms file {str(path)!r}: {exc.strerror}") from None
    return parse_rooms(data, f"rooms file {str(path)!r}")
