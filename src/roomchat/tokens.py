"""Tokens that prove a v2 user name (docs/protocol.md, "Tokens"). Pure functions, no I/O:
the caller passes the secret and the time.

A token is ``<expiry>.<mac>``: ``expiry`` the Unix time (seconds, decimal) after which it
is refused, ``mac`` the unpadded base64url of HMAC-SHA256(secret,
``b"roomchat-token-v1\\0" + name + b"\\0" + expiry``). It is bound to the exact name
(case included) and holds no secret: whoever has it may use the name until it expires,
so it travels only to that user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

__all__ = ["MIN_SECRET_BYTES", "TOKEN_MAX_LENGTH", "mint", "token_expiry", "verify"]

#: Secrets shorter than this are refused (HMAC-SHA256 wants 32 random bytes).
MIN_SECRET_BYTES: Final = 16
#: Longer ``token`` values are refused before any work is done.
TOKEN_MAX_LENGTH: Final = 128

_DOMAIN = b"roomchat-token-v1\0"
_MAX_EXPIRY = 10**12  # ~ year 33658: more digits than this is garbage


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret must be at least {MIN_SECRET_BYTES} bytes")


def _mac(secret: bytes, name: str, expiry: str) -> str:
    digest = hmac.new(
        secret, _DOMAIN + name.encode() + b"\0" + expiry.encode("ascii"), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint(secret: bytes, name: str, expires_at: int) -> str:
    """A token for ``name`` valid until ``expires_at`` (Unix seconds, excluded)."""
    _check_secret(secret)
    if not 0 < expires_at < _MAX_EXPIRY:
        raise ValueError("expires_at out of range")
    expiry = str(expires_at)
    return f"{expiry}.{_mac(secret, name, expiry)}"


def token_expiry(token: str) -> int | None:
    """The expiry a well-formed token claims (not verified), or None."""
    expiry, sep, _ = token.partition(".")
    if not sep or not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
        return None
    return int(expiry)


def verify(secret: bytes, name: str, token: str, now: float) -> bool:
    """Whether ``token`` was minted with ``secret`` for exactly ``name`` and ``now`` is
    before its expiry. The MAC is compared in constant time; never raises on any token."""
    _check_secret(secret)
    if len(token) > TOKEN_MAX_LENGTH or not token.isascii():
        return False
    expires_at = token_expiry(token)
    if expires_at is None or str(expires_at) != token.partition(".")[0]:
        return False  # leading zeros: one token per (name, expiry)
    expected = _mac(secret, name, str(expires_at))
    ok = hmac.compare_digest(expected, token.partition(".")[2])
    return ok and now < expires_at
