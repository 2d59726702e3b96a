"""What the server and the load tool need from the host: the open-files limit, the loop.

Each session (server side) and each simulated user (load tool) holds one socket, so both
raise the open-files limit at start-up, and both run on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["open_files_limit", "raise_open_files", "run"]

T = TypeVar("T")


def raise_open_files(needed: int | None = None) -> str | None:
    """Raise this process's open-files limit (soft, and hard where permitted).

    ``needed=None``: raise the soft limit to the hard one (what a server wants).
    ``needed=n``: make sure at least ``n`` files may be open; raises the hard limit too
    if it is lower and this process may (CAP_SYS_RESOURCE).
    Returns None when the limit now suffices (or the platform has none), else one sentence
    saying plainly what the limit is and why it could not be raised.
    """
    try:
        import resource
    except ImportError:  # no such limit on this platform (Windows)
        return None
    unlimited = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == unlimited or (needed is None and soft == hard):
        return None
    if needed is not None and soft >= needed:
        return None
    if needed is None or hard == unlimited or hard >= needed:
        target = hard if needed is None else needed
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            return f"cannot raise the open-files limit from {soft} to {target}: {exc}"
        return None
    try:  # raising the hard limit needs privilege
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    except (ValueError, OSError):
        return (
            f"the open-files limit is {soft} (hard {hard}) but {needed} are needed "
            "and it cannot be raised here"
        )
    return None


def open_files_limit() -> int | None:
    """This process's soft open-files limit; None when unlimited or unknown (then the
    server's admission has no open-files check)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new event loop: uvloop's if installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on Windows): plain asyncio works too
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result
