"""``roomchat serve``: flags, with ``ROOMCHAT_*`` environment variables as defaults."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from roomchat import system
from roomchat.server.app import ChatServer, ServerStartError, serve
from roomchat.server.bus import BusError, shared
from roomchat.server.config import (
    DEFAULT_BUS,
    DEFAULT_BUS_LEASE,
    DEFAULT_BUS_OUTAGE_QUEUE,
    DEFAULT_COALESCE_WINDOW,
    DEFAULT_FLOOD_BURST,
    DEFAULT_FLOOD_RATE,
    DEFAULT_HEARTBEAT,
    DEFAULT_HELLO_RATE,
    DEFAULT_HISTORY,
    DEFAULT_HOST,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PENDING_OUTPUT,
    DEFAULT_PORT,
    DEFAULT_RETAIN_DAYS,
    DEFAULT_RETAIN_MESSAGES,
    DEFAULT_STORE_BACKLOG,
    DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    HELLO_BURST,
    RoomsFileError,
    ServerConfig,
)
from roomchat.server.ops.logs import LOG_FORMATS, configure_logging
from roomchat.server.ops.workers import WorkerRole, WorkersError, supervise
from roomchat.server.shells.net import listen_address
from roomchat.server.store import StoreError

__all__ = ["command"]

log = logging.getLogger("roomchat.server")

_LOG_LEVELS = ["debug", "info", "warning", "error"]


@click.command(name="serve")
@click.option(
    "--host",
    envvar="ROOMCHAT_HOST",
    default=DEFAULT_HOST,
    show_default=True,
    show_envvar=True,
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="ROOMCHAT_PORT",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    show_envvar=True,
    help="TCP port to listen on (0: any free port).",
)
@click.option(
    "--rooms",
    "rooms_path",
    envvar="ROOMCHAT_ROOMS",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=True),
    help='JSON file of rooms: [{"name": ..., "description": ...}, ...]. '
    "[default: the rooms.json shipped in roomchat/server/resources]",
)
@click.option(
    "--log-level",
    envvar="ROOMCHAT_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    show_envvar=True,
    help="Logging threshold (logs go to stderr).",
)
@click.option(
    "--max-line-length",
    envvar="ROOMCHAT_MAX_LINE_LENGTH",
    default=DEFAULT_MAX_LINE_LENGTH,
    show_default=True,
    type=click.IntRange(min=64),
    show_envvar=True,
    help="Longest command line accepted, in bytes; a longer line closes the session.",
)
@click.option(
    "--max-pending-output",
    envvar="ROOMCHAT_MAX_PENDING_OUTPUT",
    default=DEFAULT_MAX_PENDING_OUTPUT,
    show_default=True,
    type=click.IntRange(min=1024),
    show_envvar=True,
    help="Unsent bytes past which a session is behind: the sessions posting into its rooms "
    "are not read until it drains (5 s at a time at most); it is cut off as a slow consumer "
    "when its unsent output stops shrinking for 2 s, or passes 4 times this.",
)
@click.option(
    "--coalesce-us",
    envvar="ROOMCHAT_COALESCE_US",
    default=int(DEFAULT_COALESCE_WINDOW * 1e6),
    show_default=True,
    type=click.IntRange(0, 100_000),
    show_envvar=True,
    help="Microseconds over which steady traffic is gathered into one write per "
    "session (adds at most this much latency; 0: off).",
)
@click.option(
    "--bus",
    "bus_url",
    envvar="ROOMCHAT_BUS",
    default=DEFAULT_BUS,
    show_default=True,
    show_envvar=True,
    help="Where rooms meet: memory:// (this process only), redis://HOST:PORT[/DB], "
    "redis+cluster://HOST:PORT[,HOST:PORT...] or redis+sentinel://HOST:PORT[,...]/SERVICE "
    "(instances share rooms through Redis).",
)
@click.option(
    "--bus-lease",
    envvar="ROOMCHAT_BUS_LEASE",
    default=DEFAULT_BUS_LEASE,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(1.0, 3600.0),
    help="With Redis: seconds after which an instance that stopped renewing its lease "
    "(killed, machine lost) is removed by the others and its users announced as left.",
)
@click.option(
    "--bus-outage-queue",
    envvar="ROOMCHAT_BUS_OUTAGE_QUEUE",
    default=DEFAULT_BUS_OUTAGE_QUEUE,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(0),
    metavar="BYTES",
    help="With Redis: bytes of messages posted while Redis is away, kept to share once "
    "it is back (they are delivered on this instance at once); beyond, counted and logged.",
)
@click.option(
    "--workers",
    envvar="ROOMCHAT_WORKERS",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    show_envvar=True,
    help="Processes sharing the port (SO_REUSEPORT) and the bus, under one supervising "
    "parent; more than 1 needs a Redis --bus.",
)
@click.option(
    "--tls-cert",
    envvar="ROOMCHAT_TLS_CERT",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM certificate chain: serve TLS (1.2 or newer) instead of plain TCP. Needs --tls-key.",
)
@click.option(
    "--tls-key",
    envvar="ROOMCHAT_TLS_KEY",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-handshake-timeout",
    envvar="ROOMCHAT_TLS_HANDSHAKE_TIMEOUT",
    default=DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(0.1, 600.0),
    help="Seconds a client has to complete the TLS handshake before it is dropped.",
)
@click.option(
    "--max-connections",
    envvar="ROOMCHAT_MAX_CONNECTIONS",
    default=0,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(min=0),
    help="Connections open at once; more are closed before their login "
    "(0: no limit but the open-files one).",
)
@click.option(
    "--max-connections-per-ip",
    envvar="ROOMCHAT_MAX_CONNECTIONS_PER_IP",
    default=0,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(min=0),
    help="Connections open at once from one IP address (0: no limit).",
)
@click.option(
    "--metrics",
    "metrics",
    envvar="ROOMCHAT_METRICS",
    default="",
    show_envvar=True,
    metavar="HOST:PORT",
    help="Serve /metrics (Prometheus), /healthz and /readyz over HTTP at HOST:PORT "
    "(port 0: any free port; docs/operating.md). [default: off]",
)
@click.option(
    "--log-format",
    envvar="ROOMCHAT_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    show_envvar=True,
    help="text: one readable line per event; json: one JSON object per line.",
)
@click.option(
    "--ws",
    envvar="ROOMCHAT_WS",
    default="",
    show_envvar=True,
    metavar="HOST:PORT",
    callback=lambda ctx, param, value: _ws_address(value),
    help="Serve the web client at http://HOST:PORT/ and WebSocket sessions at /ws "
    "(e.g. 127.0.0.1:8081). [default: off]",
)
@click.option(
    "--ws-origin",
    "ws_origins",
    envvar="ROOMCHAT_WS_ORIGIN",
    multiple=True,
    show_envvar=True,
    metavar="ORIGIN",
    help="A page origin (scheme://host[:port]) allowed to open WebSocket sessions; "
    "repeat or separate with spaces/commas; * allows any. [default: same origin only]",
)
@click.option(
    "--history",
    envvar="ROOMCHAT_HISTORY",
    default=DEFAULT_HISTORY,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(0, 10_000),
    help="v2: messages kept per room for history and catch-up (0: none).",
)
@click.option(
    "--store",
    envvar="ROOMCHAT_STORE",
    default=None,
    show_envvar=True,
    metavar="URL",
    help="Where messages last: sqlite:///PATH, postgresql://USER@HOST/DB (instances "
    "sharing rooms over Redis), or memory:// (nothing kept across restarts). "
    "[default: the SQLite file roomchat.sqlite3 in --data-dir]",
)
@click.option(
    "--data-dir",
    envvar="ROOMCHAT_DATA_DIR",
    default=None,
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The SQLite store's directory, created on first use. "
    "[default: $XDG_STATE_HOME/roomchat, else ~/.local/state/roomchat]",
)
@click.option(
    "--store-backlog",
    envvar="ROOMCHAT_STORE_BACKLOG",
    default=DEFAULT_STORE_BACKLOG,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(1),
    help="Messages waiting for a slow or unreachable store, at most; beyond that new "
    "ones are delivered but not kept (counted and logged).",
)
@click.option(
    "--retain-messages",
    envvar="ROOMCHAT_RETAIN_MESSAGES",
    default=DEFAULT_RETAIN_MESSAGES,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(0),
    help="Messages each room keeps in the store (0: all); a room's own setting wins.",
)
@click.option(
    "--retain-days",
    envvar="ROOMCHAT_RETAIN_DAYS",
    default=DEFAULT_RETAIN_DAYS,
    show_default=True,
    show_envvar=True,
    type=click.IntRange(0),
    help="Days each room keeps its messages (0: no limit); a room's own setting wins.",
)
@click.option(
    "--heartbeat",
    envvar="ROOMCHAT_HEARTBEAT",
    default=DEFAULT_HEARTBEAT,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help="v2: seconds without input before the server pings a session (0: no pings).",
)
@click.option(
    "--idle-timeout",
    envvar="ROOMCHAT_IDLE_TIMEOUT",
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help="v2: seconds without input before a session is closed (0: never).",
)
@click.option(
    "--flood-rate",
    envvar="ROOMCHAT_FLOOD_RATE",
    default=DEFAULT_FLOOD_RATE,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help="Commands per second a session may send before it is read more slowly (0: off).",
)
@click.option(
    "--hello-rate",
    envvar="ROOMCHAT_HELLO_RATE",
    default=DEFAULT_HELLO_RATE,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help=f"v2 hellos per second for one name, after a burst of {HELLO_BURST:g}; more are "
    "refused with rate_limited (0: no limit).",
)
@click.option(
    "--flood-burst",
    envvar="ROOMCHAT_FLOOD_BURST",
    default=DEFAULT_FLOOD_BURST,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=1),
    help="Commands a session may send at once above --flood-rate.",
)
@click.option(
    "--auth-secret-file",
    envvar="ROOMCHAT_AUTH_SECRET_FILE",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="v2: the token secret (see `roomchat token`); names then need a token. "
    "Instances sharing a bus need the same file.",
)
@click.option(
    "--user-rate",
    envvar="ROOMCHAT_USER_RATE",
    default=0.0,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=0),
    help="Commands per second one user may send over all its sessions, on every "
    "instance of the bus; past --user-burst it is read more slowly (0: off).",
)
@click.option(
    "--user-burst",
    envvar="ROOMCHAT_USER_BURST",
    default=20.0,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(min=1),
    help="Commands a user may send at once above --user-rate.",
)
@click.option(
    "--user-rooms/--no-user-rooms",
    envvar="ROOMCHAT_USER_ROOMS",
    default=False,
    show_default=True,
    show_envvar=True,
    help="v2: users may create rooms (else only admins and the operator API).",
)
@click.option(
    "--admin",
    "admins",
    envvar="ROOMCHAT_ADMIN",
    multiple=True,
    show_envvar=True,
    metavar="NAME",
    help="A server-wide admin (repeat; docs/moderation.md). Admin rights need the name "
    "proven by a token (JWT or roomchat's own).",
)
@click.option(
    "--api-key-file",
    envvar="ROOMCHAT_API_KEY_FILE",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Serve the operator API under /api/v1/ on --metrics's listener; one key per "
    "line, 'read-only KEY' for keys that may only read (docs/api.md).",
)
@click.option(
    "--jwt-key-file",
    envvar="ROOMCHAT_JWT_KEY_FILE",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="v2: accept JWT logins signed with this key: a PEM public key (RS256, ES256) "
    "or an HMAC secret (HS256).",
)
@click.option(
    "--jwt-jwks-file",
    envvar="ROOMCHAT_JWT_JWKS_FILE",
    default=None,
    show_envvar=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="v2: accept JWT logins signed with a key of this JSON Web Key Set.",
)
@click.option(
    "--jwt-audience",
    envvar="ROOMCHAT_JWT_AUDIENCE",
    default=None,
    show_envvar=True,
    help="v2: the `aud` a JWT must carry.",
)
@click.option(
    "--jwt-issuer",
    envvar="ROOMCHAT_JWT_ISSUER",
    default=None,
    show_envvar=True,
    help="v2: the `iss` a JWT must carry.",
)
def command(
    host: str,
    port: int,
    rooms_path: Path | None,
    log_level: str,
    max_line_length: int,
    max_pending_output: int,
    coalesce_us: int,
    bus_url: str,
    bus_lease: float,
    bus_outage_queue: int,
    workers: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_handshake_timeout: float,
    max_connections: int,
    max_connections_per_ip: int,
    metrics: str,
    log_format: str,
    ws: str,
    ws_origins: tuple[str, ...],
    history: int,
    store: str | None,
    data_dir: Path | None,
    store_backlog: int,
    retain_messages: int,
    retain_days: int,
    heartbeat: float,
    idle_timeout: float,
    flood_rate: float,
    flood_burst: float,
    hello_rate: float,
    auth_secret_file: Path | None,
    user_rate: float,
    user_burst: float,
    user_rooms: bool,
    admins: tuple[str, ...],
    api_key_file: Path | None,
    jwt_key_file: Path | None,
    jwt_jwks_file: Path | None,
    jwt_audience: str | None,
    jwt_issuer: str | None,
) -> None:
    """Run the chat server until Ctrl-C or SIGTERM."""
    if workers > 1 and not shared(bus_url):
        raise click.UsageError(
            f"--workers {workers} needs a shared bus: add --bus redis://HOST:PORT "
            "(the in-process bus cannot share rooms between processes)"
        )
    worker = WorkerRole.from_environment()  # set by a --workers parent
    configure_logging(
        log_level, log_format.lower(), worker=None if worker is None else worker.index
    )
    metrics_address = None
    if metrics.strip():
        try:
            metrics_address = listen_address(metrics)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--metrics'") from None
    config = ServerConfig(
        host=host,
        port=port,
        rooms_path=rooms_path,
        max_line_length=max_line_length,
        max_pending_output=max_pending_output,
        coalesce_window=coalesce_us / 1e6,
        bus_url=bus_url,
        bus_lease=bus_lease,
        bus_outage_queue=bus_outage_queue,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_handshake_timeout=tls_handshake_timeout,
        max_connections=max_connections,
        max_connections_per_ip=max_connections_per_ip,
        metrics=metrics_address,
        ws=ws.strip(),
        ws_origins=tuple(o for item in ws_origins for o in item.replace(",", " ").split()),
        history=history,
        store=store,
        data_dir=data_dir,
        store_backlog=store_backlog,
        retain_messages=retain_messages,
        retain_days=retain_days,
        heartbeat=heartbeat,
        idle_timeout=idle_timeout,
        flood_rate=flood_rate,
        flood_burst=flood_burst,
        hello_rate=hello_rate,
        auth_secret_file=auth_secret_file,
        user_rate=user_rate,
        user_burst=user_burst,
        user_rooms=user_rooms,
        admins=tuple(name for item in admins for name in item.replace(",", " ").split()),
        api_key_file=api_key_file,
        jwt_key_file=jwt_key_file,
        jwt_jwks_file=jwt_jwks_file,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
    )
    # One file descriptor per session: lift the soft limit (often 1024) to the hard one.
    if problem := system.raise_open_files():
        log.warning("%s", problem)
    try:
        if workers > 1:
            if status := supervise(config, workers, log_level, log_format.lower()):
                sys.exit(status)
        elif worker is not None:
            _run(worker.configure(config), worker.listening)
        else:
            _run(config)
    except (RoomsFileError, ServerStartError, BusError, WorkersError, StoreError) as exc:
        if worker is not None:
            worker.failed(str(exc))  # the parent says it, once for all workers
        raise click.ClickException(str(exc)) from None


def _run(config: ServerConfig, on_listening: Callable[[ChatServer], None] | None = None) -> None:
    system.run(serve(config, on_listening=on_listening))


def _ws_address(value: str) -> str:
    value = value.strip()
    if value:
        try:
            listen_address(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--ws'") from None
    return value
