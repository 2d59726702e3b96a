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

import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.worker import Worker, WorkerState

from roomchat.client import (
    ChatClient,
    ConnectionClosed,
    HelloRefused,
    ProtocolViolation,
    ReconnectingClient,
    parse_address,
)
from roomchat.protocol import DEFAULT_PORT, LoginSuccessful, valid_name
from roomchat.tui.screens import ChatScreen, ConnectScreen
from roomchat.tui.state import DEFAULT_HISTORY_LIMIT, JOIN_HISTORY, ChatState, StateEvent

__all__ = ["DEFAULT_ADDRESS", "RoomChatApp"]

DEFAULT_ADDRESS = f"localhost:{DEFAULT_PORT}"


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


#: The chat page's commands (v2 servers with the community features, docs/moderation.md).
SLASH_HELP = (
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
