"""What both listeners need of the network: the TLS context, TCP keepalive, peers,
listening sockets (docs/operating.md)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from roomchat.addresses import parse_address

__all__ = ["KEEPALIVE", "keepalive", "listen", "listen_address", "peer_of", "server_tls_context"]

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


async def listen(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    backlog: int,
    reuse_port: bool,
) -> asyncio.Server:
    """A listening server for ``factory``'s connections. With ``reuse_port`` several
    processes listen on the same port (``--workers``: SO_REUSEPORT). Raises OSError."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory,
        host,
        port,
        backlog=backlog,
        reuse_address=True,
        reuse_port=reuse_port or None,
    )
