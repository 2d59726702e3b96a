"""JWT logins: check a JSON Web Token and say who it names (:class:`Identity`).

An :class:`Authenticator` is built once, at start-up, from one key file: a PEM public key
(RSA or EC), an HMAC secret, or a JSON Web Key Set. That is the only I/O here; after it,
:meth:`Authenticator.verify` is a pure function of the token and the time (``now=``,
so tests and callers never depend on the clock).

The design guards against the known JWT pitfalls rather than trusting the token:

* The token's header never chooses the kind of key. Each key accepts only the
  algorithms of its own family (an HMAC secret: ``HS*``; an RSA key: ``RS*``/``PS*``; an
  EC key: the ``ES*`` of its curve), intersected with the configured ``algorithms``.
  So a public key can never be used as an HMAC secret ("algorithm confusion"), and
  ``alg: none`` is refused before anything else is looked at.
* A key file that is not PEM is an HMAC secret, unless it looks like a public key in
  another form (JSON, DER, OpenSSH): those are refused, since their content is public and
  anyone could sign with it.
* PyJWT checks the signature only; every claim is checked here, against the caller's
  ``now`` and ``leeway``: ``exp``, ``nbf``, ``iat``, ``aud`` (required when an audience
  is configured, refused when none is), ``iss``, ``sub`` (a valid roomchat user name) and
  roomchat's own claims ``admin``, ``rooms`` and ``roles``, whose types are strict.
* Tokens longer than :data:`MAX_TOKEN_LENGTH` are refused before any decoding.

Every refusal is an :class:`AuthError` whose text is a short reason fit for the log and
for the client ("token expired", "bad signature", ...). :func:`mint_token` makes tokens
for the ``roomchat token`` command, the docs and the tests.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from roomchat.protocol import valid_name

__all__ = [
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "ROLES",
    "AuthError",
    "Authenticator",
    "Identity",
    "looks_like_jwt",
    "mint",
    "mint_token",
]

#: Longer tokens are refused before they are decoded.
MAX_TOKEN_LENGTH: Final = 8192
#: HMAC secrets shorter than this are refused (HS256 wants at least 256 bits).
MIN_SECRET_BYTES: Final = 32
#: The values the ``roles`` claim may give a room.
ROLES: Final = frozenset({"owner", "moderator", "member"})

_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
_RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_SUPPORTED: Final = frozenset(
    {*_HMAC_ALGORITHMS, *_RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA"}
)

_PRIVATE_KEYS: Final = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

# PyJWT verifies the signature (and that the payload is a JSON object); the claims are
# checked by _identity, against the caller's clock.
_DECODE_OPTIONS: Final[Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token names, and what it grants."""

    #: The user name (the ``sub`` claim), a valid roomchat name.
    name: str
    #: The ``admin`` claim is ``true``.
    admin: bool = False
    #: The ``rooms`` claim: rooms the user may join even if they are private.
    rooms: tuple[str, ...] = ()
    #: The ``roles`` claim, ``{"room": "owner" | "moderator" | "member"}``, as sorted pairs.
    roles: tuple[tuple[str, str], ...] = ()
    #: The ``exp`` claim (Unix seconds), if the token has one.
    expires: int | None = None


class AuthError(Exception):
    """A token is refused; ``str(exc)`` is the short reason."""


@dataclass(frozen=True, slots=True)
class _Key:
    """One verification key and the algorithms it may verify."""

    key: Any  # bytes (HMAC) or a cryptography public key
    algorithms: tuple[str, ...]
    kid: str | None = None


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWT's shape: three base64url parts separated by dots (the
    last may be empty). roomchat's HMAC tokens (``<expiry>.<mac>``) have two."""
    return len(token) <= MAX_TOKEN_LENGTH and _JWT.fullmatch(token) is not None


def _family(key: Any) -> tuple[str, ...]:
    """The algorithms a key of this type can verify."""
    if isinstance(key, bytes):
        return _HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        return (algorithm,) if algorithm else ()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


