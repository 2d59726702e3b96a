"""``roomchat tui``: start the terminal client."""

from __future__ import annotations

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
def command(addr: str | None, connect_timeout: float) -> None:
    """Chat from the terminal (Textual UI)."""
    # Imported here so that `roomchat tui --help` stays fast.
    from roomchat.tui.app import RoomChatApp

    RoomChatApp(addr, connect_timeout=connect_timeout).run()
