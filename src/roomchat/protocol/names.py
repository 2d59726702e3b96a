"""v2 user names (docs/protocol.md, "Names"): what is valid, and when two are the same."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["NAME_MAX_LENGTH", "name_key", "valid_name"]

#: Longest name, in characters (each one byte: names are ASCII).
NAME_MAX_LENGTH: Final = 32

_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX_LENGTH}}}")


def valid_name(name: str) -> bool:
    """1 to 32 of the ASCII letters, digits, ``_``, ``-`` and ``.``; nothing else.

    v1's random user ids (5 characters of ``A-Z a-z 0-9 _ -``) are valid names: names
    and random ids share one namespace.
    """
    return _NAME.fullmatch(name) is not None


def name_key(name: str) -> str:
    """What uniqueness is decided on: names equal ignoring ASCII case are the same user."""
    return name.lower()
