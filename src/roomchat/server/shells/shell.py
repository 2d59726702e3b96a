"""The connection shell: everything the TCP and WebSocket transports share.

A session's rules are sans-I/O (core/session.py); a *shell* carries them over a
connection. :class:`ShellConnection` is the ``asyncio.Protocol`` both transports build
on, and :class:`Shell` is what all connections of one server share. They own:

- **Admission and release** (docs/architecture.md, "Bounds"): before anything else a
  new connection, on either listener, is checked against ``max_connections``,
  ``max_connections_per_ip`` and the open-files limit (:data:`FD_RESERVE`); over one it
  is closed at once, counted in :attr:`Shell.refused` and logged (the first refusal of
  each kind, then every 1000th). An admitted connection is counted until it is gone.
- **TLS**: the connection is accepted as plain TCP and upgraded with
  ``loop.start_tls``, so that admission costs no handshake and a failed or timed-out
  handshake (a plain-text client on the TLS port) is logged with the peer's address:
  asyncio and uvloop both drop those silently when ``create_server`` does it.
- **Keepalive** on every accepted socket (net.py).
- **Backpressure and slow consumers** (docs/protocol.md, docs/architecture.md "Bounds"):
  the transport's high-water mark is ``max_pending_output``; passing it calls
  ``pause_writing``. The session is then *behind*: its rooms stop reading the sessions
  that post into them until it drains (``resume_writing``), for at most HOLD_SECONDS at
  a time. It is cut off as a slow consumer only when it does not take its output (its
  unsent output stops shrinking for STALL_SECONDS, or passes STALL_BOUND times the
  limit): counted, logged, aborted from a timer (not from inside a fan-out), and the
  memory its output held is given back (memory.py).
- **Read pausing, close and abort** as the session asks them (session.Connection).
- **Counting and the log lines** of connect and disconnect, the same for both.
- **Shutdown**: :meth:`Shell.close_all` closes every connection of both transports.

A transport adds only its framing: what to do once the connection is open
(:meth:`ShellConnection.opened`: TCP starts the session, WebSocket reads the HTTP
request), how received bytes become command lines (:meth:`received`), and how a
session's output bytes are written (the writer it gives :meth:`start_session`).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar, cast

from roomchat.server.core.context import SessionContext
from roomchat.server.core.outbox import Outbox, Writer
from roomchat.server.core.session import Session, new_session_id, new_user_id
from roomchat.server.core.stats import Reading
from roomchat.server.shells.memory import MemoryTrimmer
from roomchat.server.shells.net import keepalive, peer_of
from roomchat.system import open_files_limit

__all__ = ["FD_RESERVE", "Shell", "ShellConnection"]

log = logging.getLogger("roomchat.server")

#: File descriptors kept free for everything but sessions (bus reconnects, the loop's
#: own, log files): a connection whose descriptor is this close to the open-files limit
#: is refused, so that accept() itself does not run out (see docs/architecture.md).
FD_RESERVE = 16

#: A session whose transport holds more than --max-pending-output is cut off once it
#: holds more than STALL_BOUND times that, or its unsent output has not shrunk for
#: STALL_SECONDS; checked every STALL_CHECK seconds (ShellConnection.pause_writing).
STALL_BOUND = 4
STALL_SECONDS = 2.0
STALL_CHECK = 0.1
#: Meanwhile its rooms hold back their senders (stop reading them) for at most this long
#: at a time: a member that reads, but too slowly to drain in that time, stops holding
#: a room back and is left to the rule above (ShellConnection._stalled).
HOLD_SECONDS = 5.0

#: Why a connection may be refused (Shell.refused, /metrics).
REFUSALS = ("max_connections", "max_connections_per_ip", "open_files")

#: Refusals of one kind logged: the first, then every this many.
_REFUSALS_LOGGED_EVERY = 1000


class Shell:
    """What every connection of one server shares, TCP and WebSocket alike."""

    def __init__(
        self,
        context: SessionContext,
        outbox: Outbox,
        *,
        max_pending_output: int,
        max_connections: int,
        max_connections_per_ip: int,
        tls: ssl.SSLContext | None,
        tls_handshake_timeout: float,
        fd_limit: int | None = None,
    ) -> None:
        self.context = context
        self.outbox = outbox
        self.stats = context.stats
        self.max_pending_output = max_pending_output
        #: 0: no limit (but the open-files one).
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        #: Server-side TLS context: connections are upgraded before their session starts.
        self.tls = tls
        self.tls_handshake_timeout = tls_handshake_timeout
        #: The open-files limit admission keeps FD_RESERVE descriptors under (None: none).
        self.fd_limit = open_files_limit() if fd_limit is None else fd_limit
        #: The open connections of both transports, TLS handshakes included.
        self.connections: set[ShellConnection] = set()
        #: Connections refused, by reason: "max_connections", "max_connections_per_ip",
        #: "open_files" (/metrics: roomchat_connections_refused_total{reason=...}).
        self.refused: Counter[str] = Counter()
        #: Open connections per client IP (kept only with a per-IP limit).
        self.per_ip: Counter[str] = Counter()
        #: Returns freed memory to the system after slow consumers are cut off.
        self.trimmer = MemoryTrimmer()

    # -- admission -----------------------------------------------------------------------
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

    def _enter(self, connection: ShellConnection, ip: str) -> None:
        self.connections.add(connection)
        if self.max_connections_per_ip:
            self.per_ip[ip] += 1

    def _leave(self, connection: ShellConnection, ip: str) -> None:
        self.connections.discard(connection)
        if self.max_connections_per_ip:
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]

    # -- sessions ------------------------------------------------------------------------
    def open_session(self, connection: ShellConnection, write: Writer, name: str) -> Session:
        """A new session (a fresh random user id, its mailbox) for a connection."""
        # Random ids and names share one namespace.
        user_id = self.context.names.draw_new(new_user_id)
        mailbox = self.outbox.open(user_id, new_session_id(), write)
        return Session(self.context, mailbox, connection, name=name)

    @property
    def sessions(self) -> list[Session]:
        """The sessions of the open connections (those past their handshakes)."""
        return [c.session for c in self.connections if c.session is not None]

    def readings(self) -> Iterable[Reading]:
        """Connections and sessions, for /metrics (read at scrape time)."""
        yield Reading(
            "connections_open", "gauge", "Open client connections.", len(self.connections)
        )
        yield Reading(
            "connections_accepted",
            "counter",
            "Client connections accepted (sessions started).",
            self.stats.connections_accepted,
        )
        refused = Counter(dict.fromkeys(REFUSALS, 0)) + self.refused
        for reason in sorted(set(REFUSALS) | set(self.refused)):
            yield Reading(
                "connections_refused",
                "counter",
                "Client connections refused, by reason.",
                refused[reason],
                (("reason", reason),),
            )
        versions = self.sessions_by_version()
        for version in sorted(versions):
            yield Reading(
                "sessions",
                "gauge",
                "Open sessions by protocol version.",
                versions[version],
                (("version", version),),
            )

    def sessions_by_version(self) -> Counter[str]:
        """Open sessions by protocol version ("1" and "2", both always present)."""
        versions: Counter[str] = Counter({"1": 0, "2": 0})
        for session in self.sessions:
            versions["2" if session.v2 else "1"] += 1
        return versions

    # -- shutdown ------------------------------------------------------------------------
    async def close_all(self, grace: float, hurry: asyncio.Event) -> int:
        """Close every connection, both transports: v2 sessions get the shutdown notice,
        every session its queued output, then the connection closes; those that have not
        gone after ``grace`` seconds (or once ``hurry`` is set) are aborted. Returns how
        many there were."""
        connections = list(self.connections)
        for connection in connections:
            session = connection.session
            if session is not None:
                session.shutdown_notice()  # v2: the notice goes first
                session.close("server shutdown", announce=False)
            else:  # still in its TLS handshake (or an HTTP request): nothing to flush
                connection.abort("server shutdown")
        await self._wait_gone(grace, hurry)
        if left := list(self.connections):
            if hurry.is_set():
                log.info("aborting the %d sessions that had not flushed yet", len(left))
            else:
                log.info(
                    "%d sessions did not flush within the %g s grace: aborting them",
                    len(left),
                    grace,
                )
        for connection in left:
            connection.abort("server shutdown")
        await self._wait_gone(1.0, None)
        self.trimmer.cancel()
        return len(connections)

    async def _wait_gone(self, timeout: float, hurry: asyncio.Event | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # connection_lost runs on the loop; give it turns until every connection is gone.
        while self.connections and loop.time() < deadline:
            if hurry is not None and hurry.is_set():
                return
            await asyncio.sleep(0.01)


class ShellConnection(asyncio.Protocol, abc.ABC):
    """One accepted connection, of either transport (see the module docstring)."""

    #: Prefixed to the peer's address in the session's name (logs): "" or "ws ".
    label: ClassVar[str] = ""

    __slots__ = (
        "_decrypted",
        "_early",
        "_handshake",
        "_ip",
        "_name",
        "_reason",
        "_stall",
        "_tls",
        "session",
        "shell",
        "transport",
    )

    def __init__(self, shell: Shell) -> None:
        self.shell = shell
        self.transport: asyncio.Transport | None = None
        self._reason = "connection lost"
        self._ip: str | None = None  # set once admitted: counted in the shell until released
        self._name = "?"
        self._tls = False
        self._handshake: asyncio.Task[None] | None = None
        # During a TLS handshake: the bytes read before start_tls took the transport (the
        # ClientHello: None once it has), then those it decrypted before _opened (a
        # WebSocket client sends its request in the handshake's last flight).
        self._early: list[bytes] | None = []
        self._decrypted: list[bytes] = []
        self.session: Session | None = None
        # While the transport holds more than max_pending_output: (when it passed the
        # limit, when its buffer last shrank, its size then, the check's timer); see
        # pause_writing.
        self._stall: tuple[float, float, int, asyncio.TimerHandle] | None = None

    def __repr__(self) -> str:
        if self.session is not None:
            return repr(self.session)
        return f"<connection {self.label}{self._name}>"

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        tcp = cast(asyncio.Transport, transport)
        shell = self.shell
        ip, self._name = peer_of(tcp)
        sock = tcp.get_extra_info("socket")
        reason = shell.admit(ip, sock.fileno() if sock is not None else -1)
        if reason is not None:
            shell.refuse(reason, self._name)
            tcp.abort()
            return
        self._ip = ip
        if sock is not None:
            keepalive(sock)
        shell._enter(self, ip)
        self.transport = tcp
        if shell.tls is None:
            self._opened(tcp)
        else:
            tcp.pause_reading()  # nothing is read before start_tls takes the transport over
            self._handshake = asyncio.ensure_future(self._start_tls(tcp, shell.tls))

    async def _start_tls(self, tcp: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            upgrade = asyncio.ensure_future(
                loop.start_tls(
                    tcp,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=self.shell.tls_handshake_timeout,
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
            log.info("%s: TLS handshake failed, dropped: %s", self._name, _describe(exc))
            return
        finally:
            self._handshake = None
        if tls is None:  # closed meanwhile
            self._release()
            return
        self._tls = True
        self.transport = tls
        self._opened(tls)

    def _replay_early(self, tcp: asyncio.Transport) -> None:
        """Hand what was read before start_tls to its TLS protocol (the ClientHello).

        uvloop starts reading right after connection_made even if it paused reading,
        so a client that speaks first can be read before start_tls runs."""
        data = b"".join(self._early or ())
        self._early = None
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

    def _opened(self, transport: asyncio.Transport) -> None:
        # pause_writing fires when the transport holds more than this: a slow consumer.
        transport.set_write_buffer_limits(high=self.shell.max_pending_output)
        self.opened(transport)
        if self._decrypted:
            data = b"".join(self._decrypted)
            self._decrypted = []
            self.received(data)

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            if self._early is not None:  # before start_tls took over (see _replay_early)
                self._early.append(data)
                if self.transport is not None:
                    self.transport.pause_reading()
            else:  # decrypted before the handshake's end was seen (see _opened)
                self._decrypted.append(data)
            return
        self.received(data)

    def eof_received(self) -> bool:
        if self._handshake is not None:  # before start_tls took over: the handshake fails
            return False
        keep_open = self.ended()
        # A TLS transport closes itself after EOF (and logs a warning if asked to stay open).
        return keep_open and not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self.transport = None
        self.lost()
        session = self.session
        if session is None:
            return
        session.connection_lost()
        reason = f"{self._reason} ({exc})" if exc else self._reason
        log.info(
            "%r disconnected: %s", session, reason, extra={**session.log_fields, "reason": reason}
        )

    def pause_writing(self) -> None:
        """More than max_pending_output waits in the transport. That alone does not make
        a slow consumer: a client that reads at once still falls behind senders that
        produce faster than it (or the kernel) takes their output. So first the session
        is *behind*: its rooms stop reading the sessions that post into them until it
        drains (resume_writing), for at most HOLD_SECONDS at a time (Outbox.fall_behind).
        It is cut off when it does not take its output: when its unsent output goes past
        STALL_BOUND times the limit (memory stays bounded), or stops shrinking for
        STALL_SECONDS (it does not read). Checked every STALL_CHECK s until it drains."""
        session, transport = self.session, self.transport
        if session is None or session.closed or transport is None:
            return
        if self._stall is None:
            now = time.monotonic()
            self._stall = self._stall_check(now, now, transport.get_write_buffer_size())
            self.shell.outbox.fall_behind(session.mailbox)

    def _stall_check(
        self, began: float, since: float, size: int
    ) -> tuple[float, float, int, asyncio.TimerHandle]:
        timer = asyncio.get_running_loop().call_later(STALL_CHECK, self._stalled)
        return began, since, size, timer

    def _stalled(self) -> None:
        session, transport, stall = self.session, self.transport, self._stall
        if session is None or session.closed or transport is None or stall is None:
            self._stall = None
            return
        began, since, before, _ = stall
        now, size = time.monotonic(), transport.get_write_buffer_size()
        limit = self.shell.max_pending_output
        if size < before:  # it reads: the clock starts again
            since = now
        if size > STALL_BOUND * limit or now - since >= STALL_SECONDS:
            self._stall = None
            self._cut(size)
            return
        if now - began >= HOLD_SECONDS:  # held its rooms long enough: they go on
            self.shell.outbox.catch_up(session.mailbox)
        self._stall = self._stall_check(began, since, size)

    def _cut(self, size: int) -> None:
        session = self.session
        assert session is not None
        shell = self.shell
        shell.stats.slow_consumers += 1
        log.warning(
            "%r: slow consumer, more than %d bytes pending (%d), disconnecting",
            session,
            shell.max_pending_output,
            size,
            extra={**session.log_fields, "reason": "slow consumer"},
        )
        shell.outbox.catch_up(session.mailbox)  # its rooms' senders go on
        session.mailbox.close()  # nothing more is queued for it from now on
        session.abort("slow consumer")
        shell.trimmer.soon()  # its unsent output is freed: give it back (memory.py)

    def resume_writing(self) -> None:
        """Drained to the low-water mark: no longer behind, the watch ends."""
        stall, self._stall = self._stall, None
        if stall is not None:
            stall[3].cancel()
        if self.session is not None:
            self.shell.outbox.catch_up(self.session.mailbox)

    def _release(self) -> None:
        ip, self._ip = self._ip, None
        if ip is not None:
            self.shell._leave(self, ip)

    # -- what a transport adds -----------------------------------------------------------
    @abc.abstractmethod
    def opened(self, transport: asyncio.Transport) -> None:
        """The connection is open (and TLS is up): TCP starts its session here."""

    @abc.abstractmethod
    def received(self, data: bytes) -> None:
        """Bytes from the peer, once the connection is open."""

    @abc.abstractmethod
    def ended(self) -> bool:
        """The peer closed its side; whether to keep ours open (until the output is sent)."""

    def lost(self) -> None:
        """The connection is gone (before the session is told): the transport's own."""

    def start_session(self, write: Writer) -> Session:
        """Start the connection's session, writing its output with ``write``."""
        shell = self.shell
        self.session = session = shell.open_session(self, write, self.label + self._name)
        shell.stats.connections_accepted += 1
        log.info("%r connected", session, extra=session.log_fields)
        session.start(shell.context.rooms.details)
        return session

    def set_reason(self, reason: str) -> None:
        """Why the connection ends, for the disconnect line (the first reason wins)."""
        if self._reason == "connection lost":
            self._reason = reason

    # -- what the session asks of its connection (session.Connection) ----------------------
    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._reason = reason
            self.transport.close()

    def abort(self, reason: str) -> None:
        if self.transport is not None:
            self._reason = reason
            self.transport.abort()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)  # e.g. HTTP_REQUEST, WRONG_VERSION_NUMBER
    return str(exc) or type(exc).__name__
