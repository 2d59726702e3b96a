"""``roomchat tui``: start the terminal client."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["command"]


@click.command(name="tui")
@click.option(
    "--addr",
    envvar="ROOMCHAT_ADDR",
    default=None,
    metavar="HOST:PORT",
    help="Connect to this server straight away (skips the connect page). [env: ROOMCHAT_ADDR]",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the server when connecting.",
)
@click.option("--tls", is_flag=True, help="Connect with TLS, checking the server's certificate.")
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="PEM file of the CA(s) to trust instead of the system's (implies --tls).",
)
def command(addr: str | None, connect_timeout: float, tls: bool, tls_ca: Path | None) -> None:
    """Chat from the terminal (Textual UI)."""
    # Imported here so that `roomchat tui --help` stays fast.
    from roomchat.client import tls_context
    from roomchat.tui.app import RoomChatApp

    context = None
    if tls or tls_ca is not None:
        try:
            context = tls_context(tls_ca)
        except OSError as exc:
            raise click.BadParameter(f"{tls_ca}: {exc}", param_hint="--tls-ca") from None
    RoomChatApp(addr, connect_timeout=connect_timeout, tls=context).run()
