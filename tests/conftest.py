"""Shared fixtures: a real roomchat server on 127.0.0.1, port 0, per test; real
redis-server processes (a single server, a 3-master cluster) on free ports."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
import uvloop
from hypothesis import settings

from roomchat.server import ChatServer, ServerConfig
from tests.redis_servers import RedisCluster, RedisServer

#: The browser tests' fixtures (web, drivers) live beside their helpers.
pytest_plugins = ("tests.browser",)

# The server and client tests run on both event loops: uvloop is what `roomchat serve`
# runs on, the standard loop is what the library promises to work with too.
_ON_BOTH_LOOPS = {
    "test_server.py",
    "test_client.py",
    "test_tls.py",
    "test_limits.py",
    "test_fuzz_sockets.py",
    "test_shell.py",
}


def pytest_configure(config: pytest.Config) -> None:
    # `roomchat serve` keeps its SQLite store in the user's state directory: servers the
    # tests start as commands keep theirs in a directory of this run, never the user's.
    import tempfile

    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="roomchat-tests-state-")


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


# Real redis-server processes (tests/redis_servers.py). A test that blocks on these
# helpers from async code (restart, migrate_slot) can run them in a thread
# (`await asyncio.to_thread(redis_cluster.restart_node, node)`) to keep its clients live.


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the whole run, emptied by each test that uses ``bus_url``."""
    srv = RedisServer.launch()
    try:
        yield srv
    finally:
        srv.close(kill=True)


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """Each bus a server can run on: the in-process one and a real (emptied) Redis, so
    that one behavioural suite proves both do everything rooms and presence do."""
    if request.param == "memory":
        return "memory://"
    redis_server: RedisServer = request.getfixturevalue("shared_redis")
    redis_server.command("FLUSHALL")
    return redis_server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port, for this test only."""
    srv = RedisServer.launch()
    try:
        yield srv
    finally:
        srv.close(kill=True)


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    """A fresh 3-master cluster for this test only (about 2 s to create): the test may
    restart nodes and migrate slots."""
    cluster = RedisCluster.launch()
    try:
        yield cluster
    finally:
        cluster.close(kill=True)


@pytest.fixture(scope="module")
def redis_cluster_shared() -> Iterator[RedisCluster]:
    """One 3-master cluster for a whole test module. Only for tests that leave it as
    they found it: no node restarts, no slot migrations, no CONFIG SET."""
    cluster = RedisCluster.launch()
    try:
        yield cluster
    finally:
        cluster.close(kill=True)


# Hypothesis: `HYPOTHESIS_PROFILE=long` (or `pytest --hypothesis-profile=long`) runs the
# property and stateful tests far longer than `make test` does
# (tests/server/core/test_session_model.py).
settings.register_profile("long", max_examples=1000, stateful_step_count=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@dataclass
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's certificate chain (for 127.0.0.1 and localhost)
    key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    authority.cert_pem.write_to_path(str(pki.ca))
    issued.private_key_pem.write_to_path(str(pki.key))
    for index, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(str(pki.cert), append=index > 0)
    return pki


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # Let a fixture know whether the test body failed (tests/browser.py's drivers: the
    # screenshots).
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
