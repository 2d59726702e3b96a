"""The ``roomchat`` command: ``roomchat serve``, ``tui``, ``stress``, ``token``.

Each sub-command lives with its part (``roomchat.server.cli``, ``roomchat.tui.cli``,
``roomchat.stress.cli``) and is imported only when it runs, so ``roomchat serve``
never loads the terminal UI. Every flag takes its default from a ``ROOMCHAT_*``
environment variable where one is named in ``--help``.

Errors a user can cause (a bad flag, a missing rooms file, a busy port) end the
process with one line on stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from roomchat import __version__

__all__ = ["cli", "main"]

_SUBCOMMANDS = {
    "serve": ("roomchat.server.cli", "Run the chat server."),
    "tui": ("roomchat.tui.cli", "Chat from the terminal (Textual UI)."),
    "stress": ("roomchat.stress.cli", "Load-test a protocol v1 server and report."),
    "token": ("roomchat.tokens_cli", "Mint a token proving a v2 user name."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _SUBCOMMANDS:
            return None
        module = importlib.import_module(_SUBCOMMANDS[cmd_name][0])
        command = module.command
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every sub-command.
        rows = [(name, help_text) for name, (_, help_text) in _SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="roomchat")
def cli() -> None:
    """roomchat: a room-based chat server (wire-compatible with rust-chat-server)."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="roomchat", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"roomchat: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
