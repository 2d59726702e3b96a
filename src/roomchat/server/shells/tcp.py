"""The asyncio shell around a session: moves bytes between a socket and session.py.

:class:`ChatConnection` is the ``asyncio.Protocol`` of one TCP connection. It owns the
transport and nothing else of interest: every rule lives in the sans-I/O
:class:`~roomchat.server.core.session.Session`, and every outbound byte goes through the
session's :class:`~roomchat.server.core.outbox.Mailbox`. It is given the few things it uses
(:class:`Hub`), not the whole server.

Slow consumers (docs/protocol.md): the transport's high-water mark is the session's
``max_pending_output``; passing it calls ``pause_writing``, and the session is aborted on
the next turn (not from inside a fan-out that is iterating over room members).

Admission (docs/architecture.md, "Bounds"): before anything else a new connection is
checked against ``max_connections``, ``max_connections_per_ip`` and the open-files limit
(:data:`FD_RESERVE`); over one it is closed at once, counted in :attr:`Hub.refused` and
logged (the first refusal of each kind, then every 1000th).

TLS: the connection is accepted as plain TCP and upgraded with ``loop.start_tls``, so
that admission costs no handshake and a failed or timed-out handshake (a plain-text
client on the TLS port) is logged with the peer's address: asyncio and uvloop both drop
those silently when ``create_server`` does the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from roomchat.server.core.context import SessionContext
from roomchat.server.core.outbox import Outbox, Writer
from roomchat.server.core.rooms import RoomManager
from roomchat.server.core.session import Connection as SessionConnection
from roomchat.server.core.session import Session, new_session_id, new_user_id
from roomchat.server.core.stats import ServerStats
from roomchat.server.shells.memory import MemoryTrimmer

__all__ = ["FD_RESERVE", "ChatConnection", "Hub", "open_files_limit"]

log = logging.getLogger("roomchat.server")

#: File descriptors kept free for everything but sessions (bus reconnects, the loop's
#: own, log files): a connection whose descriptor is this close to the open-files limit
#: is refused, so that accept() itself does not run out (see docs/architecture.md).
FD_RESERVE = 16

#: Refusals of one kind logged: the first, then every this many.
_REFUSALS_LOGGED_EVERY = 1000


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE (0 when unknown or unlimited: no open-files check)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


@dataclass(eq=False)
class Hub:
    """What every connection of a server shares."""

    rooms: RoomManager
    outbox: Outbox
    max_line_length: int
    max_pending_output: int
    #: The open connections (the server closes them at shutdown), TLS handshakes included.
    connections: set[ChatConnection] = field(default_factory=set)
    #: Returns freed memory to the system after slow consumers are cut off (memory.py).
    trimmer: MemoryTrimmer = field(default_factory=MemoryTrimmer)
    #: The server's counters (stats.py), read by /metrics.
    stats: ServerStats = field(default_factory=ServerStats)
    #: 0: no limit (but the open-files one).
    max_connections: int = 0
    max_connections_per_ip: int = 0
    #: Server-side TLS context: connections are upgraded before their session starts.
    tls: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 5.0
    #: The open-files limit the admission check keeps FD_RESERVE descriptors under.
    fd_limit: int = field(default_factory=open_files_limit)
    #: Connections refused, by reason: "max_connections", "max_connections_per_ip",
    #: "open_files" (/metrics: roomchat_connections_refused_total{reason=...}).
    refused: Counter[str] = field(default_factory=Counter)
    #: Open connections per client IP (kept only with a per-IP limit).
    per_ip: Counter[str] = field(default_factory=Counter)
    #: Names, tokens, heartbeats, flood control (v2 and flood control for all).
    context: SessionContext = field(default_factory=SessionContext)

    def open_session(self, connection: SessionConnection, write: Writer, name: str) -> Session:
        """A new session (a fresh random user id, its mailbox) for any connection shell:
        TCP here, WebSocket in web.py."""
        # Random ids and names share one namespace.
        user_id = self.context.names.draw_new(new_user_id)
        mailbox = self.outbox.open(user_id, new_session_id(), write)
        return Session(
            self.rooms,
            mailbox,
            connection,
            max_line_length=self.max_line_length,
            name=name,
            stats=self.stats,
            context=self.context,
        )

    def admit(self, ip: str, fd: int) -> str | None:
        """Why a new connection from ``ip`` (on descriptor ``fd``) is refused, or None."""
        if self.max_connections and len(self.connections) >= self.max_connections:
            return "max_connections"
        if self.max_connections_per_ip and self.per_ip[ip] >= self.max_connections_per_ip:
            return "max_connections_per_ip"
        # Descriptors are handed out lowest first: one this high means at most
        # FD_RESERVE are left, whatever holds the others.
        if self.fd_limit and fd >= self.fd_limit - FD_RESERVE:
            return "open_files"
        return None

    def refuse(self, reason: str, name: str) -> None:
        self.refused[reason] += 1
        count = self.refused[reason]
        if count == 1 or count % _REFUSALS_LOGGED_EVERY == 0:
            limit = {
                "max_connections": f"--max-connections {self.max_connections} reached",
                "max_connections_per_ip": (
                    f"--max-connections-per-ip {self.max_connections_per_ip} reached"
                ),
                "open_files": f"fewer than {FD_RESERVE} of {self.fd_limit} open files left",
            }.get(reason, reason)
            log.warning(
                "refused a connection from %s: %s (%d refused so far for this reason; "
                "logged for the first, then every %dth)",
                name,
                limit,
                count,
                _REFUSALS_LOGGED_EVERY,
            )


class ChatConnection(asyncio.Protocol):
    __slots__ = (
        "_early",
        "_handshake",
        "_hub",
        "_ip",
        "_reason",
        "_tls",
        "_transport",
        "session",
    )

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._transport: asyncio.Transport | None = None
        self._reason = "connection lost"
        self._ip: str | None = None  # set once admitted: counted in the hub until released
        self._tls = False
        self._handshake: asyncio.Task[None] | None = None
        self._early: list[bytes] = []  # bytes read before start_tls took the transport
        self.session: Session | None = None

    def __repr__(self) -> str:
        return repr(self.session) if self.session is not None else "<connection>"

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        tcp = cast(asyncio.Transport, transport)
        hub = self._hub
        peer = tcp.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            ip, name = str(peer[0]), f"{peer[0]}:{peer[1]}"
        else:
            ip, name = "?", "?"
        sock = tcp.get_extra_info("socket")
        reason = hub.admit(ip, sock.fileno() if sock is not None else -1)
        if reason is not None:
            hub.refuse(reason, name)
            tcp.abort()
            return
        self._ip = ip
        if sock is not None:
            _keepalive(sock)
        hub.connections.add(self)
        if hub.max_connections_per_ip:
            hub.per_ip[ip] += 1
        self._transport = tcp
        if hub.tls is None:
            self._start(tcp, name)
        else:
            tcp.pause_reading()  # nothing is read before start_tls takes the transport over
            self._handshake = asyncio.ensure_future(self._start_tls(tcp, hub.tls, name))

    async def _start_tls(self, tcp: asyncio.Transport, context: ssl.SSLContext, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            upgrade = asyncio.ensure_future(
                loop.start_tls(
                    tcp,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=self._hub.tls_handshake_timeout,
                )
            )
            # Runs right after start_tls has put its protocol on the transport, before
            # that protocol's connection_made (so before the loop reads again).
            loop.call_soon(self._replay_early, tcp)
            tls = await upgrade
        except (Exception, asyncio.CancelledError) as exc:
            # ssl.SSLError (e.g. plain text on the TLS port) is an OSError; so is the
            # ConnectionAbortedError of a handshake that timed out.
            tcp.abort()
            self._release()
            log.info("%s: TLS handshake failed, dropped: %s", name, _describe(exc))
            return
        finally:
            self._handshake = None
        if tls is None:  # closed meanwhile
            self._release()
            return
        self._tls = True
        self._transport = tls
        self._start(tls, name)

    def _replay_early(self, tcp: asyncio.Transport) -> None:
        """Hand what was read before start_tls to its TLS protocol (the ClientHello).

        uvloop starts reading right after connection_made even if it paused reading,
        so a client that speaks first can be read before start_tls runs."""
        data, self._early = b"".join(self._early), []
        protocol = tcp.get_protocol()
        if not data or protocol is self:
            return
        if isinstance(protocol, asyncio.BufferedProtocol) or hasattr(protocol, "buffer_updated"):
            buffered = cast(asyncio.BufferedProtocol, protocol)
            view = memoryview(data)
            while view:
                buffer = memoryview(buffered.get_buffer(len(view)))
                size = min(len(buffer), len(view))
                buffer[:size] = view[:size]
                buffered.buffer_updated(size)
                view = view[size:]
        else:
            cast(asyncio.Protocol, protocol).data_received(data)

    def _start(self, transport: asyncio.Transport, name: str) -> None:
        hub = self._hub
        # pause_writing fires when the transport holds more than this: a slow consumer.
        transport.set_write_buffer_limits(high=hub.max_pending_output)
        self.session = session = hub.open_session(self, transport.write, name)
        hub.stats.connections_accepted += 1
        log.info("%r connected", session, extra=session.log_fields)
        session.start(hub.rooms.details)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:  # before start_tls took over (see _replay_early)
            self._early.append(data)
            if self._transport is not None:
                self._transport.pause_reading()
            return
        session.receive_data(data)

    def eof_received(self) -> bool:
        if self.session is None:  # before start_tls took over: the handshake fails
            return False
        self.session.receive_eof()
        # The session closes the transport once its output is queued. A TLS transport
        # closes itself after EOF (and logs a warning if asked to stay open).
        return not self._tls

    def _release(self) -> None:
        ip, self._ip = self._ip, None
        if ip is None:
            return
        hub = self._hub
        hub.connections.discard(self)
        if hub.max_connections_per_ip:
            hub.per_ip[ip] -= 1
            if hub.per_ip[ip] <= 0:
                del hub.per_ip[ip]

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._transport = None
        session = self.session
        if session is None:
            return
        session.connection_lost()
        reason = f"{self._reason} ({exc})" if exc else self._reason
        log.info(
            "%r disconnected: %s", session, reason, extra={**session.log_fields, "reason": reason}
        )

    def pause_writing(self) -> None:
        # More than max_pending_output is waiting in the transport: a slow consumer.
        session = self.session
        if session is not None and not session.closed:
            self._hub.stats.slow_consumers += 1
            log.warning(
                "%r: slow consumer, more than %d bytes pending, disconnecting",
                session,
                self._hub.max_pending_output,
                extra={**session.log_fields, "reason": "slow consumer"},
            )
            session.mailbox.close()  # nothing more is queued for it from now on
            asyncio.get_running_loop().call_soon(session.abort, "slow consumer")
            self._hub.trimmer.soon()  # its unsent megabyte is freed: give it back (memory.py)

    def resume_writing(self) -> None:
        pass

    # -- what the session asks of its connection (session.Connection) ----------------
    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self, reason: str) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._reason = reason
            self._transport.close()

    def abort(self, reason: str) -> None:
        if self._transport is not None:
            self._reason = reason
            self._transport.abort()


#: TCP keepalive on every accepted connection, so that a half-dead peer (a v1 one
#: especially: it has no heartbeats) is found: first probe after 60 s of silence, then
#: every 10 s, given up after 6 unanswered (about 2 minutes in all).
KEEPALIVE = (60, 10, 6)


def _keepalive(sock: object) -> None:
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is None:
        return
    try:
        setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        if hasattr(socket, "TCP_KEEPIDLE"):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        if hasattr(socket, "TCP_KEEPCNT"):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    except OSError:  # not TCP (a test's socket pair), or not supported here
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)  # e.g. HTTP_REQUEST, WRONG_VERSION_NUMBER
    return str(exc) or type(exc).__name__
