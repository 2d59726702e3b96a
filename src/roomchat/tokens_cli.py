"""``roomchat token NAME``: mint a token proving a v2 user name (docs/protocol.md,
"Tokens"), for a server that requires them. Prints the token on stdout.

Two kinds: roomchat's own (``--secret-file``, HMAC, the kind ``welcome`` hands out), or
a JWT (``--jwt-key-file`` with the private key or HMAC secret, docs/moderation.md,
"Logins"), as an identity provider would issue it, for tests and small set-ups."""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from roomchat.protocol import valid_name
from roomchat.tokens import MIN_SECRET_BYTES, mint

__all__ = ["command", "parse_ttl", "read_secret"]

_TTL = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90`` (seconds), ``15m``, ``12h``, ``30d`` -> seconds (positive)."""
    match = _TTL.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r} (e.g. 3600, 15m, 12h, 30d)")
    return int(match.group(1)) * _UNIT[match.group(2)]


def read_secret(path: Path) -> bytes:
    """The shared secret: the file's bytes, without trailing whitespace."""
    secret = path.read_bytes().rstrip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


@click.command(name="token")
@click.argument("name")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="ROOMCHAT_SECRET_FILE",
    show_envvar=True,
    default=None,
    help="File holding the server's shared secret (at least 16 bytes; e.g. from "
    "`head -c 32 /dev/urandom | base64 > secret`).",
)
@click.option(
    "--ttl",
    default="30d",
    show_default=True,
    help="How long the token is valid: seconds, or with a unit (15m, 12h, 30d).",
)
@click.option(
    "--jwt-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Mint a JWT instead, signed with this PEM private key (RS256, ES256) or HMAC "
    "secret (HS256).",
)
@click.option(
    "--algorithm",
    type=click.Choice(["HS256", "RS256", "ES256"]),
    default=None,
    help="The JWT's algorithm. [default: from the key]",
)
@click.option("--audience", default=None, help="The JWT's `aud`.")
@click.option("--issuer", default=None, help="The JWT's `iss`.")
@click.option("--admin", is_flag=True, help="The JWT makes NAME a server admin.")
@click.option(
    "--room", "rooms", multiple=True, metavar="ROOM", help="A private room NAME may join."
)
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROOM=ROLE",
    help="NAME's role (owner, moderator) in ROOM.",
)
def command(
    name: str,
    secret_file: Path | None,
    ttl: str,
    jwt_key_file: Path | None,
    algorithm: str | None,
    audience: str | None,
    issuer: str | None,
    admin: bool,
    rooms: tuple[str, ...],
    roles: tuple[str, ...],
) -> None:
    """Mint a token that lets a v2 client take the user name NAME."""
    if not valid_name(name):
        raise click.BadParameter("1-32 ASCII letters, digits, '_', '-' or '.'", param_hint="NAME")
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    if (secret_file is None) == (jwt_key_file is None):
        raise click.UsageError("give --secret-file (roomchat's token) or --jwt-key-file (a JWT)")
    if jwt_key_file is not None:
        click.echo(
            _jwt(jwt_key_file, name, seconds, algorithm, audience, issuer, admin, rooms, roles)
        )
        return
    assert secret_file is not None
    try:
        secret = read_secret(secret_file)
    except OSError as exc:
        raise click.ClickException(f"cannot read {secret_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(mint(secret, name, int(time.time()) + seconds))


def _jwt(
    key_file: Path,
    name: str,
    seconds: int,
    algorithm: str | None,
    audience: str | None,
    issuer: str | None,
    admin: bool,
    rooms: tuple[str, ...],
    roles: tuple[str, ...],
) -> str:
    from roomchat.server.auth import mint_token  # PyJWT: only when asked for

    try:
        key = key_file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {key_file}: {exc.strerror or exc}") from None
    if algorithm is None:
        algorithm = "HS256"
        if b"PRIVATE KEY" in key:
            algorithm = "ES256" if b"EC PRIVATE" in key or _is_ec(key) else "RS256"
    granted: dict[str, str] = {}
    for item in roles:
        room, equals, role = item.partition("=")
        if not equals or role not in ("owner", "moderator", "member"):
            raise click.BadParameter(f"{item!r}: ROOM=owner|moderator|member", param_hint="--role")
        granted[room] = role
    try:
        return mint_token(
            key if b"PRIVATE KEY" in key else key.rstrip(b"\r\n"),
            name,
            algorithm=algorithm,
            audience=audience,
            issuer=issuer,
            seconds=seconds,
            admin=admin,
            rooms=rooms,
            roles=granted or None,
        )
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"cannot sign with {key_file}: {exc}") from None


def _is_ec(pem: bytes) -> bool:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        return isinstance(serialization.load_pem_private_key(pem, None), ec.EllipticCurvePrivateKey)
    except ValueError:
        return False
