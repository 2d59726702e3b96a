"""Fixtures for the store tests: a real PostgreSQL (tests/server/store/postgres_server.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.server.store.postgres_server import PostgresServer

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole run (each test takes its own database of it)."""
    server = PostgresServer.launch()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the shared server, for this test only."""
    return postgres_server.create_database(f"test_{next(_databases)}")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, to kill and start again (outage tests)."""
    server = PostgresServer.launch()
    try:
        yield server
    finally:
        server.close()
