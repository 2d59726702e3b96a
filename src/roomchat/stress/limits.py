"""The open-files limit: each simulated user holds one socket."""

from __future__ import annotations

import resource

__all__ = ["raise_open_files"]

_SPARE = 64  # files besides the sessions' sockets (pipes, the interpreter's own)


def raise_open_files(sessions: int) -> str | None:
    """Raise this process's open-files limit for ``sessions`` sockets, where permitted.

    Returns None when the limit suffices, else a sentence saying plainly why it does not.
    """
    needed = sessions + _SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= needed:
        return None
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return None
    try:  # raising the hard limit needs privilege (CAP_SYS_RESOURCE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
    except (ValueError, OSError):
        return (
            f"open-files limit is {soft} (hard {hard}) but {needed} are needed for "
            f"{sessions} sessions and it cannot be raised here; connections past the "
            "limit will fail (raise it with `ulimit -n` or use more --processes)"
        )
    return None
