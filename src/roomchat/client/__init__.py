"""Client library for protocol v1 servers (roomchat or rust-chat-server), and roomchat's
opt-in v2 (docs/protocol.md, "Version 2") with fallback to v1.

    async with await connect("127.0.0.1", 8080) as client:
        print(client.user_id, [room.name for room in client.rooms])
        await client.join("general")
        await client.send("general", "hello")
        async for event in client:
            print(event)

With ``connect(..., v2=True, name="alice")`` the client sends ``hello`` and waits up to
``hello_timeout`` for ``welcome``; a server that does not answer (the original, or
roomchat before v2) leaves the session in v1 (``client.version == 1``) and everything
v1 works as before. In v2 the client answers the server's pings itself, and errors
arrive as :class:`~roomchat.protocol.Error` events in the event stream.
:class:`ReconnectingClient` adds reconnection with catch-up on top.

With the lasting history (docs/protocol.md, "History that lasts"):
``await client.history("general", before=42, limit=50)`` returns the ``history`` page
answering it (not delivered as an event); ``edit_message``, ``delete_message``,
``mark_read`` and ``typing`` send their commands, whose outcome comes as events
(``message_edited``, ``message_deleted``, ``typing``) or an ``error``. The
reconnecting client keeps each room's epoch (``epochs``) and re-joins with it.

Events arrive either through ``async for`` (queued; reading from the socket pauses
while too many wait, so memory stays bounded) or, for callers that must not pay a
task switch per event, through an ``on_event`` callback. A caller that must not even
pay for decoding every event (the load tool, receiving a million deliveries a second)
can take the raw bytes after login with ``on_data`` and scan them itself.

Built as python-websockets is, in three modules:

- :mod:`roomchat.client.protocol`: :class:`ClientProtocol`, the session's rules,
  sans-I/O (bytes in, events and bytes out; tests drive it without sockets);
- :mod:`roomchat.client.connection`: :func:`connect` and :class:`ChatClient`, the
  asyncio shell that moves bytes between the transport and the protocol;
- :mod:`roomchat.client.reconnect`: :class:`ReconnectingClient`, and :class:`CatchUp`,
  its catch-up rules for any client to reuse.

This package knows nothing of the server; it uses only :mod:`roomchat.protocol` (and
:mod:`roomchat.addresses`).
"""

from __future__ import annotations

from roomchat.client.connection import (
    DEFAULT_PORT,
    ChatClient,
    DataCallback,
    EventCallback,
    connect,
    parse_address,
    tls_context,
)
from roomchat.client.protocol import (
    DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ClientProtocol,
    CommandError,
    ConnectionClosed,
    HelloRefused,
    JoinAnswered,
    JoinRefused,
    JoinResult,
    PageAnswered,
    PageRefused,
    PongAnswered,
    ProtocolViolation,
    Reply,
    State,
)
from roomchat.client.reconnect import (
    CatchUp,
    ClientEvent,
    Disconnected,
    HistoryEnd,
    HistoryStart,
    MissedMessages,
    Reconnected,
    ReconnectingClient,
)

__all__ = [
    "DEFAULT_CLIENT_MAX_LINE_LENGTH",
    "DEFAULT_PORT",
    "CatchUp",
    "ChatClient",
    "ClientEvent",
    "ClientProtocol",
    "CommandError",
    "ConnectionClosed",
    "DataCallback",
    "Disconnected",
    "EventCallback",
    "HelloRefused",
    "HistoryEnd",
    "HistoryStart",
    "JoinAnswered",
    "JoinRefused",
    "JoinResult",
    "MissedMessages",
    "PageAnswered",
    "PageRefused",
    "PongAnswered",
    "ProtocolViolation",
    "Reconnected",
    "ReconnectingClient",
    "Reply",
    "State",
    "connect",
    "parse_address",
    "tls_context",
]
