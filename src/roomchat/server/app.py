"""The server: listening socket, sessions, start-up and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from roomchat.protocol import RoomDetail
from roomchat.server.bus import Bus, open_bus
from roomchat.server.config import SecretFileError, ServerConfig, load_rooms, load_secret
from roomchat.server.core.context import SessionContext
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.rooms import RoomManager
from roomchat.server.core.stats import ServerStats
from roomchat.server.shells.tcp import ChatConnection, Hub
from roomchat.server.shells.ws import WebServer
from roomchat.system import open_files_limit

if TYPE_CHECKING:
    from roomchat.server.ops.metrics import MetricsEndpoint

__all__ = [
    "ChatServer",
    "ServerStartError",
    "format_address",
    "limits_summary",
    "serve",
    "tls_context",
]

log = logging.getLogger("roomchat.server")


class ServerStartError(Exception):
    """The server could not start (e.g. the port is taken). The message says why."""


class ChatServer:
    """A running roomchat server. Create it with :meth:`start`; stop it with :meth:`close`."""

    def __init__(
        self,
        config: ServerConfig,
        rooms: Iterable[RoomDetail],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        loop = asyncio.get_running_loop()
        #: The counters behind /metrics (stats.py), shared by the outbox, rooms, sessions.
        self.stats = stats = ServerStats()
        self.outbox = Outbox(loop.call_soon, config.coalesce_window, stats)
        self.bus: Bus = open_bus(
            config.bus_url, self.outbox, lease=config.bus_lease, history=config.history
        )
        self.rooms = RoomManager(
            rooms,
            self.bus,
            self.bus.presence,
            self.outbox.room_fanned_out,
            stats,
            history=config.history,
        )
        secret_file = config.auth_secret_file
        require = config.require_tokens
        self.context = SessionContext(
            names=NameRegistry(self.bus.names),
            secret=load_secret(secret_file) if secret_file else secrets.token_bytes(32),
            require_tokens=(secret_file is not None) if require is None else require,
            token_ttl=config.token_ttl,
            heartbeat=config.heartbeat,
            idle_timeout=config.idle_timeout,
            flood_rate=config.flood_rate,
            flood_burst=config.flood_burst,
            hello_rate=config.hello_rate,
            history=config.history,
            reconnect_ms=config.shutdown_reconnect_ms,
            clock=loop.time,
            call_later=loop.call_later,
        )
        self.hub = Hub(
            rooms=self.rooms,
            outbox=self.outbox,
            max_line_length=config.max_line_length,
            max_pending_output=config.max_pending_output,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            tls=tls,
            tls_handshake_timeout=config.tls_handshake_timeout,
            stats=stats,
            context=self.context,
        )
        #: The --metrics HTTP endpoint, when config.metrics asks for one.
        self.metrics: MetricsEndpoint | None = None
        self._server: asyncio.Server | None = None
        #: The web client and WebSocket sessions (``--ws``), or None.
        self.web: WebServer | None = None
        self._closed: asyncio.Future[None] | None = None
        self._hurry = asyncio.Event()

    @property
    def connections(self) -> set[ChatConnection]:
        """The open connections."""
        return self.hub.connections

    @classmethod
    async def start(cls, config: ServerConfig) -> ChatServer:
        """Load the rooms, connect the bus and listen.

        Raises RoomsFileError, BusError or ServerStartError with a one-line reason."""
        tls = tls_context(config)
        try:
            server = cls(config, load_rooms(config.rooms_path), tls)
        except SecretFileError as exc:
            raise ServerStartError(str(exc)) from None
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
        if config.metrics is not None:
            await server._start_metrics(*config.metrics)
        if config.ws:
            await server._start_web()
        return server

    async def _start_metrics(self, host: str, port: int) -> None:
        from roomchat.server.ops.metrics import MetricsEndpoint  # prometheus_client: only if asked

        try:
            self.metrics = await MetricsEndpoint.start(self, host, port)
        except OSError as exc:
            await self.close()
            reason = exc.strerror or str(exc)
            raise ServerStartError(f"cannot serve metrics on {host}:{port}: {reason}") from None
        for fd in self.metrics.sockets:
            self.outbox.watch(fd)

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics endpoint actually bound (None: no endpoint)."""
        return self.metrics.port if self.metrics is not None else None

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections (readiness)."""
        return self._server is not None and self._server.is_serving()

    async def _start_web(self) -> None:
        config = self.config
        try:
            self.web = await WebServer.start(
                self.hub,
                config.ws,
                config.ws_origins,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                backlog=config.backlog,
            )
        except (OSError, ValueError) as exc:
            await self.close()
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
        return [format_address(sock.getsockname()) for sock in self._server.sockets]

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
            if self.context.liveness is not None:
                self.context.liveness.stop()
            for connection in connections:
                if connection.session is not None:
                    connection.session.shutdown_notice()  # v2: the notice goes first
                    connection.session.close("server shutdown", announce=False)
                else:  # still in its TLS handshake: nothing to flush
                    connection.abort("server shutdown")
            grace = self.config.shutdown_grace
            await self._wait_connections_gone(grace, hurry=self._hurry)
            if left := list(self.connections):
                if self._hurry.is_set():
                    log.info("aborting the %d sessions that had not flushed yet", len(left))
                else:
                    log.info(
                        "%d sessions did not flush within the %g s grace: aborting them",
                        len(left),
                        grace,
                    )
            for connection in left:
                connection.abort("server shutdown")
            await self._wait_connections_gone(1.0)
            if self.web is not None:
                await self.web.wait_closed(self.config.shutdown_grace)
            if self._server is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._server.wait_closed()
            await self.bus.close()
            if self.metrics is not None:
                for fd in self.metrics.sockets:
                    self.outbox.unwatch(fd)
                await self.metrics.close()
            self.outbox.close()
            self.hub.trimmer.cancel()
            log.info("server closed (%d sessions were open)", len(connections))
        finally:
            self._closed.set_result(None)

    def hurry(self) -> None:
        """Cut short the shutdown grace of a close in progress (or the next one): the
        sessions that have not flushed yet are aborted at once."""
        self._hurry.set()

    async def _wait_connections_gone(
        self, timeout: float, hurry: asyncio.Event | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # connection_lost runs on the loop; give it turns until every session is gone.
        while self.connections and loop.time() < deadline:
            if hurry is not None and hurry.is_set():
                return
            await asyncio.sleep(0.01)


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or newer), or None without a certificate.

    Raises ServerStartError with a one-line reason."""
    cert, key = config.tls_cert, config.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "certificate" if cert is None else "key"
        raise ServerStartError(f"TLS needs both a certificate and a key: the {missing} is missing")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one too
        if isinstance(exc, ssl.SSLError):
            reason = f"not a valid PEM certificate and matching key ({exc.reason or exc})"
        else:
            reason = exc.strerror or str(exc)
        raise ServerStartError(
            f"cannot load TLS certificate {str(cert)!r} with key {str(key)!r}: {reason}"
        ) from None
    return context


