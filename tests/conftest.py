"""Shared fixtures: a real roomchat server on 127.0.0.1, port 0, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from roomchat.server import ChatServer, ServerConfig


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    """A running server with the packaged rooms, on an ephemeral port."""
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        await srv.close()
