"""The web front: one HTTP port serving the web client at ``/`` and WebSocket sessions at
``/ws`` (``roomchat serve --ws HOST:PORT``; docs/websocket.md).

A WebSocket session is a session like any other: the same sans-I/O
:class:`~roomchat.server.core.session.Session`, the same rooms and bus, the same mailbox and
outbox, the same limits. Only the framing differs:

- each text frame the browser sends is one command line (fed to the session with a
  ``"\\n"`` after it); a text frame that contains a newline is ignored as a bad command
  (one frame, one command), like any other bad line;
- each event is one text frame holding the event's JSON without its ``"\\r\\n"``: the
  mailbox's ``write`` gets a turn's events joined (several ``\\r\\n``-terminated lines),
  and :func:`frame_events` cuts them into frames and writes them all in one call.

:class:`WebConnection` is a :class:`~roomchat.server.shells.shell.ShellConnection`
like the TCP one (the same admission, limits, TLS, keepalive, slow-consumer rule,
counting and log lines: shell.py), driven by websockets' sans-I/O
:class:`websockets.server.ServerProtocol` (which parses the HTTP request and the
handshake, answers pings, reassembles fragments, reports protocol errors and runs the
closing handshake). Two shortcuts keep it as cheap as picows (docs/websocket.md has the
measurements): frames going out are plain text frames built here (a server's frames are
unmasked, so a frame is a 2-, 4- or 10-byte header and the payload; compression is never
negotiated), and complete, plain incoming text frames are read here
(:meth:`WebConnection._simple_text_frames`), everything else by websockets.

Bad input (docs/websocket.md): a binary frame closes with 1003, a frame longer than
``max_line_length`` closes with 1009 (websockets' ``max_size``), invalid JSON and unknown
commands are ignored as in v1. A client that does not read is cut off when the
transport's buffer passes ``max_pending_output`` (the shell's ``pause_writing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from roomchat.server.shells.net import Listener, listen, listen_address
from roomchat.server.shells.shell import Shell, ShellConnection

try:  # websockets' C extension (its wheels ship it); the pure-Python one otherwise
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = [
    "CSP",
    "Asset",
    "OriginPolicy",
    "WebConnection",
    "WebServer",
    "WebSite",
    "frame_events",
    "load_assets",
]

log = logging.getLogger("roomchat.server")

# websockets logs "connection open"/"connection closed" at INFO for every connection;
# roomchat logs its own connect and disconnect lines, so keep the library's quieter.
_wire_log = logging.getLogger("roomchat.server.websocket")
_wire_log.setLevel(logging.WARNING)

#: The path of WebSocket sessions; everything else is the web client's static files.
WS_PATH = "/ws"

#: Content-Security-Policy of every page: only this server's own scripts, styles and
#: images; WebSocket connections to anywhere the user points the client (ws:/wss:).
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: Close codes (RFC 6455, 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009

#: How long a server-initiated close waits for the client's close frame.
CLOSE_TIMEOUT = 2.0

#: Ignored frames logged per connection before the log goes quiet (then every 1000th).
_IGNORED_LOGGED = 5

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}


# -- framing ---------------------------------------------------------------------------
_HEADER16 = struct.Struct("!BBH").pack
_HEADER64 = struct.Struct("!BBQ").pack


def frame_events(data: bytes) -> bytes:
    """Cut ``\\r\\n``-terminated event lines into unmasked text frames, one per line.

    The events' JSON never holds a raw CR or LF (JSON escapes control characters), so
    splitting on ``\\r\\n`` finds exactly the events."""
    lines = data.split(b"\r\n")
    lines.pop()  # what follows the last "\r\n": nothing
    out: list[bytes] = []
    append = out.append
    for line in lines:
        size = len(line)
        if size < 126:
            append(bytes((0x81, size)))
        elif size < 65536:
            append(_HEADER16(0x81, 126, size))
        else:
            append(_HEADER64(0x81, 127, size))
        append(line)
    return b"".join(out)


# -- configuration -----------------------------------------------------------------------
class OriginPolicy:
    """Which pages may open a WebSocket session (checked on the upgrade request).

    - no origins given (the default): same origin only, i.e. the ``Origin`` header's
      host:port equals the ``Host`` header;
    - ``*``: any origin;
    - otherwise the listed origins (``scheme://host[:port]``), compared exactly.

    A request without an ``Origin`` header is not from a browser page (browsers always
    send one on WebSocket upgrades) and is allowed: the check protects browser users from
    other sites' pages (cross-site WebSocket hijacking), not the server from programs.
    """

    __slots__ = ("_any", "_origins")

    def __init__(self, origins: Iterable[str] = ()) -> None:
        items = [o.strip().rstrip("/").lower() for o in origins if o.strip()]
        self._any = "*" in items
        self._origins = frozenset(o for o in items if o != "*")

    def __repr__(self) -> str:
        if self._any:
            return "any origin"
        if not self._origins:
            return "same origin"
        return ", ".join(sorted(self._origins))

    def allows(self, origin: str | None, host: str | None) -> bool:
        if origin is None or self._any:
            return True
        origin = origin.strip().rstrip("/").lower()
        if self._origins:
            return origin in self._origins
        if host is None:
            return False
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:
            return False
        return bool(netloc) and netloc == host.strip().lower()


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The web client's files (``roomchat/web/``), by URL path; ``/`` is index.html."""
    assets: dict[str, Asset] = {}
    for entry in resources.files("roomchat.web").iterdir():
        name = entry.name
        suffix = name[name.rfind(".") :] if "." in name else ""
        if not entry.is_file() or suffix not in _CONTENT_TYPES or name.startswith("."):
            continue
        assets["/" + name] = Asset(entry.read_bytes(), _CONTENT_TYPES[suffix])
    if "/index.html" in assets:
        assets["/"] = assets["/index.html"]
    return assets


@dataclass(frozen=True, slots=True)
class WebSite:
    """What every web connection of a server serves: the files and the origin rule."""

    origins: OriginPolicy
    assets: dict[str, Asset]


# -- one connection ------------------------------------------------------------------------
class WebConnection(ShellConnection):
    """One HTTP connection: a static file, or an upgrade to a WebSocket session."""

    label = "ws "

    __slots__ = ("_close_timer", "_fragments", "_ignored", "_site", "_ws")

    def __init__(self, shell: Shell, site: WebSite) -> None:
        super().__init__(shell)
        self._site = site
        self._ws = ServerProtocol(max_size=shell.context.max_line_length, logger=_wire_log)
        self._fragments: list[bytes] | None = None  # a fragmented text message
        self._ignored = 0
        self._close_timer: asyncio.TimerHandle | None = None

    # -- the shell's hooks ---------------------------------------------------------
    def opened(self, transport: asyncio.Transport) -> None:
        pass  # the HTTP request comes first (received)

    def received(self, data: bytes) -> None:
        ws = self._ws
        if (
            self.FAST_INPUT
            and self.session is not None
            and ws.state is State.OPEN
            and ws.current_size is None  # no fragmented message under way
            and not ws.reader.buffer  # websockets holds no partial frame
        ):
            data = self._simple_text_frames(data)
            if not data:
                return
        ws.receive_data(data)
        events = ws.events_received()
        if events:
            self._events(events)
        session = self.session
        if ws.parser_exc is not None and session is not None and not session.closed:
            # websockets failed the connection (oversized frame: 1009; protocol error:
            # 1002) and queued its close frame: end the session too.
            code = ws.close_sent.code if ws.close_sent is not None else 1006
            log.warning("%r: %s, closing (%d)", session, ws.parser_exc, code)
            self.set_reason(str(ws.parser_exc))
            session.abort(str(ws.parser_exc))
        self._send_pending()

    def ended(self) -> bool:
        self._ws.receive_eof()
        self._send_pending()
        return False

    def lost(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()

    # -- incoming ------------------------------------------------------------------
    def _events(self, events: list[Any]) -> None:
        for event in events:
            if type(event) is Frame:
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)

    #: Take complete, unfragmented, masked text frames of at most max_line_length straight
    #: from the bytes (see _simple_text_frames); False: every frame through websockets.
    FAST_INPUT = True

    def _simple_text_frames(self, data: bytes) -> bytes:
        """Handle the complete text frames at the start of ``data`` that need nothing of
        websockets: FIN set, no RSV bits, masked, not longer than the limit. Return the
        rest (from the first frame that is anything else, or incomplete) for websockets'
        parser, which then sees exactly the stream it would have seen from there on.

        websockets' sans-I/O parser costs several µs per frame in Python; this costs
        about one. What it takes is what websockets would have turned into a plain
        ``Frame(TEXT, fin=True)`` event; everything else (control frames, fragments,
        binary, oversized, protocol errors) is left to websockets."""
        session = self.session
        assert session is not None
        ws = self._ws
        limit = self.shell.context.max_line_length
        size = len(data)
        pos = 0
        while size - pos >= 6:
            if data[pos] != 0x81:  # FIN + text, no RSV bits
                break
            length = data[pos + 1]
            if length < 0x80:  # unmasked: a protocol error, websockets' to report
                break
            length &= 0x7F
            head = pos + 2
            if length == 126:
                head = pos + 4
                if size < head:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
            elif length == 127:
                break
            end = head + 4 + length
            if length > limit or end > size:
                break
            payload = apply_mask(data[head + 4 : end], data[head : head + 4])
            pos = end
            self._text(payload)
            if session.closed or ws.state is not State.OPEN or self.transport is None:
                break
        return data[pos:] if pos else data

    def _text(self, data: bytes) -> None:
        """One complete text message: one command."""
        session = self.session
        if session is None or session.closed:
            return
        if b"\n" in data:
            self._ignore(f"text frame with a newline: {data[:80]!r}")
            return
        session.receive_data(data + b"\n")

    def _frame(self, frame: Frame) -> None:
        session = self.session
        if session is None or session.closed:
            return
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not frame.fin:  # a fragment: websockets bounds the whole message
                if self._fragments is None:
                    self._fragments = []
                self._fragments.append(bytes(frame.data))
                return
            data = bytes(frame.data)  # already bytes: no copy
            if self._fragments is not None:
                self._fragments.append(data)
                data = b"".join(self._fragments)
                self._fragments = None
            self._text(data)
        elif opcode is Opcode.BINARY:
            self._fail(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
        elif opcode is Opcode.CLOSE:
            # websockets has answered the close; end the session as for quit.
            self.set_reason("client closed")
            session.receive_eof()

    def _ignore(self, what: str) -> None:
        self._ignored += 1
        count = self._ignored
        if count <= _IGNORED_LOGGED or count % 1000 == 0:
            log.warning("%r: ignored frame #%d: %s", self, count, what)

    def _fail(self, code: int, reason: str) -> None:
        log.warning("%r: %s, closing (%d)", self, reason, code)
        self.set_reason(reason)
        self._ws.fail(code, reason)
        if self.session is not None:
            self.session.abort(reason)  # leaves its rooms; abort() below sends the close

    def _send_pending(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self._ws.data_to_send():
            if data:
                transport.write(data)
            else:  # websockets' end of stream: close once what is written has gone
                if not transport.is_closing():
                    transport.close()
                return

    # -- HTTP ----------------------------------------------------------------------
    def _request(self, request: Request) -> None:
        method = request.method
        path = request.path.partition("?")[0]
        if method not in ("GET", "HEAD"):
            self._respond(405, b"only GET and HEAD\n", "text/plain; charset=utf-8", method)
            return
        if path == WS_PATH:
            self._upgrade(request)
            return
        asset = self._site.assets.get(path)
        if asset is None:
            self._respond(404, b"not found\n", "text/plain; charset=utf-8", method)
        else:
            self._respond(200, asset.body, asset.content_type, method)

    def _respond(self, status: int, body: bytes, content_type: str, method: str) -> None:
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Content-Security-Policy", CSP),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Cache-Control", "no-cache"),
                ("Connection", "close"),
            ]
        )
        if status == 405:
            headers["Allow"] = "GET, HEAD"
        phrase = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
        self._ws.send_response(Response(status, phrase, headers, b"" if method == "HEAD" else body))

    def _upgrade(self, request: Request) -> None:
        ws = self._ws
        origin = request.headers.get("Origin")
        if not self._site.origins.allows(origin, request.headers.get("Host")):
            log.warning(
                "refused WebSocket from %s: origin %r not allowed (%r)",
                self._name,
                origin,
                self._site.origins,
            )
            ws.send_response(ws.reject(403, "origin not allowed\n"))
            return
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            log.info(
                "refused WebSocket from %s: %d %s",
                self._name,
                response.status_code,
                ws.handshake_exc,
            )
            return
        self.start_session(self._write)

    # -- outgoing (the mailbox's writer) --------------------------------------------
    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and self._ws.state is State.OPEN:
            transport.write(frame_events(data))

    # -- what the session asks of its connection: the closing handshake ---------------
    def close(self, reason: str) -> None:
        """The closing handshake: a close frame (1001 at shutdown, else 1000), then wait
        (at most CLOSE_TIMEOUT) for the client's before closing the TCP connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.set_reason(reason)
        ws = self._ws
        if ws.state is State.OPEN:
            code = CLOSE_GOING_AWAY if reason == "server shutdown" else CLOSE_NORMAL
            ws.send_close(code, reason[:100])
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self.abort, "no close frame from the client"
            )
        self._send_pending()

    def abort(self, reason: str) -> None:
        """Close at once. After a protocol failure (binary or oversized frame) the close
        frame websockets queued is sent first; otherwise (slow consumer) nothing is."""
        transport = self.transport
        if transport is None:
            return
        self.set_reason(reason)
        if self._ws.eof_sent and reason != "server shutdown":
            self._send_pending()  # the close frame, then the end of the stream
            return
        transport.abort()


# -- the listener --------------------------------------------------------------------------
class WebServer:
    """The HTTP/WebSocket listener of one ChatServer (``--ws``). Its connections are the
    shell's, with the TCP ones (admission, limits, shutdown: shell.py)."""

    def __init__(self, server: Listener | asyncio.Server, scheme: str) -> None:
        self._server = server
        self._scheme = scheme

    @classmethod
    async def start(
        cls,
        shell: Shell,
        address: str,
        origins: Iterable[str] = (),
        *,
        backlog: int,
        reuse_port: bool = False,
    ) -> WebServer:
        """Listen on ``address`` (HOST:PORT), TLS when the shell has it. Raises
        ValueError for a bad address, OSError when the port cannot be bound."""
        host, port = listen_address(address)
        site = WebSite(OriginPolicy(origins), load_assets())
        server = await listen(
            lambda: WebConnection(shell, site),
            host,
            port,
            backlog=backlog,
            reuse_port=reuse_port,
            tls=shell.tls is not None,
        )
        self = cls(server, "https" if shell.tls is not None else "http")
        log.info("web client on %s (WebSocket origins: %r)", self.url, site.origins)
        return self

    @property
    def sockets(self) -> list[int]:
        """The listening sockets' descriptors (a coalescing wait ends on them)."""
        return [sock.fileno() for sock in self._server.sockets]

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The address to open in a browser."""
        host = self._server.sockets[0].getsockname()[0]
        if host in ("0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{self._scheme}://{host}:{self.port}/"

    def close(self) -> None:
        """Stop listening (the connections are closed with the others: Shell.close_all)."""
        self._server.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._server.wait_closed()
