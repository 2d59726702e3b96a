"""The operator's HTTP listener (``--metrics HOST:PORT``): ``/metrics``, ``/healthz``,
``/readyz`` (docs/operating.md), served by aiohttp on the server's own event loop.

aiohttp parses and bounds the requests (request line and header sizes, body size,
keep-alive idle time), answers what no route takes (404, 405 with ``Allow``) and runs
the handlers as coroutines on the loop that runs the chat: no thread, and nothing here
parses HTTP by hand. Other operator routes (the API) are added with :meth:`add_routes`
before :meth:`start`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from roomchat.server.ops.metrics import CONTENT_TYPE, ServerCollector

__all__ = ["MAX_BODY", "OperatorServer"]

log = logging.getLogger("roomchat.server")

#: Largest request body accepted (413 beyond).
MAX_BODY = 64 * 1024
#: Seconds an idle keep-alive connection is kept.
KEEPALIVE_TIMEOUT = 5.0

_TEXT = "text/plain"
_PATHS = "try /metrics, /healthz, /readyz"


class OperatorServer:
    """The HTTP listener of ``--metrics``: create it, then :meth:`start` it."""

    def __init__(self, collector: ServerCollector, ready: Callable[[], str | None]) -> None:
        self._collector = collector
        self._ready = ready
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[_not_found])
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []

    def add_routes(
        self, routes: Iterable[web.AbstractRouteDef], middleware: Any | None = None
    ) -> None:
        """More routes (the API), and the middleware that guards them, before start."""
        self.app.router.add_routes(routes)
        if middleware is not None:
            self.app.middlewares.append(middleware)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen; raises OSError if the address cannot be used."""
        sock = _bind(host, port, reuse_port)
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self._sockets = [sock]

    @property
    def port(self) -> int:
        port: int = self._sockets[0].getsockname()[1]
        return port

    @property
    def sockets(self) -> list[int]:
        """File descriptors of the listening sockets (a coalescing wait ends on them)."""
        return [sock.fileno() for sock in self._sockets]

    def ready(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        return self._ready()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        self._sockets = []

    # -- handlers ----------------------------------------------------------------------
    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body = self._collector.render()
        except Exception:
            log.exception("metrics: rendering /metrics failed")
            return web.Response(status=500, text="rendering the metrics failed\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type=_TEXT)

    async def _readyz(self, request: web.Request) -> web.Response:
        why = self._ready()
        if why is None:
            return web.Response(text="ready\n", content_type=_TEXT)
        return web.Response(status=503, text=why + "\n", content_type=_TEXT)


@web.middleware
async def _not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's 404 says only "Not Found": this one says where to look."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text=f"not found: {_PATHS}\n", content_type=_TEXT)


def _bind(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free one)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
