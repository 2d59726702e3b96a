"""The server: listening socket, sessions, start-up and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
from collections.abc import Callable, Iterable

from roomchat.addresses import format_address
from roomchat.protocol import RoomDetail
from roomchat.server.auth import Authenticator
from roomchat.server.bus import open_bus
from roomchat.server.config import SecretFileError, ServerConfig, load_rooms, load_secret
from roomchat.server.core.context import SessionContext
from roomchat.server.core.directory import Directory
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.ports import Bus
from roomchat.server.core.session import Session
from roomchat.server.core.stats import ServerStats
from roomchat.server.ops.api import ApiKeys, KeyFileError, api_routes, load_keys
from roomchat.server.ops.http import OperatorServer
from roomchat.server.ops.metrics import LagProbe, ServerCollector
from roomchat.server.shells.net import Listener, listen, server_tls_context
from roomchat.server.shells.shell import Shell, ShellConnection
from roomchat.server.shells.tcp import TcpConnection
from roomchat.server.shells.ws import WebServer
from roomchat.server.store import Archive, StoreError, open_store
from roomchat.server.store.sqlite import SQLiteStore
from roomchat.system import open_files_limit

__all__ = [
    "ChatServer",
    "ServerStartError",
    "limits_summary",
    "serve",
]

log = logging.getLogger("roomchat.server")


class ServerStartError(Exception):
    """The server could not start (e.g. the port is taken). The message says why."""


def authenticator_of(config: ServerConfig) -> Authenticator | None:
    """The JWT verifier the config asks for (None: no JWT logins); ServerStartError
    with the reason when its key file is missing or unusable."""
    key, jwks = config.jwt_key_file, config.jwt_jwks_file
    if key is None and jwks is None:
        return None
    if key is not None and jwks is not None:
        raise ServerStartError("give --jwt-key-file or --jwt-jwks-file, not both")
    try:
        return Authenticator(
            key_file=None if key is None else str(key),
            jwks_file=None if jwks is None else str(jwks),
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
        )
    except (OSError, ValueError) as exc:
        raise ServerStartError(str(exc)) from None


class ChatServer:
    """A running roomchat server. Create it with :meth:`start`; stop it with :meth:`close`.

    It only wires the parts together: the counters, the outbox, the bus, the rooms and
    the sessions' context (core/), the connection shell and its two listeners (shells/),
    and the operator's HTTP listener (ops/)."""

    def __init__(
        self,
        config: ServerConfig,
        rooms: Iterable[RoomDetail],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        loop = asyncio.get_running_loop()
        #: The counters behind /metrics (core/stats.py), shared by every part.
        self.stats = stats = ServerStats()
        self.outbox = Outbox(loop.call_soon, stats, config.coalesce_window)
        self.bus: Bus = open_bus(
            config.bus_url,
            wakeups=self.outbox,
            lease=config.bus_lease,
            history=config.history,
            outage_queue=config.bus_outage_queue,
        )
        self.rooms = Directory(rooms, self.bus, self.outbox, stats, history=config.history)
        #: Where messages last (server/store/): started before the server listens.
        self.archive = Archive(
            open_store(config.store, str(config.data_dir) if config.data_dir else None),
            backlog=config.store_backlog,
            keep_messages=config.retain_messages,
            keep_days=config.retain_days,
            sweep_every=config.retention_sweep,
        )
        secret_file = config.auth_secret_file
        require = config.require_tokens
        jwt = authenticator_of(config)
        self.context = SessionContext(
            rooms=self.rooms,
            stats=stats,
            names=NameRegistry(self.bus.names),
            max_line_length=config.max_line_length,
            secret=load_secret(secret_file) if secret_file else secrets.token_bytes(32),
            require_tokens=(secret_file is not None or jwt is not None)
            if require is None
            else require,
            authenticator=jwt,
            token_ttl=config.token_ttl,
            heartbeat=config.heartbeat,
            idle_timeout=config.idle_timeout,
            flood_rate=config.flood_rate,
            flood_burst=config.flood_burst,
            hello_rate=config.hello_rate,
            reconnect_ms=config.shutdown_reconnect_ms,
            clock=loop.time,
            call_later=loop.call_later,
            user_rooms=config.user_rooms,
            admins=config.admins,
            store=self.bus.community,
            user_rate=config.user_rate,
            user_burst=config.user_burst,
            user_report=self.bus.report_spending,
            archive=self.archive,
            relay=self.bus.relay,
            forget=self.bus.forget,
        )
        self.shell = Shell(
            self.context,
            self.outbox,
            max_pending_output=config.max_pending_output,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            tls=tls,
            tls_handshake_timeout=config.tls_handshake_timeout,
        )
        #: The operator API's keys (--api-key-file), served on the --metrics listener.
        self._api_keys: ApiKeys | None = None
        if config.api_key_file is not None:
            if config.metrics is None:
                raise ServerStartError("--api-key-file needs --metrics HOST:PORT to serve on")
            try:
                self._api_keys = load_keys(config.api_key_file)
            except KeyFileError as exc:
                raise ServerStartError(str(exc)) from None
        #: The --metrics HTTP listener, when config.metrics asks for one.
        self.metrics: OperatorServer | None = None
        self._probe = LagProbe(stats.loop_lag)
        self._server: Listener | asyncio.Server | None = None
        #: The web client and WebSocket sessions (``--ws``), or None.
        self.web: WebServer | None = None
        self._closed: asyncio.Future[None] | None = None
        self._hurry = asyncio.Event()

    @property
    def connections(self) -> set[ShellConnection]:
        """The open connections, TCP and WebSocket."""
        return self.shell.connections

    @property
    def sessions(self) -> list[Session]:
        return self.shell.sessions

    @classmethod
    async def start(cls, config: ServerConfig) -> ChatServer:
        """Load the rooms, connect the bus and listen.

        Raises RoomsFileError, BusError, StoreError or ServerStartError with a one-line
        reason."""
        try:
            tls = server_tls_context(config.tls_cert, config.tls_key)
            server = cls(config, load_rooms(config.rooms_path), tls)
        except (ValueError, SecretFileError) as exc:
            raise ServerStartError(str(exc)) from None
        try:
            await server.archive.start()
        except StoreError as exc:
            await server.archive.store.close()
            raise StoreError(f"cannot open the message store: {exc}") from None
        server.rooms.keep_with(server.archive)
        server.bus.keep_with(server.archive)
        try:
            await server._preload()
        except StoreError as exc:
            await server.archive.close()
            raise StoreError(f"cannot read the message store: {exc}") from None
        try:
            await server.bus.start()
        except BaseException:
            await server.archive.close()
            raise
        try:
            server._server = await listen(
                lambda: TcpConnection(server.shell),
                config.host,
                config.port,
                backlog=config.backlog,
                reuse_port=config.reuse_port,
                tls=tls is not None,
            )
        except OSError as exc:
            await server.bus.close()
            await server.archive.close()
            server.outbox.close()
            reason = exc.strerror or str(exc)
            raise ServerStartError(
                f"cannot listen on {config.host}:{config.port}: {reason}"
            ) from None
        server._watch(sock.fileno() for sock in server._server.sockets)
        if isinstance(server.archive.store, SQLiteStore) and not server.bus.numbers_here:
            log.warning(
                "message store: %s holds only what is posted through this machine's "
                "instances; instances on other machines sharing these rooms over the bus "
                "need one PostgreSQL (--store postgresql://...) for every page to hold "
                "every message (docs/history.md)",
                server.archive.store.path,
            )
        if config.metrics is not None:
            await server._start_metrics(*config.metrics)
        if config.ws:
            await server._start_web()
        return server

    async def _preload(self) -> None:
        """In process: each room holds its last messages from the store again, so that
        joins and catch-up go on across a restart (Redis holds its own)."""
        if not self.bus.numbers_here:
            return
        for name, room in self.rooms.rooms.items():
            if room.seq and room.history_size:
                room.preload(
                    await self.archive.store.page(name, room.epoch, None, None, room.history_size)
                )

    def _watch(self, fds: Iterable[int]) -> None:
        for fd in fds:  # a coalescing wait never holds up accepting
            self.outbox.watch(fd)

    def _unwatch(self, fds: Iterable[int]) -> None:
        for fd in fds:
            self.outbox.unwatch(fd)

    async def _start_metrics(self, host: str, port: int) -> None:
        sources = (self.stats, self.shell, self.rooms, self.outbox, self.bus, self.archive)
        endpoint = OperatorServer(ServerCollector(sources), self._not_ready)
        if self._api_keys is not None:
            endpoint.add_routes(
                *api_routes(
                    self.context.community, self._api_keys, self.context.keeper, self.archive
                )
            )
        try:
            await endpoint.start(host, port, reuse_port=self.config.reuse_port)
        except OSError as exc:
            await self.close()
            reason = exc.strerror or str(exc)
            raise ServerStartError(f"cannot serve metrics on {host}:{port}: {reason}") from None
        self.metrics = endpoint
        self._probe.start()
        self._watch(endpoint.sockets)

    def _not_ready(self) -> str | None:
        """Why the server is not ready (/readyz), or None when it is."""
        if not self.listening:
            return "not listening"
        if not self.bus.connected:
            return "bus not connected"
        return None

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
                self.shell,
                config.ws,
                config.ws_origins,
                backlog=config.backlog,
                reuse_port=config.reuse_port,
            )
        except (OSError, ValueError) as exc:
            await self.close()
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise ServerStartError(
                f"cannot serve the web client on {config.ws}: {reason}"
            ) from None
        self._watch(self.web.sockets)

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

        Idempotent: a second call waits for the first to finish."""
        if self._closed is not None:
            await asyncio.shield(self._closed)
            return
        self._closed = asyncio.get_running_loop().create_future()
        try:
            if self._server is not None:
                self._unwatch(sock.fileno() for sock in self._server.sockets)
                self._server.close()
            if self.web is not None:
                self._unwatch(self.web.sockets)
                self.web.close()
            if self.context.liveness is not None:
                self.context.liveness.stop()
            count = await self.shell.close_all(self.config.shutdown_grace, self._hurry)
            if self.web is not None:
                await self.web.wait_closed()
            if self._server is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._server.wait_closed()
            await self.bus.close()
            await self.archive.close()
            if self.metrics is not None:
                self._probe.stop()
                self._unwatch(self.metrics.sockets)
                await self.metrics.close()
            self.outbox.close()
            log.info("server closed (%d sessions were open)", count)
        finally:
            self._closed.set_result(None)

    def hurry(self) -> None:
        """Cut short the shutdown grace of a close in progress (or the next one): the
        sessions that have not flushed yet are aborted at once."""
        self._hurry.set()


def limits_summary(config: ServerConfig) -> str:
    """The limits part of the start-up line (shared with the ``--workers`` supervisor)."""
    return (
        f"max line {config.max_line_length} bytes, "
        f"max pending output {config.max_pending_output} bytes, "
        f"coalescing {round(config.coalesce_window * 1e6)} µs, "
        f"open-files limit {open_files_limit() or 'unlimited'}"
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
            "roomchat listening on %s with %d rooms, bus %s, store %s (%s)",
            ", ".join(server.addresses),
            len(server.rooms.details),
            server.bus.description,
            server.archive.store.description,
            limits_summary(config),
        )
    log.info(
        "TLS %s; connection limits: %s in all, %s per IP address",
        f"on (handshake timeout {config.tls_handshake_timeout:g} s)"
        if server.shell.tls is not None
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
