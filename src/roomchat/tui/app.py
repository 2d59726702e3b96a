"""The Textual app: owns the connection and the chat state, and switches pages.

Network work runs in one async worker per session (connect, then read events); it
reports back with messages, which the app applies to :class:`ChatState` and hands to
the chat page to draw. Commands (join, leave, send) are written from the UI handlers:
they do not wait on the network beyond the transport's flow control.

The session is a :class:`~roomchat.client.ReconnectingClient`: protocol v2 when the
server has it (else v1, silently), and after a drop it reconnects with backoff, re-joins
the rooms and catches up on what it missed. With ``history_markers`` it also says where
each room's history begins and ends (:class:`~roomchat.client.HistoryStart`,
:class:`~roomchat.client.HistoryEnd`), so that the past can be shown apart.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.timer import Timer
from textual.worker import Worker, WorkerState

from roomchat.client import (
    ChatClient,
    CommandError,
    ConnectionClosed,
    HelloRefused,
    ProtocolViolation,
    Reconnected,
    ReconnectingClient,
    parse_address,
)
from roomchat.protocol import DEFAULT_PORT, LoginSuccessful, Typing, valid_name
from roomchat.tui.screens import ChatScreen, ConnectScreen
from roomchat.tui.state import (
    DEFAULT_HISTORY_LIMIT,
    JOIN_HISTORY,
    PAGE_SIZE,
    TYPING_SHOWN,
    ChatState,
    StateEvent,
)

__all__ = ["DEFAULT_ADDRESS", "MARK_EVERY", "TYPING_EVERY", "RoomChatApp"]

DEFAULT_ADDRESS = f"localhost:{DEFAULT_PORT}"
#: v2 (``read_markers``): the open room's read marker is sent at most this often (s).
MARK_EVERY = 2.0
#: v2 (``typing``): ``typing`` is sent at most this often per room while one types (s).
TYPING_EVERY = 3.0


class SessionStarted(Message):
    def __init__(self, client: ReconnectingClient) -> None:
        super().__init__()
        self.client = client


class ServerEvent(Message):
    def __init__(self, event: StateEvent) -> None:
        super().__init__()
        self.event = event


class SessionFailed(Message):
    """Connecting failed: nothing was shown yet, so the connect page says why."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class SessionEnded(Message):
    """An established session is over (server gone, or the connection broke)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, HelloRefused):
        return f"the server refused: {exc.error.code}: {exc.error.msg}"
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, UnicodeError):
        return "not a valid host name"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: server certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class RoomChatApp(App[None]):
    """``roomchat tui``: chat in rooms on any protocol v1 server."""

    # Absolute, so that subclasses defined elsewhere (tests) find it too.
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "roomchat"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        address: str | None = None,
        *,
        default_address: str = DEFAULT_ADDRESS,
        connect_timeout: float = 10.0,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        tls: ssl.SSLContext | bool | None = None,
        name: str = "",
        hello_timeout: float = 1.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
    ) -> None:
        super().__init__()
        self.address = address
        self.tls = tls  # passed to connect(ssl=...)
        self.default_address = address or default_address
        self.user_name = name
        self.connect_timeout = connect_timeout
        self.hello_timeout = hello_timeout  # how long to wait for a v2 welcome
        self.backoff = (backoff_initial, backoff_max)
        self.state = ChatState(history_limit=history_limit, clock=clock)
        self.client: ReconnectingClient | None = None
        self._clock = clock
        self._marked: dict[str, int] = {}  # room -> the last q sent in mark_read
        self._mark_sent_at = -math.inf
        self._mark_timer: Timer | None = None
        self._typing_sent: dict[str, float] = {}  # room -> when typing was last sent
        self._paging: set[str] = set()  # rooms with a page back under way

    def get_default_screen(self) -> ConnectScreen:
        return ConnectScreen(self, self.default_address, self.user_name)

    def on_mount(self) -> None:
        if self.address is not None:
            self.connect_to(self.address, self.user_name)

    # -- pages ---------------------------------------------------------------------
    @property
    def connect_screen(self) -> ConnectScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, ConnectScreen)
        return screen

    @property
    def chat_screen(self) -> ChatScreen | None:
        if not self.screen_stack:  # the app is closing (or not started)
            return None
        screen = self.screen_stack[-1]
        return screen if isinstance(screen, ChatScreen) else None

    # -- the network session (a worker) ---------------------------------------------
    def connect_to(self, address: str, name: str = "") -> None:
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            self.connect_screen.show_status(f"Bad address: {exc}", error=True)
            return
        name = name.strip()
        if name and not valid_name(name):
            self.connect_screen.show_status(
                "Bad name: 1 to 32 ASCII letters, digits, _ - or .", error=True
            )
            return
        self.connect_screen.show_status(f"Connecting to {host}:{port}…")
        self._run_session(host, port, name or None)

    @work(exclusive=True, group="session", exit_on_error=False)
    async def _run_session(self, host: str, port: int, name: str | None) -> None:
        client = ReconnectingClient(
            host,
            port,
            name=name,
            history_markers=True,
            hello_timeout=self.hello_timeout,
            connect_timeout=self.connect_timeout,
            backoff_initial=self.backoff[0],
            backoff_max=self.backoff[1],
            ssl=self.tls,
        )
        try:
            await client.start()
        except (OSError, TimeoutError, ConnectionClosed, ProtocolViolation, ValueError) as exc:
            # ValueError: a host name the resolver rejects (e.g. "ex..ample").
            # HelloRefused (a ConnectionClosed? no: a CommandError) is caught below.
            self.post_message(
                SessionFailed(f"Could not connect to {host}:{port}: {describe_error(exc)}")
            )
            return
        except HelloRefused as exc:
            self.post_message(
                SessionFailed(f"Could not connect to {host}:{port}: {describe_error(exc)}")
            )
            return
        try:
            self.post_message(SessionStarted(client))
            try:
                async for event in client:
                    self.post_message(ServerEvent(event))
                reason = "connection closed"
            except HelloRefused as exc:  # reconnecting: the name is no longer ours
                reason = describe_error(exc)
            self.post_message(SessionEnded(reason))
        finally:
            # Also reached when the worker is cancelled: the app is closing.
            await client.close()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # A bug in the session worker must show in the UI, not as a traceback.
        if event.worker.group == "session" and event.state == WorkerState.ERROR:
            self.post_message(SessionEnded(f"internal error: {event.worker.error!r}"))

    def on_session_started(self, message: SessionStarted) -> None:
        self.client = message.client
        current = message.client.client
        assert current is not None  # started
        self.handle_event(current.login)
        self.state.add_rooms(list(current.listing.values()))
        self.state.session(current.user_id, current.version)
        screen = self.chat_screen
        if screen is not None and screen.is_mounted:
            screen.show_all()

    def on_server_event(self, message: ServerEvent) -> None:
        if not self.screen_stack:  # an event that came in while the app was closing
            return
        self.handle_event(message.event)

    def on_session_failed(self, message: SessionFailed) -> None:
        self.connect_screen.show_status(message.error, error=True)

    def on_session_ended(self, message: SessionEnded) -> None:
        self.client = None
        self.state.reset()
        while self.chat_screen is not None:
            self.pop_screen()
        notice = f"Lost the connection to the server ({message.reason})."
        self.connect_screen.show_status(notice, error=True)
        self.notify(notice, title="Disconnected", severity="error")

    def handle_event(self, event: StateEvent) -> None:
        """Apply one server event to the state and redraw what it touched."""
        update = self.state.apply(event)
        if isinstance(event, LoginSuccessful):
            while self.chat_screen is not None:
                self.pop_screen()
            self.push_screen(ChatScreen(self.state, self))
            return
        screen = self.chat_screen
        if screen is not None:
            screen.show_update(update)
        if isinstance(event, Typing) and update.changed:
            self.set_timer(TYPING_SHOWN + 0.05, self._typing_expired)
        if isinstance(event, Reconnected):
            self._marked.clear()  # (a restarted numbering starts again from 1)
        self._mark_soon()

    def _typing_expired(self) -> None:
        screen = self.chat_screen
        if screen is not None:
            screen.show_typing()

    # -- v2's lasting history: read markers, typing, pages back --------------------------
    def _v2_client(self, feature: str) -> ReconnectingClient | None:
        """The session, if it is connected in v2 with ``feature`` granted."""
        client = self.client
        current = None if client is None else client.client
        if current is None or current.closed or feature not in current.features:
            return None
        return client

    def _mark_soon(self) -> None:
        """The open room is shown: tell the server it is read up to its last message,
        at most every :data:`MARK_EVERY` seconds (the latest one last)."""
        room = self.state.active
        client = self._v2_client("read_markers")
        if room is None or not room.joined or client is None:
            return
        seq = client.last_seq.get(room.name)
        if not seq or seq <= self._marked.get(room.name, 0):
            return
        wait = self._mark_sent_at + MARK_EVERY - self._clock()
        if wait > 0:
            if self._mark_timer is None:
                self._mark_timer = self.set_timer(wait, self._mark_due)
            return
        self._mark_sent_at = self._clock()
        self._marked[room.name] = seq
        self.run_worker(self._send_mark(client, room.name, seq), group="marks")

    def _mark_due(self) -> None:
        self._mark_timer = None
        self._mark_soon()

    async def _send_mark(self, client: ReconnectingClient, room: str, seq: int) -> None:
        with contextlib.suppress(ConnectionClosed):  # the next connection marks again
            await client.mark_read(room, seq)

    async def user_typing(self, text: str) -> None:
        """The message box changed: ``typing`` to the open room, at most every
        :data:`TYPING_EVERY` seconds (not for commands, nor an emptied box)."""
        room = self.state.active
        if not text.strip() or (text.startswith("/") and not text.startswith("//")):
            return
        client = self._v2_client("typing")
        if room is None or not room.joined or client is None:
            return
        now = self._clock()
        if now - self._typing_sent.get(room.name, -math.inf) < TYPING_EVERY:
            return
        self._typing_sent[room.name] = now
        with contextlib.suppress(ConnectionClosed):
            await client.typing(room.name)

    def page_back(self) -> None:
        """Ask for the messages before the oldest one shown, to go on top (v2)."""
        room = self.state.active
        if room is None or not room.joined:
            self.notify("Open a room first.", severity="warning")
            return
        client = self._v2_client("paging")
        if client is None:
            self.notify("Older messages need a v2 server that keeps history.", severity="warning")
            return
        if room.history_done or room.name in self._paging:
            return  # the start is shown already, or the page is on its way
        before = room.oldest_seq()
        if before is None:
            latest = client.last_seq.get(room.name)
            if not latest:  # no message in the room at all
                return
            before = latest + 1
        self._paging.add(room.name)
        self.run_worker(self._page_back(client, room.name, before), group="pages")

    async def _page_back(self, client: ReconnectingClient, room: str, before: int) -> None:
        try:
            page = await client.history(
                room, before=before, limit=PAGE_SIZE, epoch=client.epochs.get(room)
            )
        except CommandError as exc:
            self.notify(f"No older messages: {exc.error.code}: {exc.error.msg}", severity="error")
            return
        except (TimeoutError, ConnectionClosed):
            self.notify("No older messages: the server did not answer.", severity="error")
            return
        finally:
            self._paging.discard(room)
        update = self.state.prepend(room, page)
        screen = self.chat_screen
        if screen is not None:
            screen.show_update(update)

    # -- commands from the chat page ------------------------------------------------------
    async def _command(
        self, send: Callable[[ReconnectingClient], Awaitable[None]], refused: str
    ) -> bool:
        """Send a command if connected; otherwise (or if the connection just dropped) say
        plainly that it was not sent: nothing typed is ever silently lost."""
        client = self.client
        try:
            if client is None or not client.connected:
                raise ConnectionClosed("not connected")
            await send(client)
        except ConnectionClosed:
            self.notify(f"Not connected: {refused}", severity="error")
            return False
        return True

    async def open_room(self, room: str) -> None:
        if room not in self.state.rooms:
            return
        must_join = self.state.activate(room)
        screen = self.chat_screen
        if screen is not None:
            screen.show_active_changed()
        if must_join:
            await self._command(
                lambda c: c.join(room, history=JOIN_HISTORY), f"cannot join #{room}."
            )
        self._mark_soon()

    async def _slash(self, text: str) -> bool:
        return await _slash_command(self, text)

    async def leave_active_room(self) -> None:
        room = self.state.active
        if room is None or not room.joined:
            self.notify("No joined room is open.", severity="warning")
            return
        name = room.name
        if not await self._command(lambda c: c.leave(name), f"cannot leave #{name}."):
            return
        self.state.mark_left(name)
        screen = self.chat_screen
        if screen is not None:
            screen.show_active_changed()
        self.notify(f"You left #{name}.")

    async def send_message(self, text: str) -> bool:
        """Send to the active room; False (with a visible notice) if it cannot be sent.
        A line starting with ``/`` is a command (:data:`SLASH_HELP`)."""
        if text.startswith("/") and not text.startswith("//"):
            return await self._slash(text)
        if text.startswith("//"):
            text = text[1:]  # "//" sends a line that starts with "/"
        room = self.state.active
        if room is None:
            self.notify("Open a room first: the message was not sent.", severity="warning")
            return False
        if not room.joined:
            self.notify(f"Not in #{room.name} yet: the message was not sent.", severity="warning")
            return False
        name = room.name
        return await self._command(lambda c: c.send(name, text), "the message was not sent.")


#: The chat page's commands (v2 servers with the community features, docs/moderation.md,
#: and with lasting history: /edit and /delete).
SLASH_HELP = (
    "/edit [Q] TEXT  /delete [Q]  "
    "/create ROOM [description]  /private ROOM  /dm USER  /invite USER  "
    "/kick USER [why]  /ban USER [seconds] [why]  /unban USER  /mute USER [seconds] [why]  "
    "/unmute USER  /slow SECONDS  /archive [why]"
)


def _seconds_and_why(words: list[str]) -> tuple[int | None, str | None]:
    if words and words[0].isdigit():
        return int(words[0]), " ".join(words[1:]) or None
    return None, " ".join(words) or None


async def _slash_command(app: RoomChatApp, text: str) -> bool:
    words = text[1:].split()
    if not words:
        app.notify(SLASH_HELP, title="Commands")
        return False
    verb, args = words[0].lower(), words[1:]
    if verb in ("edit", "delete"):
        return await _edit_or_delete(app, verb, text[1:].split(None, 1)[1:])
    room = app.state.active_room
    needs_room = verb in ("invite", "kick", "ban", "unban", "mute", "unmute", "slow", "archive")
    if needs_room and room is None:
        app.notify("Open a room first.", severity="warning")
        return False
    needs_arg = verb in (
        "create",
        "private",
        "dm",
        "invite",
        "kick",
        "ban",
        "unban",
        "mute",
        "unmute",
        "slow",
    )
    if verb not in _SLASH or (needs_arg and not args):
        app.notify(SLASH_HELP, title="Commands", severity="warning")
        return False

    async def send(client: ReconnectingClient) -> None:
        current = client.client
        if current is None or current.version < 2:
            raise ConnectionClosed("not connected")
        await _SLASH[verb](current, room or "", args)

    return await app._command(send, f"/{verb} was not sent.")


async def _edit_or_delete(app: RoomChatApp, verb: str, rest: list[str]) -> bool:
    """``/edit Q TEXT`` / ``/delete Q``: message number Q of the open room (``#Q`` too);
    ``/edit TEXT`` / ``/delete``: your last message in it. ``rest``: the line after the
    verb (its spacing kept), as a list of zero or one string."""
    room = app.state.active
    usage = "/edit [Q] TEXT or /delete [Q]: Q is the message's number (#Q), else your last"
    if room is None or not room.joined:
        app.notify("Open a room first.", severity="warning")
        return False
    words = rest[0].split(None, 1) if rest else []
    seq: int | None
    if words and words[0].removeprefix("#").isdigit():
        seq, content = int(words[0].removeprefix("#")), words[1] if len(words) > 1 else ""
    else:
        seq, content = room.own_last_seq(), rest[0] if rest else ""
    if verb == "edit" and not content.strip():
        app.notify(usage, title="Commands", severity="warning")
        return False
    if seq is None or seq < 1:
        app.notify(f"No message of yours here to {verb}: {usage}", severity="warning")
        return False
    if app._v2_client("edits") is None:
        app.notify(f"/{verb} needs a v2 server that keeps history.", severity="warning")
        return False
    name, number = room.name, seq
    if verb == "edit":
        return await app._command(
            lambda c: c.edit_message(name, number, content), "/edit was not sent."
        )
    return await app._command(lambda c: c.delete_message(name, number), "/delete was not sent.")


async def _create(c: ChatClient, room: str, args: list[str]) -> None:
    await c.create_room(args[0], " ".join(args[1:]))


async def _private(c: ChatClient, room: str, args: list[str]) -> None:
    await c.create_room(args[0], " ".join(args[1:]), private=True)


async def _dm(c: ChatClient, room: str, args: list[str]) -> None:
    await c.open_dm(args[0])


async def _invite(c: ChatClient, room: str, args: list[str]) -> None:
    await c.invite(room, args[0])


async def _kick(c: ChatClient, room: str, args: list[str]) -> None:
    await c.kick(room, args[0], why=" ".join(args[1:]) or None)


async def _ban(c: ChatClient, room: str, args: list[str]) -> None:
    seconds, why = _seconds_and_why(args[1:])
    await c.ban(args[0], room, seconds=seconds, why=why)


async def _unban(c: ChatClient, room: str, args: list[str]) -> None:
    await c.unban(args[0], room)


async def _mute(c: ChatClient, room: str, args: list[str]) -> None:
    seconds, why = _seconds_and_why(args[1:])
    await c.mute(args[0], room, seconds=seconds, why=why)


async def _unmute(c: ChatClient, room: str, args: list[str]) -> None:
    await c.unmute(args[0], room)


async def _slow(c: ChatClient, room: str, args: list[str]) -> None:
    await c.slow_mode(room, int(args[0]) if args[0].isdigit() else 0)


async def _archive(c: ChatClient, room: str, args: list[str]) -> None:
    await c.archive_room(room, why=" ".join(args) or None)


_SLASH: dict[str, Callable[[ChatClient, str, list[str]], Awaitable[None]]] = {
    "create": _create,
    "private": _private,
    "dm": _dm,
    "invite": _invite,
    "kick": _kick,
    "ban": _ban,
    "unban": _unban,
    "mute": _mute,
    "unmute": _unmute,
    "slow": _slow,
    "archive": _archive,
}
