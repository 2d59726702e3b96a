"""What both listeners need of the network: the TLS context, TCP keepalive, peers,
listening sockets (docs/operating.md)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roomchat.addresses import parse_address

__all__ = [
    "KEEPALIVE",
    "Listener",
    "bind_sockets",
    "keepalive",
    "listen",
    "listen_address",
    "peer_of",
    "server_tls_context",
]

log = logging.getLogger("roomchat.server")

#: Connections accepted at most per listening socket per loop turn.
ACCEPT_PER_TURN = 512
#: Seconds accepting pauses when the process or the system is out of descriptors.
ACCEPT_RETRY = 0.1
#: Errors of accept() that mean "out of resources": pause, do not spin.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

#: TCP keepalive on every accepted connection, so that a half-dead peer (a v1 one
#: especially: it has no heartbeats) is found: first probe after 60 s of silence, then
#: every 10 s, given up after 6 unanswered (about 2 minutes in all).
KEEPALIVE = (60, 10, 6)


def listen_address(value: str) -> tuple[str, int]:
    """A listening address (``--ws``, ``--metrics``): ``HOST:PORT``, ``[V6]:PORT``, or
    ``:PORT`` for every interface; port 0 lets the system pick. Raises ValueError."""
    return parse_address(value, default_host="0.0.0.0", allow_port_zero=True)


def server_tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or newer), shared by the chat port and the web
    port; None without a certificate. Raises ValueError with a one-line reason."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "certificate" if cert is None else "key"
        raise ValueError(f"TLS needs both a certificate and a key: the {missing} is missing")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one too
        if isinstance(exc, ssl.SSLError):
            reason = f"not a valid PEM certificate and matching key ({exc.reason or exc})"
        else:
            reason = exc.strerror or str(exc)
        raise ValueError(
            f"cannot load TLS certificate {str(cert)!r} with key {str(key)!r}: {reason}"
        ) from None
    return context


def keepalive(sock: object) -> None:
    """Turn TCP keepalive on (see KEEPALIVE); quietly nothing where it cannot be."""
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


def peer_of(transport: asyncio.BaseTransport) -> tuple[str, str]:
    """(IP address, "ip:port" for logs) of a connection's peer; ("?", "?") if unknown."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), f"{peer[0]}:{peer[1]}"
    return "?", "?"


class Listener:
    """Listening sockets that take every pending connection in one loop turn.

    uvloop's ``create_server`` accepts one connection per loop turn (libuv hands
    them over one wake-up at a time), so in a reconnect wave each turn carried one new
    session and its joins, and the fan-out of those joins was written once per join
    (docs/architecture.md, "Bounds"). Here each readable listening socket is drained,
    up to ACCEPT_PER_TURN, and each connection gets its transport from the loop
    (``connect_accepted_socket``): the turn then routes and writes many joins at once.
    The interface is the part of ``asyncio.Server`` the server uses."""

    def __init__(
        self, factory: Callable[[], asyncio.BaseProtocol], sockets: list[socket.socket]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        self.sockets = sockets
        self._serving = True
        self._starting: set[asyncio.Task[None]] = set()
        self._exhausted = 0
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def is_serving(self) -> bool:
        return self._serving

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        for _ in range(ACCEPT_PER_TURN):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # gone before it was taken
                continue
            except OSError as exc:
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            task = loop.create_task(self._start(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:  # gone before its transport was made: the socket is still ours
            conn.close()

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for ACCEPT_RETRY, so the loop
        does not spin on a listening socket it cannot serve; logged, capped."""
        if exc.errno not in _EXHAUSTED:
            log.warning("accept failed: %s", exc.strerror or exc)
            return
        self._exhausted += 1
        if self._exhausted == 1 or self._exhausted % 1000 == 0:
            log.warning(
                "accept paused %g s: %s (%d times so far)",
                ACCEPT_RETRY,
                exc.strerror or exc,
                self._exhausted,
            )
        self._loop.remove_reader(sock.fileno())

        def resume() -> None:
            if self._serving:
                self._loop.add_reader(sock.fileno(), self._accept, sock)

        self._loop.call_later(ACCEPT_RETRY, resume)

    def close(self) -> None:
        """Stop listening (the connections are the shell's to close)."""
        if not self._serving:
            return
        self._serving = False
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """Wait for the connections accepted and still being set up."""
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    backlog: int,
    reuse_port: bool,
    tls: bool = False,
) -> Listener | asyncio.Server:
    """A listening server for ``factory``'s connections, on every address ``host``
    resolves to (as ``create_server`` binds them). With ``reuse_port`` several
    processes listen on the same port (``--workers``: SO_REUSEPORT). Raises OSError.

    With ``tls`` (the shell upgrades each connection with ``start_tls``) it is the
    loop's own server: under uvloop, a connection made by ``connect_accepted_socket``
    does not report a refused handshake the same way, so TLS keeps one accept per
    turn (docs/architecture.md)."""
    loop = asyncio.get_running_loop()
    if tls:
        return await loop.create_server(
            factory,
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets = bind_sockets(infos, reuse_port=reuse_port)
    try:
        for sock in sockets:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return Listener(factory, sockets)


def bind_sockets(
    infos: list[tuple[Any, Any, int, str, Any]], *, reuse_port: bool
) -> list[socket.socket]:
    """A TCP socket bound to each of ``getaddrinfo``'s addresses, as ``create_server``
    binds them (SO_REUSEADDR, IPv6 sockets IPv6 only); with port 0, the port the first
    one got on every address. Closes what it made and raises OSError if one fails."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if len(sockets) > 1:  # port 0: the same port on every address
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
