"""The TCP transport (plain or TLS): JSON lines straight through (docs/protocol.md).

Everything a connection has besides its framing (admission, TLS, keepalive, slow
consumers, counting, the log lines) is the shell's (shell.py). Over TCP the framing is
nothing: received bytes go to the session as they are, and the session's output goes to
``transport.write`` as it is.
"""

from __future__ import annotations

import asyncio

from roomchat.server.shells.shell import ShellConnection

__all__ = ["TcpConnection"]


class TcpConnection(ShellConnection):
    __slots__ = ()

    def opened(self, transport: asyncio.Transport) -> None:
        self.start_session(transport.write)

    def data_received(self, data: bytes) -> None:
        # Per read, the hot path: straight to the session once there is one (before,
        # the shell keeps what a TLS client sent ahead of its handshake).
        session = self.session
        if session is not None:
            session.receive_data(data)
        else:
            super().data_received(data)

    def received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.receive_data(data)

    def ended(self) -> bool:
        if self.session is not None:
            self.session.receive_eof()
        # The session closes the transport once its output is queued.
        return True
