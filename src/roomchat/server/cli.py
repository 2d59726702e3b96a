"""``roomchat serve``: flags, with ``ROOMCHAT_*`` environment variables as defaults."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from roomchat.protocol import DEFAULT_MAX_LINE_LENGTH
from roomchat.server.app import ServerStartError, serve
from roomchat.server.bus import BusError
from roomchat.server.config import (
    DEFAULT_COALESCE_WINDOW,
    DEFAULT_MAX_PENDING_OUTPUT,
    RoomsFileError,
    ServerConfig,
)

__all__ = ["command"]

log = logging.getLogger("roomchat.server")

_LOG_LEVELS = ["debug", "info", "warning", "error"]


@click.command(name="serve")
@click.option(
    "--host",
    envvar="ROOMCHAT_HOST",
    default="0.0.0.0",
    show_default=True,
    show_envvar=True,
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="ROOMCHAT_PORT",
    default=8080,
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
    help="Unsent bytes a session may have before it is cut off as a slow consumer.",
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
    default="memory://",
    show_default=True,
    show_envvar=True,
    help="Where rooms meet: memory:// (this process only), redis://HOST:PORT[/DB] or "
    "redis+cluster://HOST:PORT[,HOST:PORT...] (instances share rooms through Redis).",
)
@click.option(
    "--bus-lease",
    envvar="ROOMCHAT_BUS_LEASE",
    default=10.0,
    show_default=True,
    show_envvar=True,
    type=click.FloatRange(1.0, 3600.0),
    help="With Redis: seconds after which an instance that stopped renewing its lease "
    "(killed, machine lost) is removed by the others and its users announced as left.",
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
    ws: str,
    ws_origins: tuple[str, ...],
) -> None:
    """Run the chat server until Ctrl-C or SIGTERM."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = ServerConfig(
        host=host,
        port=port,
        rooms_path=rooms_path,
        max_line_length=max_line_length,
        max_pending_output=max_pending_output,
        coalesce_window=coalesce_us / 1e6,
        bus_url=bus_url,
        bus_lease=bus_lease,
        ws=ws.strip(),
        ws_origins=tuple(o for item in ws_origins for o in item.replace(",", " ").split()),
    )
    _raise_open_files_limit()
    try:
        _run(config)
    except (RoomsFileError, ServerStartError, BusError) as exc:
        raise click.ClickException(str(exc)) from None


def _ws_address(value: str) -> str:
    from roomchat.server.web import parse_address

    value = value.strip()
    if value:
        try:
            parse_address(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--ws'") from None
    return value


def _raise_open_files_limit() -> None:
    # One file descriptor per session: lift the soft limit (often 1024) to the hard one.
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


def _run(config: ServerConfig) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on Windows): plain asyncio works too
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