def _kind(key: Any) -> str:
    if isinstance(key, bytes):
        return "an HMAC secret"
    if isinstance(key, rsa.RSAPublicKey):
        return "an RSA public key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC public key ({key.curve.name})"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "an EdDSA public key"
    return f"a key of type {type(key).__name__}"


def _hmac_secret(data: bytes, where: str) -> bytes:
    if len(data) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the HMAC secret in {where} is {len(data)} bytes; it must be at least "
            f"{MIN_SECRET_BYTES} (for example: head -c 48 /dev/urandom | base64)"
        )
    return data


def _load_key_file(path: str) -> Any:
    """The key in ``path``: a PEM public key, else (not PEM) the HMAC secret."""
    where = repr(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the key file {where}: {exc.strerror or exc}") from None
    if b"-----BEGIN " in data:
        if b"PRIVATE KEY-----" in data:
            raise ValueError(
                f"the key file {where} holds a private key; give the server the public key "
                "(openssl pkey -in private.pem -pubout)"
            )
        if b"-----BEGIN CERTIFICATE" in data:
            raise ValueError(
                f"the key file {where} holds a certificate; give the server its public key "
                "(openssl x509 -in cert.pem -pubkey -noout)"
            )
        try:
            return serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"the key file {where} is not a valid PEM public key: {exc}") from None
    secret = data.rstrip(b"\r\n")
    # Public keys in other forms must not become an HMAC secret: anyone could sign with it.
    if secret.lstrip().startswith((b"{", b"[")):
        raise ValueError(
            f"the key file {where} looks like JSON; a JSON Web Key Set goes in jwks_file"
        )
    if secret.startswith((b"ssh-", b"ecdsa-sha2-")):
        raise ValueError(f"the key file {where} holds an OpenSSH public key; convert it to PEM")
    try:
        serialization.load_der_public_key(secret)
    except (ValueError, TypeError):
        pass
    else:
        raise ValueError(f"the key file {where} holds a DER public key; convert it to PEM")
    return _hmac_secret(secret, f"the key file {where}")


