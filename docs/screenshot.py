"""Regenerate docs/tui.svg from the fixed demo data of the layout snapshot test.

    .venv/bin/python docs/screenshot.py
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomchat.tui.app import RoomChatApp  # noqa: E402
from roomchat.tui.widgets import MessageInput  # noqa: E402
from tests.tui.helpers import show_demo  # noqa: E402


async def main() -> None:
    app = RoomChatApp(clock=lambda: 0.0)
    async with app.run_test(size=(110, 32)) as pilot:
        show_demo(app)
        await pilot.pause()
        screen = app.chat_screen
        assert screen is not None
        screen.query_one(MessageInput).focus()
        await pilot.press(*"see you in #rust")
        await pilot.pause()
        app.save_screenshot(filename="tui.svg", path=str(ROOT / "docs"))


asyncio.run(main())
