"""The server: listening socket, sessions, start-up and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from roomchat.protocol import RoomDetail
from roomchat.server.config import ServerConfig, load_rooms
from roomchat.server.rooms import RoomManager
from roomchat.server.session import ChatSession, Outbox

__all__ = ["ChatServer", "ServerStartError", "serve"]

log = logging.getLogger("roomchat.server")


class ServerStartError(Exception):
    """The server could not start (e.g. the port is taken). The message says why."""


class ChatServer:
    """A running roomchat server. Create it with :meth:`start`; stop it with :meth:`close`."""

    def __init__(self, config: ServerConfig, rooms: Iterable[RoomDetail]) -> None:
        self.config = config
        self.sessions: set[ChatSession] = set()
        self.outbox = Outbox(asyncio.get_running_loop(), config.coalesce_window)
        self.rooms = RoomManager(rooms, self.outbox.room_broadcast)
        self._server: asyncio.Server | None = None
        self._closed: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, config: ServerConfig) -> ChatServer:
        """Load the rooms and listen. Raises RoomsFileError or ServerStartError."""
        server = cls(config, load_rooms(config.rooms_path))
        loop = asyncio.get_running_loop()
        try:
            server._server = await loop.create_server(
                lambda: ChatSession(server),
                config.host,
                config.port,
                backlog=config.backlog,
                reuse_address=True,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ServerStartError(
                f"cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        return server

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def addresses(self) -> list[str]:
        assert self._server is not None
        return [_format_address(sock.getsockname()) for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting, close every session with its queued output, then wait.

        Idempotent: a second call waits for the first to finish.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            if self._server is not None:
                self._server.close()
            sessions = list(self.sessions)
            for session in sessions:
                session.close("server shutdown", announce=False)
            await self._wait_sessions_gone(self.config.shutdown_grace)
            for session in list(self.sessions):
                session.abort("server shutdown")
            await self._wait_sessions_gone(1.0)
            if self._server is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._server.wait_closed()
            log.info("server closed (%d sessions were open)", len(sessions))
        finally:
            self._closed.set_result(None)

    async def _wait_sessions_gone(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # connection_lost runs on the loop; give it turns until every session is gone.
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.01)


def _format_address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def _open_files_limit() -> str:
    try:
        import resource
    except ImportError:
        return "unknown"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


async def serve(config: ServerConfig) -> None:
    """Run until SIGINT or SIGTERM, then close every session and return."""
    server = await ChatServer.start(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "roomchat listening on %s with %d rooms "
        "(max line %d bytes, max pending output %d bytes, coalescing %d µs, open-files limit %s)",
        ", ".join(server.addresses),
        len(server.rooms.details),
        config.max_line_length,
        config.max_pending_output,
        round(config.coalesce_window * 1e6),
        _open_files_limit(),
    )
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.close()
