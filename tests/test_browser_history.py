"""The web client's lasting history in a real headless Chromium (Selenium, the system
chromedriver; as tests/test_browser.py): unread badges from the server's read markers
and the "Unread" line, the read marker sent while a room is shown, scrolling back
(scrolled to the top, and the "Load older messages" button) to the start of the room,
/edit and /delete, others' edits and deletions shown in place, "bob is typing…" both
ways. Other users are the client library's, on the server's loop.

Screenshots and page sources go to the test's tmp_path on failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from roomchat.client import ChatClient, connect
from roomchat.protocol import Event, MessageDeleted, MessageEdited, Typing, UserMessage
from tests.browser import ServerThread, new_driver
from tests.test_browser import (
    WAIT,
    connect_as,
    messages,
    notice,
    open_room,
    say,
    texts,
    user_id,
    wait_for,
)

# --- the library users, on the server's loop ----------------------------------------------


async def _user(port: int, name: str, token: str | None = None) -> ChatClient:
    client = await connect("127.0.0.1", port, v2=True, name=name, token=token, timeout=WAIT)
    await client.join_and_wait("general", history=0, timeout=WAIT)
    return client


async def _until(client: ChatClient, wanted: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(WAIT):
        while True:
            event = await client.next_event()
            if wanted(event):
                return event


async def _post(client: ChatClient, contents: list[str]) -> list[int]:
    for content in contents:
        await client.send("general", content)
    numbers: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(numbers) < len(contents):
            event = await client.next_event()
            if isinstance(event, UserMessage) and event.content == contents[len(numbers)]:
                assert event.seq is not None
                numbers.append(event.seq)
    return numbers


async def _ann_read_up_to(port: int, q: int) -> None:
    ann = await _user(port, "ann")
    await ann.mark_read("general", q)
    await ann.ping(WAIT)  # read by the server before we go
    await ann.aclose()


async def _marker(port: int, token: str) -> int | None:
    """ann's read marker in #general, as a new session of hers is told at login."""
    again = await connect("127.0.0.1", port, v2=True, name="ann", token=token, timeout=WAIT)
    read = again.listing["general"].read
    await again.aclose()
    return read


# --- the page -------------------------------------------------------------------------------


def chat_texts(driver: WebDriver) -> list[str]:
    return texts(driver, "#messages .msg .text")


def message_meta(driver: WebDriver, q: int) -> str:
    # Found and read in one script: the list may be re-rendered between a find and a
    # read (a StaleElementReferenceException, seen once in a full run).
    text = driver.execute_script(
        "const item = document.querySelector(arguments[0]);return item ? item.textContent : '';",
        f'#messages li[data-q="{q}"]',
    )
    return str(text or "")


def test_unread_scroll_back_edits_and_typing(
    web: ServerThread, drivers: dict[str, WebDriver]
) -> None:
    chat = web.server
    assert chat is not None
    bob = web.call(_user(chat.port, "bob"))
    numbers = web.call(_post(bob, [f"m{n}" for n in range(1, 81)]))
    assert numbers == list(range(1, 81))
    web.call(_ann_read_up_to(chat.port, 75))

    # ann logs in: #general shows the 5 she has not read, before she opens it.
    drivers["ann"] = ann = new_driver()
    ann.get(web.url)
    connect_as(ann, "ann")
    wait_for(ann, lambda d: user_id(d) == "ann")
    badge = '#room-list button[data-room="general"] .badge'
    wait_for(ann, lambda d: texts(d, badge) == ["5"])
    open_room(ann, "general")
    wait_for(ann, lambda d: chat_texts(d)[-1:] == ["m80"])
    assert texts(ann, badge) == []
    # the join's 50, the "Unread" line above the first one not read
    items = messages(ann)
    assert [m for m in items if not m.startswith("* ")] == [f"bob: m{n}" for n in range(31, 81)]
    assert items.index("* Unread") == items.index("bob: m76") - 1
    # Shown: the page marks #general read up to its last message.
    token = ann.execute_script("return window.roomchat.client.token")
    wait_for(ann, lambda d: web.call(_marker(chat.port, token)) == 80)

    # Scrolled to the top, the older ones come, the view staying where it was.
    assert ann.find_element(By.ID, "older-button").is_displayed()
    ann.execute_script("document.getElementById('messages').scrollTop = 0")
    wait_for(ann, lambda d: chat_texts(d)[:1] == ["m1"])
    assert chat_texts(ann) == [f"m{n}" for n in range(1, 81)]
    top = ann.execute_script("return document.getElementById('messages').scrollTop")
    assert top > 0  # on m31, where it was, not on the new top
    # The button asks for more: nothing older, the start is said, the button goes.
    ann.execute_script("document.getElementById('older-button').click()")
    wait_for(ann, lambda d: messages(d)[0] == "* Start of the room's history")
    assert not ann.find_element(By.ID, "older-button").is_displayed()
    assert chat_texts(ann) == [f"m{n}" for n in range(1, 81)]
    assert "#42" in message_meta(ann, 42)

    # /edit TEXT and /delete: ann's last message; everyone sees it changed.
    say(ann, "helo")
    wait_for(ann, lambda d: chat_texts(d)[-1:] == ["helo"])
    say(ann, "/edit hello  there")
    edited = web.call(_until(bob, lambda e: isinstance(e, MessageEdited)))
    assert isinstance(edited, MessageEdited)
    assert (edited.seq, edited.user_id, edited.content) == (81, "ann", "hello  there")
    wait_for(ann, lambda d: chat_texts(d)[-1:] == ["hello  there"])
    assert "(edited)" in message_meta(ann, 81)
    # Others' edits and deletions, in place (m79 and m80 are older than the edit).
    web.call(bob.edit_message("general", 80, "m80, fixed"))
    wait_for(ann, lambda d: "m80, fixed" in chat_texts(d))
    assert "(edited)" in message_meta(ann, 80)
    web.call(bob.delete_message("general", 79))
    wait_for(ann, lambda d: "m79" not in chat_texts(d))
    assert "message deleted" in message_meta(ann, 79)
    # /edit Q TEXT of bob's: refused by the server, said in a notice
    say(ann, "/edit 78 not yours")
    wait_for(ann, lambda d: "not_authorised" in notice(d))
    say(ann, "/delete")
    deleted = web.call(_until(bob, lambda e: isinstance(e, MessageDeleted) and e.user_id == "ann"))
    assert isinstance(deleted, MessageDeleted) and deleted.seq == 81
    wait_for(ann, lambda d: "message deleted" in message_meta(d, 81))
    # with nothing of hers left, /delete says so and sends nothing
    say(ann, "/delete")
    wait_for(ann, lambda d: "No message of yours" in notice(d))

    # Typing, both ways: bob's shows for a few seconds; ann's keys reach bob.
    web.call(bob.typing("general"))
    wait_for(ann, lambda d: d.find_element(By.ID, "typing").text == "bob is typing…")
    wait_for(ann, lambda d: d.find_element(By.ID, "typing").text == "", timeout=WAIT)
    box = ann.find_element(By.ID, "message-input")
    assert box.get_attribute("value") == "/delete"  # (refused: kept in the box)
    box.clear()
    box.send_keys("typing away")
    web.call(_until(bob, lambda e: e == Typing("general", "ann")))
    web.call(bob.send("general", "the end"))
    wait_for(ann, lambda d: "the end" in chat_texts(d))
    errors = [e for e in ann.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    web.call(bob.aclose())
