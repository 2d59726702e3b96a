"""Where messages last: ``--store URL`` (docs/operating.md, "History that lasts").

- ``sqlite:///PATH`` (the default: ``roomchat.sqlite3`` in ``--data-dir``, else in the
  user's state directory): one file, for one instance (sqlite.py);
- ``postgresql://…``: for many instances sharing rooms over Redis (postgres.py);
- ``memory://``: nothing outlives the process (memory.py).

:class:`~roomchat.server.store.archive.Archive` is the server's side of whichever it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from roomchat.server.core.ports import MessageStore, StoreError
from roomchat.server.store.archive import Archive
from roomchat.server.store.memory import MemoryStore
from roomchat.server.store.sqlite import FILE_NAME, SQLiteStore

__all__ = ["Archive", "StoreError", "default_data_dir", "open_store", "store_scheme"]

SCHEMES = ("sqlite", "postgresql", "postgres", "memory")


def default_data_dir() -> Path:
    """``$XDG_STATE_HOME/roomchat``, else ``~/.local/state/roomchat``."""
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "roomchat"


def store_scheme(url: str) -> str:
    """The scheme of a --store URL; ValueError with a clear sentence if unknown."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"--store {url!r}: expected sqlite:///PATH, postgresql://… or memory://")
    return scheme


def open_store(url: str | None, data_dir: str | None = None) -> MessageStore:
    """The store a --store URL names (None: SQLite in ``data_dir`` or the default)."""
    if url is None:
        directory = Path(data_dir).expanduser() if data_dir else default_data_dir()
        return SQLiteStore(directory / FILE_NAME)
    scheme = store_scheme(url)
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        path = url[len("sqlite://") :]
        if not path or path == "/":
            raise ValueError(f"--store {url!r}: give a file, as in sqlite:///var/lib/roomchat.db")
        return SQLiteStore(Path(path).expanduser())
    from roomchat.server.store.postgres import PostgresStore  # the driver only if asked

    return PostgresStore(url)
