"""Shared fixtures: a real roomchat server on 127.0.0.1, port 0, per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
import uvloop
from hypothesis import settings

from roomchat.server import ChatServer, ServerConfig

# The server and client tests run on both event loops: uvloop is what `roomchat serve`
# runs on, the standard loop is what the library promises to work with too.
_ON_BOTH_LOOPS = {"test_server.py", "test_client.py"}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name in _ON_BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    """A running server with the packaged rooms, on an ephemeral port."""
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        await srv.close()


# Hypothesis: `HYPOTHESIS_PROFILE=long` (or `pytest --hypothesis-profile=long`) runs the
# property and stateful tests far longer than `make test` does (tests/test_session_model.py).
settings.register_profile("long", max_examples=1000, stateful_step_count=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
