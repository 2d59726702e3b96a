"""The TUI speaking protocol v2 against the fake v2 server (tests/fake_v2.py): names,
history on join, errors and notices in the status line, reconnecting with catch-up."""

from __future__ import annotations

from textual.widgets import Input

from roomchat.protocol import Error, Shutdown
from roomchat.tui.app import RoomChatApp
from roomchat.tui.screens import ConnectScreen
from roomchat.tui.widgets import MessageInput, UserInfo
from tests.fake_v2 import FakeV2Server

from .helpers import chat, log_text, status_text, wait_for_chat, wait_until
from .test_app import SIZE, open_room


def fast_app(port: int, name: str = "") -> RoomChatApp:
    return RoomChatApp(
        f"127.0.0.1:{port}", name=name, hello_timeout=2, backoff_initial=0.05, backoff_max=0.2
    )


async def test_a_chosen_name_is_used_and_own_messages_are_marked() -> None:
    async with FakeV2Server() as fake:
        app = RoomChatApp(f"127.0.0.1:{fake.port}")  # no address: the connect page
        app.address = None
        async with app.run_test(size=SIZE) as pilot:
            assert isinstance(app.screen, ConnectScreen)
            app.screen.query_one("#name", Input).value = "alice"
            app.screen.query_one("#name", Input).focus()
            await pilot.press("enter")
            await wait_for_chat(pilot, app)
            assert app.state.user_id == "alice"  # the welcome's, not the login's rnd01
            assert "@alice" in str(chat(app).query_one(UserInfo).render())
            await wait_until(
                pilot, lambda: status_text(app).startswith("v2  ·  @alice"), "the status"
            )
            assert fake.hellos()[0].name == "alice"
            await open_room(pilot, app, "general")
            chat(app).query_one(MessageInput).focus()
            await pilot.press(*"hi all", "enter")
            await wait_until(pilot, lambda: "» @alice: hi all" in log_text(app), "own message")


async def test_an_empty_name_keeps_the_random_id() -> None:
    async with FakeV2Server() as fake:
        app = fast_app(fake.port)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_chat(pilot, app)
            assert app.state.user_id == "rnd01"
            assert fake.hellos()[0].name is None


async def test_an_invalid_or_refused_name_stays_on_the_connect_page() -> None:
    async with FakeV2Server() as fake:
        fake.refuse["bob"] = "name_taken"
        app = fast_app(fake.port, "no spaces")
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            assert isinstance(screen, ConnectScreen)
            await pilot.pause()
            assert "Bad name" in screen.status_text
            app.connect_to(f"127.0.0.1:{fake.port}", "bob")
            await wait_until(pilot, lambda: "name_taken" in screen.status_text, "refusal")
            assert app.chat_screen is None


async def test_joining_shows_the_rooms_history_dimmed_above_live_messages() -> None:
    async with FakeV2Server() as fake:
        for n in range(3):
            fake.post("general", "bob", f"old {n}")
        fake.post("general", "alice", "my old one")
        app = fast_app(fake.port, "alice")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_chat(pilot, app)
            await open_room(pilot, app, "general")
            assert fake.joins()[-1].history == 50
            await wait_until(pilot, lambda: "@bob: old 2" in log_text(app), "the history")
            fake.post("general", "bob", "live one")
            await wait_until(pilot, lambda: "@bob: live one" in log_text(app), "live")
            text = log_text(app)
            assert text.index("── history ──") < text.index("old 0") < text.index("live one")
            assert "» @alice: my old one" in text  # own past messages marked too
            lines = list(app.state.rooms["general"].lines)
            past = [line.content for line in lines if line.kind == "message" and line.past]
            assert past == ["old 0", "old 1", "old 2", "my old one"]
            assert [line.content for line in lines if line.kind == "message" and not line.past] == [
                "live one"
            ]


async def test_errors_and_the_shutdown_notice_show_in_the_status_line() -> None:
    async with FakeV2Server() as fake:
        app = fast_app(fake.port)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_chat(pilot, app)
            fake.broadcast(Error("not_member", "not in room 'x'", "send_message"))
            await wait_until(
                pilot,
                lambda: "error not_member: not in room 'x'" in status_text(app),
                "the error",
            )
            fake.broadcast(Shutdown(3000, "server restarting"))
            await wait_until(
                pilot,
                lambda: "server restarting, reconnecting in 3 s" in status_text(app),
                "the notice",
            )


async def test_after_a_drop_it_reconnects_and_catches_up_once_in_order() -> None:
    async with FakeV2Server() as fake:
        app = fast_app(fake.port, "alice")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_chat(pilot, app)
            await open_room(pilot, app, "general")
            fake.post("general", "bob", "before")
            await wait_until(pilot, lambda: "@bob: before" in log_text(app), "live message")
            fake.ignore_after = True  # the server re-sends everything: dropped as seen
            fake.drop_all()
            for n in range(3):  # before the app can come back: nobody is connected
                fake.post("general", "bob", f"missed {n}")
            await wait_until(
                pilot, lambda: "@bob: missed 2" in log_text(app), "the missed messages"
            )
            assert not app.state.reconnecting
            assert status_text(app).startswith("v2  ·  @alice")
            assert fake.hellos()[-1].name == "alice" and fake.hellos()[-1].token == "tok-alice"
            assert fake.joins()[-1].after == 1
            text = log_text(app)
            messages = [line for line in text.splitlines() if "@bob:" in line]
            assert [m.split(": ", 1)[1] for m in messages] == [
                "before",
                "missed 0",
                "missed 1",
                "missed 2",
            ]
            assert "── reconnected ──" in text
            assert "missed" not in text.split("── reconnected ──")[0]
            fake.post("general", "bob", "after")
            await wait_until(pilot, lambda: "@bob: after" in log_text(app), "live again")


async def test_a_gap_in_the_catch_up_is_marked() -> None:
    async with FakeV2Server(history_limit=2) as fake:
        app = fast_app(fake.port, "alice")
        async with app.run_test(size=SIZE) as pilot:
            await wait_for_chat(pilot, app)
            await open_room(pilot, app, "general")
            fake.post("general", "bob", "seen")
            await wait_until(pilot, lambda: "@bob: seen" in log_text(app), "live message")
            fake.drop_all()
            # Posted before the app can come back (no await in between): it can only
            # learn of them by catching up, and the fake keeps just the last 2.
            for n in range(5):
                fake.post("general", "bob", f"while away {n}")
            await wait_until(pilot, lambda: "while away 4" in log_text(app), "catch-up")
            text = log_text(app)
            assert "── some messages were missed ──" in text
            assert "while away 2" not in text  # no longer held by the server
            assert text.index("missed ──") < text.index("while away 3")