def _load_jwks_file(path: str) -> list[_Key]:
    """The signing keys of the JSON Web Key Set in ``path``, each with its one algorithm."""
    where = repr(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ValueError(f"cannot read the JWKS file {where}: {reason}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the JWKS file {where} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f'the JWKS file {where} is not a key set: want {{"keys": [...]}}')
    try:
        key_set = jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWTError as exc:
        raise ValueError(f"the JWKS file {where} has no usable key: {exc}") from None
    keys: list[_Key] = []
    for jwk in key_set:
        if jwk.public_key_use not in (None, "sig"):
            continue  # an encryption key
        key = jwk.key
        if isinstance(key, _PRIVATE_KEYS):
            key = key.public_key()  # verify with the public half of a private JWK
        if isinstance(key, bytes):
            _hmac_secret(key, f"the JWKS file {where} (kid {jwk.key_id!r})")
        # The key's own alg, or PyJWT's default for its type (RS256, ES256 on P-256, HS256).
        algorithms = tuple(a for a in _family(key) if a == jwk.algorithm_name)
        keys.append(_Key(key, algorithms, jwk.key_id))
    if not keys:
        raise ValueError(f"the JWKS file {where} has no signing key")
    kids = [key.kid for key in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise ValueError(f"the keys in the JWKS file {where} need distinct kids")
    return keys


def _number(payload: Mapping[str, Any], claim: str) -> float | None:
    """A NumericDate claim: absent (None), or a finite number; else AuthError."""
    if claim not in payload:
        return None
    value = payload[claim]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(f"claim {claim} must be a number")
    return float(value)


class Authenticator:
    """Verifies JWTs signed with one key file's key(s); see the module docstring."""

    __slots__ = ("_audience", "_issuer", "_keys", "_leeway", "_source")

    def __init__(
        self,
        *,
        key_file: str | None = None,
        jwks_file: str | None = None,
        algorithms: Sequence[str] = ("HS256", "RS256", "ES256"),
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        if (key_file is None) == (jwks_file is None):
            raise ValueError("give exactly one of key_file and jwks_file")
        if isinstance(algorithms, str):
            raise ValueError("algorithms must be a sequence of names, not one string")
        unknown = [name for name in algorithms if name not in _SUPPORTED]
        if unknown:
            raise ValueError(
                f"unsupported JWT algorithm(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(sorted(_SUPPORTED))}"
            )
        if not math.isfinite(leeway) or leeway < 0:
            raise ValueError("leeway must be a non-negative number of seconds")
        if audience == "" or issuer == "":
            raise ValueError("audience and issuer must not be empty (use None for 'any')")
        allowed = set(algorithms)
        if key_file is not None:
            key = _load_key_file(key_file)
            keys = [_Key(key, _family(key))]
            self._source = f"key from {key_file}"
            path = key_file
        else:
            assert jwks_file is not None
            keys = _load_jwks_file(jwks_file)
            self._source = f"{len(keys)} key{'s' if len(keys) > 1 else ''} from {jwks_file}"
            path = jwks_file
        self._keys: tuple[_Key, ...] = tuple(
            _Key(k.key, tuple(a for a in k.algorithms if a in allowed), k.kid) for k in keys
        )
        for old, new in zip(keys, self._keys, strict=True):
            if not new.algorithms:
                which = f" (kid {old.kid!r})" if old.kid is not None else ""
                raise ValueError(
                    f"the key{which} in {path!r} is {_kind(old.key)}, which verifies "
                    f"{'/'.join(old.algorithms) or 'no supported algorithm'}, but the "
                    f"accepted algorithms are {'/'.join(algorithms) or 'none'}"
                )
        self._audience = audience
        self._issuer = issuer
        self._leeway = float(leeway)

    @property
    def description(self) -> str:
        """One line for the start-up log, e.g. ``JWT (RS256, key from /k.pem, audience 'chat')``."""
        algorithms = list(dict.fromkeys(a for key in self._keys for a in key.algorithms))
        parts = ["/".join(algorithms), self._source]
        if self._audience is not None:
            parts.append(f"audience {self._audience!r}")
        if self._issuer is not None:
            parts.append(f"issuer {self._issuer!r}")
        return f"JWT ({', '.join(parts)})"

    looks_like_jwt = staticmethod(looks_like_jwt)

    def verify(self, token: str, now: float | None = None) -> Identity:
        """The identity ``token`` proves at ``now`` (Unix seconds; default: the clock).
        Raises :class:`AuthError` with a short reason for any token it refuses."""
        if not isinstance(token, str):
            raise AuthError("token must be a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(f"token longer than {MAX_TOKEN_LENGTH} characters")
        if _JWT.fullmatch(token) is None:
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthError("token has no algorithm")
        if alg.lower() == "none":
            raise AuthError("algorithm none is not accepted")
        key = self._pick(header)
        if alg not in key.algorithms:
            raise AuthError(f"algorithm {alg} is not accepted")
        try:
            payload = jwt.decode(token, key.key, algorithms=[alg], options=_DECODE_OPTIONS)
        except jwt.InvalidSignatureError:
            raise AuthError("bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"algorithm {alg} is not accepted") from None
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise AuthError("malformed token") from None
        return self._identity(payload, time.time() if now is None else now)

    def _pick(self, header: Mapping[str, Any]) -> _Key:
        kid = header.get("kid")
        if len(self._keys) == 1 and self._keys[0].kid is None:
            return self._keys[0]  # a key file (or a one-key set without kid): kid is moot
        if kid is None:
            if len(self._keys) == 1:
                return self._keys[0]
            raise AuthError("token has no kid")
        if not isinstance(kid, str):
            raise AuthError("malformed token")
        for key in self._keys:
            if key.kid == kid:
                return key
        raise AuthError("unknown kid")

    def _identity(self, payload: Mapping[str, Any], now: float) -> Identity:
        leeway = self._leeway
        exp = _number(payload, "exp")
        nbf = _number(payload, "nbf")
        iat = _number(payload, "iat")
        if exp is not None and exp <= now - leeway:
            raise AuthError("token expired")
        if nbf is not None and nbf > now + leeway:
            raise AuthError("token not yet valid")
        if iat is not None and iat > now + leeway:
            raise AuthError("token issued in the future")
        self._check_audience(payload)
        if self._issuer is not None:
            if "iss" not in payload:
                raise AuthError("token has no iss")
            if payload["iss"] != self._issuer:
                raise AuthError("wrong issuer")
        if "sub" not in payload:
            raise AuthError("token has no sub")
        sub = payload["sub"]
        if not isinstance(sub, str) or not valid_name(sub):
            raise AuthError("sub is not a valid user name")
        admin = payload.get("admin", False)
        if not isinstance(admin, bool):
            raise AuthError("claim admin must be true or false")
        rooms = payload.get("rooms", [])
        if not isinstance(rooms, list) or not all(isinstance(room, str) for room in rooms):
            raise AuthError("claim rooms must be a list of room names")
        roles = payload.get("roles", {})
        if not isinstance(roles, dict) or not all(
            isinstance(room, str) and role in ROLES for room, role in roles.items()
        ):
            raise AuthError("claim roles must map room names to owner, moderator or member")
        return Identity(
            name=sub,
            admin=admin,
            rooms=tuple(rooms),
            roles=tuple(sorted(roles.items())),
            expires=None if exp is None else math.floor(exp),
        )

    def _check_audience(self, payload: Mapping[str, Any]) -> None:
        # RFC 7519 4.1.3: a token meant for an audience is refused by anyone not in it,
        # so with no audience configured a token with aud is refused too.
        if "aud" not in payload:
            if self._audience is not None:
                raise AuthError("token has no aud")
            return
        aud = payload["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise AuthError("claim aud must be a string or a list of strings")
        if self._audience is None:
            raise AuthError("token has an aud but the server expects none")
        if self._audience not in audiences:
            raise AuthError("wrong audience")


def mint_token(
    private_key: str | bytes,
    sub: str,
    *,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    seconds: int = 3600,
    admin: bool = False,
    rooms: Sequence[str] = (),
    roles: Mapping[str, str] | None = None,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT for ``sub``, valid for ``seconds`` from ``now`` (default: the clock).

    ``private_key`` is the HMAC secret (``HS*``, at least :data:`MIN_SECRET_BYTES`) or a
    PEM private key (``RS*``/``PS*``/``ES*``/``EdDSA``). Raises ValueError on bad input.
    """
    if algorithm not in _SUPPORTED:
        raise ValueError(f"unsupported JWT algorithm {algorithm!r}")
    if not valid_name(sub):
        raise ValueError(f"{sub!r} is not a valid user name")
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    if isinstance(rooms, str) or not all(isinstance(room, str) for room in rooms):
        raise ValueError("rooms must be a sequence of room names")
    if roles is not None and not all(role in ROLES for role in roles.values()):
        raise ValueError("roles must map room names to owner, moderator or member")
    key_bytes = private_key.encode() if isinstance(private_key, str) else private_key
    key: Any
    if algorithm in _HMAC_ALGORITHMS:
        if b"-----BEGIN " in key_bytes:
            raise ValueError(f"{algorithm} wants an HMAC secret, not a PEM key")
        key = _hmac_secret(key_bytes, "private_key")
    else:
        try:
            key = serialization.load_pem_private_key(key_bytes, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{algorithm} wants a PEM private key: {exc}") from None
    issued = math.floor(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": sub, "iat": issued, "exp": issued + seconds}
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if admin:
        claims["admin"] = True
    if rooms:
        claims["rooms"] = list(rooms)
    if roles:
        claims["roles"] = dict(roles)
    headers = {"kid": kid} if kid is not None else None
    try:
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot sign with {algorithm}: {exc}") from None


#: Another name for :func:`mint_token`.
mint = mint_token
