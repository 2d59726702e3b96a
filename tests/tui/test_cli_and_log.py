"""``roomchat tui`` options, and the message log staying bounded without a server."""

from __future__ import annotations

from click.testing import CliRunner

from roomchat.cli import cli
from roomchat.protocol import UserMessage
from roomchat.tui.app import RoomChatApp
from roomchat.tui.state import DEFAULT_HISTORY_LIMIT
from roomchat.tui.widgets import MessageLog

from .helpers import chat, log_text, room_row, show_demo, wait_for_chat


def test_tui_command_offers_addr_with_an_environment_default() -> None:
    result = CliRunner().invoke(cli, ["tui", "--help"])
    assert result.exit_code == 0, result.output
    assert "--addr" in result.output
    assert "ROOMCHAT_ADDR" in result.output


async def test_a_busy_room_keeps_a_bounded_log() -> None:
    app = RoomChatApp(clock=lambda: 0.0)
    async with app.run_test(size=(120, 34)) as pilot:
        show_demo(app)
        await wait_for_chat(pilot, app)
        total = DEFAULT_HISTORY_LIMIT * 5
        for number in range(total):
            app.handle_event(UserMessage("general", "alice", f"busy {number}"))
            app.handle_event(UserMessage("rust", "gopher", f"elsewhere {number}"))
        await pilot.pause()
        log = chat(app).query_one(MessageLog)
        assert len(app.state.rooms["general"].lines) == DEFAULT_HISTORY_LIMIT
        assert len(log.lines) <= 2 * DEFAULT_HISTORY_LIMIT
        text = log_text(app)
        assert f"@alice: busy {total - 1}" in text  # the newest is at the bottom
        assert text.rstrip().endswith(f"busy {total - 1}")
        assert "@alice: busy 0\n" not in text + "\n"  # the oldest are gone
        assert f"({total + 2})" in room_row(app, "rust")  # 2 demo messages + the rest
