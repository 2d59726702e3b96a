"""Giving memory back to the system after a burst of big buffers is freed.

When slow consumers are cut off, their unsent output (up to ``max_pending_output``
each, held by the transports as large ``bytes`` objects) is freed at once. CPython hands
objects that large to the C allocator, and glibc keeps freed heap memory for reuse
instead of returning it: measured with 200 slow consumers cut off in busy rooms
(``make soak``, part "slow"), RSS stayed at its peak after they were gone. glibc's
``malloc_trim(0)`` returns the free pages; it costs a few milliseconds, so it runs once,
a moment after such a burst (not per disconnect). Where it does not exist (not glibc),
nothing happens.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["MemoryTrimmer"]

log = logging.getLogger("roomchat.server")

#: Seconds after the last big free before trimming: a burst of cut-offs is trimmed once.
TRIM_AFTER = 1.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


class MemoryTrimmer:
    """Calls malloc_trim once, TRIM_AFTER seconds after the last ``soon()``."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._handle: asyncio.TimerHandle | None = None
        self.trims = 0

    def soon(self) -> None:
        if self._trim is None:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(TRIM_AFTER, self._run)

    def _run(self) -> None:
        self._handle = None
        if self._trim is not None:
            self._trim(0)
            self.trims += 1
            log.debug("returned freed memory to the system (malloc_trim)")

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
