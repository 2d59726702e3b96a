"""Server time, as the protocol carries it (``ts``: ms since the Unix epoch)."""

from __future__ import annotations

import time

__all__ = ["now_ms"]

_time_ns = time.time_ns


def now_ms() -> int:
    """Server time for ``ts``: ms since the Unix epoch."""
    return _time_ns() // 1_000_000