def format_address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


def limits_summary(config: ServerConfig) -> str:
    """The limits part of the start-up line (shared with the ``--workers`` supervisor)."""
    return (
        f"max line {config.max_line_length} bytes, "
        f"max pending output {config.max_pending_output} bytes, "
        f"coalescing {round(config.coalesce_window * 1e6)} µs, "
        f"open-files limit {open_files_limit()}"
    )


async def serve(
    config: ServerConfig, *, on_listening: Callable[[ChatServer], None] | None = None
) -> None:
    """Run until SIGINT or SIGTERM, then close every session and return.

    Once listening it logs the "roomchat listening on HOST:PORT ..." line, or, when
    given, calls ``on_listening`` instead (a ``--workers`` worker: its parent logs that
    line once for all of them). A second signal during the close cuts the shutdown
    grace short: what is left is aborted, and the close still ends with its "server
    closed" line."""
    server = await ChatServer.start(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurried = False

    def on_signal(signum: signal.Signals) -> None:
        nonlocal hurried
        if not stop.is_set():
            stop.set()
        elif not hurried:
            hurried = True
            log.info("%s again: aborting the sessions left", signum.name)
            server.hurry()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    if on_listening is not None:
        on_listening(server)
    else:
        log.info(
            "roomchat listening on %s with %d rooms, bus %s (%s)",
            ", ".join(server.addresses),
            len(server.rooms.details),
            server.bus.description,
            limits_summary(config),
        )
    log.info(
        "TLS %s; connection limits: %s in all, %s per IP address",
        f"on (handshake timeout {config.tls_handshake_timeout:g} s)"
        if server.hub.tls is not None
        else "off",
        config.max_connections or "no limit",
        config.max_connections_per_ip or "no limit",
    )
    if server.metrics is not None and config.metrics is not None:
        host = config.metrics[0]
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "metrics on http://%s:%d/metrics (and /healthz, /readyz)", shown, server.metrics_port
        )
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        try:
            await server.close()  # the handlers stay: a second signal hurries it
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
