"""``roomchat token NAME``: mint a token proving a v2 user name (docs/protocol.md,
"Tokens"), for a server that requires them. Prints the token on stdout."""

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
    required=True,
    help="File holding the server's shared secret (at least 16 bytes; e.g. from "
    "`head -c 32 /dev/urandom | base64 > secret`).",
)
@click.option(
    "--ttl",
    default="30d",
    show_default=True,
    help="How long the token is valid: seconds, or with a unit (15m, 12h, 30d).",
)
def command(name: str, secret_file: Path, ttl: str) -> None:
    """Mint a token that lets a v2 client take the user name NAME."""
    if not valid_name(name):
        raise click.BadParameter("1-32 ASCII letters, digits, '_', '-' or '.'", param_hint="NAME")
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    try:
        secret = read_secret(secret_file)
    except OSError as exc:
        raise click.ClickException(f"cannot read {secret_file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(mint(secret, name, int(time.time()) + seconds))
