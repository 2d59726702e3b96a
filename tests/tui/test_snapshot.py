"""Layout snapshots from fixed data (no server, a frozen clock): a layout change fails here.

After an intended change, review and accept it with
``pytest tests/tui/test_snapshot.py --snapshot-update``.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from roomchat.tui.app import RoomChatApp
from roomchat.tui.widgets import MessageInput

from .helpers import show_demo

SIZE = (120, 34)


def frozen_clock() -> float:
    return 0.0


async def open_demo_chat(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, RoomChatApp)
    show_demo(app)
    await pilot.pause()
    screen = app.chat_screen
    assert screen is not None
    screen.query_one(MessageInput).focus()
    await pilot.pause()


def test_chat_page_layout(snap_compare: Any) -> None:
    app = RoomChatApp(clock=frozen_clock)
    assert snap_compare(app, terminal_size=SIZE, run_before=open_demo_chat)


def test_connect_page_layout(snap_compare: Any) -> None:
    app = RoomChatApp(clock=frozen_clock)
    assert snap_compare(app, terminal_size=SIZE)
