"""The server: listening socket, sessions, start-up and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from roomchat.protocol import RoomDetail
from roomchat.server.bus import Bus, open_bus
from roomchat.server.config import ServerConfig, load_rooms
from roomchat.server.connection import ChatConnection, Hub
from roomchat.server.outbox import Outbox
from roomchat.server.rooms import RoomManager
from roomchat.server.web import WebServer

__all__ = ["ChatServer", "ServerStartError", "serve"]

log = logging.getLogger("roomchat.server")


class ServerStartError(Exception):
    """The server could not start (e.g. the port is taken). The message says why."""


class ChatServer:
    """A running roomchat server. Create it with :meth:`start`; stop it with :meth:`close`."""

    def __init__(self, config: ServerConfig, rooms: Iterable[RoomDetail]) -> None:
        self.config = config
        loop = asyncio.get_running_loop()
        self.outbox = Outbox(loop.call_soon, config.coalesce_window)
        self.bus: Bus = open_bus(config.bus_url, self.outbox, lease=config.bus_lease)
        self.rooms = RoomManager(rooms, self.bus, self.bus.presence, self.outbox.room_fanned_out)
        self.hub = Hub(
            rooms=self.rooms,
            outbox=self.outbox,
            max_line_length=config.max_line_length,
            max_pending_output=config.max_pending_output,
        )
        self._server: asyncio.Server | None = None
        #: The web client and WebSocket sessions (``--ws``), or None.
        self.web: WebServer | None = None
        self._closed: asyncio.Future[None] | None = None

    @property
    def connections(self) -> set[ChatConnection]:
        """The open connections."""
        return self.hub.connections

    @classmethod
    async def start(cls, config: ServerConfig) -> ChatServer:
        """Load the rooms, connect the bus and listen.

        Raises RoomsFileError, BusError or ServerStartError with a one-line reason."""
        server = cls(config, load_rooms(config.rooms_path))
        loop = asyncio.get_running_loop()
        await server.bus.start()
        try:
            server._server = await loop.create_server(
                lambda: ChatConnection(server.hub),
                config.host,
                config.port,
                backlog=config.backlog,
                reuse_address=True,
                reuse_port=config.reuse_port or None,
            )
        except OSError as exc:
            await server.bus.close()
            server.outbox.close()
            reason = exc.strerror or str(exc)
            raise ServerStartError(
                f"cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        for sock in server._server.sockets:
            server.outbox.watch(sock.fileno())  # a coalescing wait never holds up accepting
        if config.ws:
            await server._start_web()
        return server

    async def _start_web(self) -> None:
        config = self.config
        try:
            self.web = await WebServer.start(
                self.hub,
                config.ws,
                config.ws_origins,
                tls_cert=getattr(config, "tls_cert", None),
                tls_key=getattr(config, "tls_key", None),
                backlog=config.backlog,
            )
        except (OSError, ValueError) as exc:
            assert self._server is not None
            self._server.close()
            await self.bus.close()
            self.outbox.close()
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise ServerStartError(
                f"cannot serve the web client on {config.ws}: {reason}"
            ) from None

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
        """Stop accepting, close every session with its queued output, then wait; then
        disconnect the bus (the sessions' departures are announced through it).

        Idempotent: a second call waits for the first to finish.
        """
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            if self._server is not None:
                for sock in self._server.sockets:
                    self.outbox.unwatch(sock.fileno())
                self._server.close()
            if self.web is not None:
                self.web.close_sessions()
            connections = list(self.connections)
            for connection in connections:
                if connection.session is not None:
                    connection.session.close("server shutdown", announce=False)
            await self._wait_connections_gone(self.config.shutdown_grace)
            for connection in list(self.connections):
                connection.abort("server shutdown")
            await self._wait_connections_gone(1.0)
            if self.web is not None:
                await self.web.wait_closed(self.config.shutdown_grace)
            if self._server is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._server.wait_closed()
            await self.bus.close()
            self.outbox.close()
            log.info("server closed (%d sessions were open)", len(connections))
        finally:
            self._closed.set_result(None)

    async def _wait_connections_gone(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # connection_lost runs on the loop; give it turns until every session is gone.
        while self.connections and loop.time() < deadline:
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
        "roomchat listening on %s with %d rooms, bus %s "
        "(max line %d bytes, max pending output %d bytes, coalescing %d µs, open-files limit %s)",
        ", ".join(server.addresses),
        len(server.rooms.details),
        server.bus.description,
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
