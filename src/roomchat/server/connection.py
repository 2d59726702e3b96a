"""The asyncio shell around a session: moves bytes between a socket and session.py.

:class:`ChatConnection` is the ``asyncio.Protocol`` of one TCP connection. It owns the
transport and nothing else of interest: every rule lives in the sans-I/O
:class:`~roomchat.server.session.Session`, and every outbound byte goes through the
session's :class:`~roomchat.server.outbox.Mailbox`. It is given the few things it uses
(:class:`Hub`), not the whole server.

Slow consumers (docs/protocol.md): the transport's high-water mark is the session's
``max_pending_output``; passing it calls ``pause_writing``, and the session is aborted on
the next turn (not from inside a fan-out that is iterating over room members).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from roomchat.server.outbox import Outbox
from roomchat.server.rooms import RoomManager
from roomchat.server.session import Session, new_session_id, new_user_id
from roomchat.server.stats import ServerStats

__all__ = ["ChatConnection", "Hub"]

log = logging.getLogger("roomchat.server")


@dataclass(eq=False)
class Hub:
    """What every connection of a server shares."""

    rooms: RoomManager
    outbox: Outbox
    max_line_length: int
    max_pending_output: int
    #: The open connections (the server closes them at shutdown).
    connections: set[ChatConnection] = field(default_factory=set)
    #: The server's counters (stats.py), read by /metrics.
    stats: ServerStats = field(default_factory=ServerStats)
    #: Connections refused, by reason (whoever refuses one counts it here; /metrics
    #: exports it as roomchat_connections_refused_total{reason=...}).
    refused: Counter[str] = field(default_factory=Counter)


class ChatConnection(asyncio.Protocol):
    __slots__ = ("_hub", "_reason", "_transport", "session")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._transport: asyncio.Transport | None = None
        self._reason = "connection lost"
        self.session: Session | None = None

    def __repr__(self) -> str:
        return repr(self.session) if self.session is not None else "<connection>"

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        hub = self._hub
        peer = transport.get_extra_info("peername")
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        # pause_writing fires when the transport holds more than this: a slow consumer.
        transport.set_write_buffer_limits(high=hub.max_pending_output)
        mailbox = hub.outbox.open(new_user_id(), new_session_id(), transport.write)
        self.session = session = Session(
            hub.rooms,
            mailbox,
            self,
            max_line_length=hub.max_line_length,
            name=name,
            stats=hub.stats,
        )
        hub.connections.add(self)
        hub.stats.connections_accepted += 1
        log.info("%r connected", session, extra=session.log_fields)
        session.start(hub.rooms.details)

    def data_received(self, data: bytes) -> None:
        assert self.session is not None
        self.session.receive_data(data)

    def eof_received(self) -> bool:
        assert self.session is not None
        self.session.receive_eof()
        return True  # the session closes the transport once its output is queued

    def connection_lost(self, exc: Exception | None) -> None:
        self._hub.connections.discard(self)
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
